"""Every planner scores with the whole latency model: edge load, per-message overhead and the downlink included."""

from __future__ import annotations

import pytest

from cogent_compiler.cost import ComputeModel, LatencyModel, Link
from cogent_compiler.passes import partition_at
from cogent_compiler.policy import plan_min_cut, plan_single_cut
from cut_support import best_total_ms


def _model(edge_load: float = 1.0, up_mbps: float = 5.0, down_mbps: float | None = None, per_message_ms: float = 0.0) -> LatencyModel:
    link = Link(up_mbps * 1e6, 0.001, per_message_ms / 1e3, down_mbps * 1e6 if down_mbps else None)
    return LatencyModel(ComputeModel("device", 0.02, 5.0), ComputeModel("edge", 5.0, 5.0), link, edge_load=edge_load)


@pytest.mark.parametrize("planner", [plan_single_cut, plan_min_cut])
def test_a_busy_edge_moves_work_back_to_the_device(tiny_graph, planner):
    idle = planner(tiny_graph, _model(edge_load=1.0))
    busy = planner(tiny_graph, _model(edge_load=1000.0))
    assert idle.chosen.cut != tuple(tiny_graph.outputs)  # a fast idle edge is worth using
    assert busy.chosen.cut == tuple(tiny_graph.outputs)  # a 1000x slower edge is not
    assert busy.conditions["edge_load"] == 1000.0


@pytest.mark.parametrize("planner", [plan_single_cut, plan_min_cut])
def test_per_message_overhead_counts_once_per_offload(tiny_graph, planner):
    base = planner(tiny_graph, _model())
    slow = planner(tiny_graph, _model(per_message_ms=1e4))  # 10 s per message: never offload
    assert slow.chosen.cut == tuple(tiny_graph.outputs)
    edge_only = partition_at(tiny_graph, tuple(t.name for t in tiny_graph.inputs))
    delta = _model(per_message_ms=3.0).estimate(edge_only).transfer_ms - _model().estimate(edge_only).transfer_ms
    assert delta == pytest.approx(3.0)
    assert base.conditions["link"]["per_message_ms"] == 0.0


@pytest.mark.parametrize("edge_load,up,down,per_message", [(1.0, 5, 0.05, 0.0), (4.0, 50, 5, 2.0), (0.5, 0.5, 50, 1.0)])
def test_min_cut_equals_brute_force_with_load_and_an_asymmetric_link(tiny_graph, edge_load, up, down, per_message):
    model = _model(edge_load, up, down, per_message)
    best = best_total_ms(tiny_graph, model)
    assert plan_min_cut(tiny_graph, model).chosen.predicted.total_ms == pytest.approx(best, rel=1e-9)
