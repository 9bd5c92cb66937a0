"""Transfer encodings: a float32 tensor may cross as float16; the latency model knows the bytes and the casts."""

from __future__ import annotations

import dataclasses

import pytest

from cogent_compiler.cost import ComputeModel, LatencyModel, Link
from cogent_compiler.errors import CogentError
from cogent_compiler.ir import TensorInfo
from cogent_compiler.passes import partition_at
from cogent_compiler.policy import Plan, PlanReport, plan_min_cut, plan_single_cut
from cut_support import best_total_ms


def _model(transfer_dtype: str, up_mbps: float = 5.0, device_gmacs: float = 0.02) -> LatencyModel:
    return LatencyModel(ComputeModel("device", device_gmacs, 5.0), ComputeModel("edge", 5.0, 5.0), Link(up_mbps * 1e6, 0.001),
                        transfer_dtype=transfer_dtype)


def _edge_only(graph):
    return partition_at(graph, tuple(t.name for t in graph.inputs))


def test_float16_halves_the_bytes_and_pays_for_both_casts(tiny_graph):
    part = _edge_only(tiny_graph)
    x = tiny_graph.inputs[0]
    exact, half = _model("float32"), _model("float16")
    assert exact.encodings(part) == {} and half.encodings(part) == {x.name: "float16"}
    link = exact.link
    casts = exact.device.cast_ms(x.numel, x.nbytes, x.numel * 2) + exact.edge.cast_ms(x.numel, x.numel * 2, x.nbytes)
    assert casts > 0
    saved = exact.estimate(part).transfer_ms - half.estimate(part).transfer_ms
    assert saved == pytest.approx(link.up_ms(x.nbytes) - link.up_ms(x.numel * 2) - casts)
    assert half.send_ms(x) == pytest.approx(link.up_ms(x.numel * 2) + casts)


def test_auto_sends_float16_only_where_it_pays():
    t = TensorInfo("act", (1, 64, 56, 56), "float32")
    slow_link = _model("auto", up_mbps=5.0)
    assert slow_link.wire_dtype(t) == "float16"
    # a 100 Gbit/s link and a device that casts at 0.02 G elements/s: the cast costs more than the bytes it saves
    fast_link = _model("auto", up_mbps=1e5, device_gmacs=0.02)
    assert fast_link.wire_dtype(t) == "float32"
    assert fast_link.send_ms(t) == pytest.approx(fast_link.link.up_ms(t.nbytes))
    assert fast_link.send_ms(t) < _model("float16", up_mbps=1e5).send_ms(t)


@pytest.mark.parametrize("dtype", ["uint8", "int64", "float16"])
def test_only_float32_tensors_are_encoded(dtype):
    t = TensorInfo("x", (1, 3, 224, 224), dtype)
    for mode in ("auto", "float16"):
        m = _model(mode, up_mbps=1.0)
        assert m.wire_dtype(t) == dtype and m.send_ms(t) == pytest.approx(m.link.up_ms(t.nbytes))


def test_an_unknown_transfer_dtype_is_refused():
    with pytest.raises(CogentError, match="transfer dtype 'int8' is unknown; use one of auto, float32, float16"):
        _model("int8")


@pytest.mark.parametrize("planner", [plan_single_cut, plan_min_cut])
@pytest.mark.parametrize("up_mbps", [0.5, 5.0, 1e4])
def test_planners_price_the_wire_dtype_they_record(tiny_graph, planner, up_mbps):
    model = _model("auto", up_mbps=up_mbps)
    report = planner(tiny_graph, model)
    for plan in [report.chosen, *report.baselines.values(), *report.candidates]:
        part = partition_at(tiny_graph, plan.cut)
        assert dict(plan.encodings) == model.encodings(part)
        assert plan.predicted == model.estimate(part)
    if planner is plan_min_cut:  # the flow network prices every tensor at its wire dtype: still the optimum
        assert report.chosen.predicted.total_ms == pytest.approx(best_total_ms(tiny_graph, model), rel=1e-9)


def test_float16_never_makes_the_chosen_plan_slower(tiny_graph):
    for up in (0.5, 5.0, 50.0):
        exact = plan_min_cut(tiny_graph, _model("float32", up)).chosen.predicted.total_ms
        auto = plan_min_cut(tiny_graph, _model("auto", up)).chosen.predicted.total_ms
        assert auto <= exact + 1e-9


def test_encodings_survive_plan_json(tiny_graph, tmp_path):
    report = plan_min_cut(tiny_graph, _model("float16", up_mbps=50.0))
    assert report.chosen.encodings  # at 50 Mbit/s the plan sends something, as float16
    path = tmp_path / "plan.json"
    report.write(path)
    again = PlanReport.read(path)
    assert again.chosen == report.chosen and again.conditions["transfer_dtype"] == "float16"
    assert dataclasses.replace(again.chosen, encodings={}) != report.chosen
    assert Plan.from_json({**report.chosen.to_json(), "encodings": {}}).encodings == {}
