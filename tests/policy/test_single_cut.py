from __future__ import annotations

import pytest

from cogent_compiler.cost import ComputeModel, LatencyModel, Link, parse_bandwidth, parse_duration
from cogent_compiler.errors import CogentError
from cogent_compiler.passes import single_tensor_cuts
from cogent_compiler.policy import PlanReport, plan_single_cut


def _model(bw_mbps: float, device: float = 1.0, edge: float = 100.0, rtt_ms: float = 10.0) -> LatencyModel:
    return LatencyModel(ComputeModel("device", device), ComputeModel("edge", edge), Link(bw_mbps * 1e6, rtt_ms / 1e3))


def test_slow_link_keeps_everything_on_the_device(tiny_graph):
    report = plan_single_cut(tiny_graph, _model(0.01))
    assert report.chosen.cut == report.baselines["device_only"].cut == tuple(tiny_graph.outputs)
    assert report.chosen.predicted.transfer_ms == 0


def test_fast_link_and_edge_send_the_raw_input(tiny_graph):
    report = plan_single_cut(tiny_graph, _model(10_000, device=0.01, edge=1000, rtt_ms=0))
    assert report.chosen.cut == ("x",)
    assert report.chosen.predicted.device_ms == 0


def test_chosen_plan_is_the_fastest_candidate_and_baselines_are_always_there(tiny_graph):
    report = plan_single_cut(tiny_graph, _model(5))
    assert len(report.candidates) == len(single_tensor_cuts(tiny_graph))
    best = min([*report.candidates, *report.baselines.values()], key=lambda p: p.predicted.total_ms)
    assert report.chosen.predicted == best.predicted
    assert all(v >= 1.0 for v in report.speedups().values())


def test_transfer_time_follows_bytes_over_bandwidth(tiny_graph):
    report = plan_single_cut(tiny_graph, _model(8, rtt_ms=10))  # 8 Mbit/s = 1 byte/us
    edge_only = report.baselines["edge_only"].predicted
    in_bytes = tiny_graph.input_bytes
    out_bytes = tiny_graph.output_bytes
    assert edge_only.transfer_ms == pytest.approx((in_bytes + out_bytes) / 1e3 + 10)


def test_plan_json_round_trips(tiny_graph, tmp_path):
    report = plan_single_cut(tiny_graph, _model(5))
    report.write(tmp_path / "plan.json")
    again = PlanReport.read(tmp_path / "plan.json")
    assert again.chosen == report.chosen and again.baselines == report.baselines


def test_units():
    assert parse_bandwidth("20mbit") == 20e6
    assert parse_bandwidth("500kbit") == 500e3
    assert parse_bandwidth("1gbit") == 1e9
    assert parse_duration("10ms") == pytest.approx(0.010)
    assert parse_duration("2s") == 2.0
    with pytest.raises(CogentError, match="20mbit"):
        parse_bandwidth("fast")
    with pytest.raises(CogentError, match="10ms"):
        parse_duration("soon")
