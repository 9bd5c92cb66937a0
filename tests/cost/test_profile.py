"""Measured profiles: the file format and its errors, the fits, real measurement on this CPU, and planning with a profile."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from cogent_compiler.backends.pipeline import SCHEDULE_RULES
from cogent_compiler.cli import main
from cogent_compiler.cost import Profile, ProfileComputeModel, Sample, fit_profile, load_profile, save_profile
from cogent_compiler.cost.predictor import FIT_METHOD, CPUFacts, _moved, fit_key, fit_samples, fused_epilogues, lane_use, vector_lanes, weight_passes
from cogent_compiler.cost.profiler import ATTENTION, GRAPH, QUOTA_TIMING, LayerSpec, _Worker, measure_profile, reference_layers
from cogent_compiler.errors import MissingFitError, ProfileError, ProfileFormatError, ProfileTargetError
from cogent_compiler.ir import Node, TensorInfo

#: Layers enough for tiny_cnn (conv2d, relu, add, max_pool2d, adaptive_avg_pool2d, linear; reshape is free).
TINY_LAYERS = [
    LayerSpec("conv2d", 16, 16, 14, 3), LayerSpec("conv2d", 32, 32, 14, 3), LayerSpec("conv2d", 64, 64, 14, 3),
    LayerSpec("conv2d", 3, 8, 16, 3), LayerSpec("conv2d", 8, 8, 16, 3, 1, 2),
    LayerSpec("relu", 8, 0, 16), LayerSpec("relu", 64, 0, 14), LayerSpec("add", 8, 0, 16), LayerSpec("add", 64, 0, 14),
    LayerSpec("max_pool2d", 8, 0, 16, 2, 2), LayerSpec("max_pool2d", 8, 0, 16, 2, 2, boundary=True),
    LayerSpec("adaptive_avg_pool2d", 8, 0, 8), LayerSpec("linear", 8, 10),
]


def _synthetic(target: str = "llvm") -> Profile:
    """A profile whose conv2d times follow ms = 2e-8·MACs + 1e-9·bytes + 0.01 exactly."""
    samples = []
    for c in (8, 16, 32, 64):
        macs, in_b, out_b, par_b = c * c * 9 * 196, c * 196 * 4, c * 196 * 4, (c * c * 9 + c) * 4
        ms = 2e-8 * macs + 1e-9 * (in_b + out_b + par_b) + 0.01
        samples.append(Sample("conv2d", {"kernel": [3, 3], "groups": 1, "in_channels": c, "out_channels": c}, macs, in_b, out_b, par_b, ms, 10,
                              key=f"conv {c}", wall_ms=ms + 0.003, kernels={"transpose": 0.001, "fused_conv2d_add_relu": ms, "transpose1": 0.001}))
    return fit_profile(Profile(target, '{"kind": "llvm"}', {"cpu": "test", "cpu_quota": None, "threads": 1}, "0.27", "2026-01-01", tuple(samples)))


def test_schema_round_trip(tmp_path):
    p = _synthetic()
    save_profile(p, tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["schema"] == "cogent-profile/1" and data["target"] == "llvm" and len(data["samples"]) == 4
    assert {"op", "attrs", "macs", "in_bytes", "out_bytes", "param_bytes", "ms", "runs"} <= set(data["samples"][0])
    assert load_profile(tmp_path / "p.json", expect_target="llvm") == p


def test_each_profile_error_is_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text("this is not json")
    with pytest.raises(ProfileFormatError, match="notes.json: not a Cogent profile"):
        load_profile(bad)
    bad.write_text('{"samples": []}')
    with pytest.raises(ProfileFormatError, match="no \"schema\""):
        load_profile(bad)
    newer = {**_synthetic().to_json(), "schema": "cogent-profile/2"}
    bad.write_text(json.dumps(newer))
    with pytest.raises(ProfileFormatError, match="'cogent-profile/2' is not supported"):
        load_profile(bad)
    save_profile(_synthetic(), tmp_path / "x86.json")
    with pytest.raises(ProfileTargetError, match="measured for target 'llvm' but is used for 'arm'"):
        load_profile(tmp_path / "x86.json", expect_target="arm")
    with pytest.raises(ProfileFormatError, match="cannot read"):
        load_profile(tmp_path / "missing.json")
    for err in (ProfileFormatError, ProfileTargetError, MissingFitError):
        assert issubclass(err, ProfileError)


def test_missing_fit_names_the_op_and_says_to_reprofile(tiny_graph, tmp_path):
    save_profile(_synthetic(), tmp_path / "conv-only.json")
    model = ProfileComputeModel.from_file("device:llvm", tmp_path / "conv-only.json", expect_target="llvm")
    from cogent_compiler.passes import FoldBatchNorm

    with pytest.raises(MissingFitError) as e:
        model.nodes_ms(FoldBatchNorm()(tiny_graph).nodes)
    msg = str(e.value)
    assert "conv-only.json" in msg and "op 'add'" in msg and "has no fit" in msg and "re-profile" in msg and "--only add" in msg
    assert "\n" not in msg
    with pytest.raises(MissingFitError, match="op 'batch_norm' .* no reference layer"):  # unfolded: no profile can help
        model.nodes_ms(tiny_graph.nodes)
    assert model.node_ms(next(n for n in tiny_graph.nodes if n.op == "reshape")) == 0.0


def test_fit_recovers_known_coefficients_and_predicts_unmeasured_channels():
    p = _synthetic()
    fit = fit_samples(p.samples)
    assert fit.ms_per_mac == pytest.approx(2e-8, rel=1e-6)
    assert fit.ms_per_byte == pytest.approx(1e-9, rel=1e-4)
    assert fit.ms_fixed == pytest.approx(0.01, rel=1e-4)
    assert set(p.fits) == {"conv2d", "conv2d:k3x3", "layout_transform:in", "layout_transform:out"}
    assert p.kernel_overhead_ms == pytest.approx(0.001 / 3, rel=1e-3)
    c = 48
    macs, nbytes = c * c * 9 * 196, c * 196 * 8 + (c * c * 9 + c) * 4
    assert fit.predict(macs, nbytes) == pytest.approx(2e-8 * macs + 1e-9 * nbytes + 0.01, rel=1e-4)


def test_neighbours_correct_the_fit_towards_measured_shapes():
    """A shape measured off the linear trend (tiling) is predicted as measured; one beside it, near it; far ones keep the fit."""
    base = _synthetic()
    odd = base.samples[2]  # 32 channels, measured 2x what the trend says
    p = fit_profile(base.with_samples(tuple(replace(s, ms=s.ms * 2) if s is odd else s for s in base.samples)))
    model = ProfileComputeModel("device", p)
    fit = model.fit_for("conv2d", odd.attrs)

    def predict(c: int, exclude: str = "") -> tuple[float, float]:
        macs, in_b, out_b, par_b = c * c * 9 * 196, c * 196 * 4, c * 196 * 4, (c * c * 9 + c) * 4
        attrs = {"kernel": [3, 3], "groups": 1, "in_channels": c, "out_channels": c}
        return model.kernel_ms("conv2d", attrs, macs, in_b, out_b, par_b, exclude=exclude), fit.predict(macs, in_b + out_b + par_b)

    got, trend = predict(32)
    assert got == pytest.approx(odd.ms * 2, rel=0.02) and got > 1.3 * trend  # the fit alone, pulled up by it, still misses it
    beside, trend36 = predict(36)  # never measured: pulled up by the 32-channel sample, less than all the way
    assert trend36 * 1.1 < beside < trend36 * got / trend
    left_out, _ = predict(32, exclude=odd.key)  # leave-one-out: only the other samples speak
    assert left_out < 0.8 * got
    rows = {s.key: pred for s, pred in model.leave_one_out()}
    assert set(rows) == {s.key for s in p.samples} and rows[odd.key] == pytest.approx(left_out)


def test_an_unpadded_stem_takes_its_correction_from_unpadded_stems_only():
    """Stems without padding (SqueezeNet's) ran 1.6x faster than padded ones here: they are neighbours only of each other."""
    def stem(c: int, pad: int, ms: float) -> Sample:
        attrs = {"kernel": [3, 3], "stride": [2, 2], "padding": [pad, pad], "groups": 1, "in_channels": 3, "out_channels": c}
        macs, in_b, out_b, par_b = c * 27 * 112 * 112, 3 * 224 * 224 * 4, c * 112 * 112 * 4, (c * 27 + c) * 4
        return Sample("conv2d", attrs, macs, in_b, out_b, par_b, ms, 10, key=f"stem {c} p{pad}")

    padded = [stem(c, 1, 0.0075 * c) for c in (16, 32, 48, 64)]
    p = fit_profile(replace(_synthetic(), samples=(*_synthetic().samples, *padded, stem(64, 0, 0.3))))
    model = ProfileComputeModel("device", p)
    s = stem(56, 0, 0.0)
    unpadded = model.kernel_ms("conv2d", s.attrs, s.macs, s.in_bytes, s.out_bytes, s.param_bytes)
    s = stem(56, 1, 0.0)
    assert model.kernel_ms("conv2d", s.attrs, s.macs, s.in_bytes, s.out_bytes, s.param_bytes) > 1.3 * unpadded
    key = LayerSpec("conv2d", 3, 64, 224, 3, 2, padding=0)
    assert key.key.endswith("@224 p0") and LayerSpec("conv2d", 3, 64, 224, 3, 2).key.endswith("@224")
    assert key.module()[0][0].padding == (0, 0) and LayerSpec("conv2d", 3, 64, 224, 3, 2).module()[0][0].padding == (1, 1)


def test_a_half_pays_for_its_layout_changes_and_pools_at_its_input_use_their_own_fit():
    base = _synthetic()
    pools = [Sample("max_pool2d", {"out_shape": [1, c, 7, 7]}, 0, c * 196 * 4, c * 49 * 4, 0, 0.001 * c, 10, key=f"pool {c}") for c in (8, 16, 32)]
    at_input = [replace(s, attrs={**s.attrs, "boundary": True}, ms=s.ms * 10, key=s.key + " at input") for s in pools]
    p = fit_profile(base.with_samples((*base.samples, *pools, *at_input)))
    assert {"max_pool2d", "max_pool2d:boundary", "layout_transform:in", "layout_transform:out"} <= set(p.fits)
    assert p.fits["max_pool2d"]["samples"] == 3  # the boundary samples stay out of the op's own fit
    model = ProfileComputeModel("device", p)
    x, y, z = TensorInfo("x", (1, 16, 14, 14), "float32"), TensorInfo("y", (1, 16, 14, 14), "float32"), TensorInfo("z", (1, 16, 7, 7), "float32")
    conv = Node("conv", "conv2d", "aten.conv2d.default", ("x",), (y,), macs=16 * 16 * 9 * 196, param_bytes=(16 * 16 * 9 + 16) * 4,
                attrs={"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "groups": 1, "in_channels": 16, "out_channels": 16})
    window = {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0]}
    pool_after = Node("pool", "max_pool2d", "aten.max_pool2d.default", ("y",), (z,), attrs=window)
    pool_first = Node("pool", "max_pool2d", "aten.max_pool2d.default", ("x",), (z,), attrs=window)
    tensors = {"x": x, "y": y}
    # a pool after the conv is predicted from the NHWC samples; the same pool reading the half's input from the boundary ones
    assert model.node_ms(pool_first, tensors, at_input=True) == pytest.approx(10 * model.node_ms(pool_after, tensors), rel=0.05)
    assert model.nodes_ms([pool_first]) == pytest.approx(model.node_ms(pool_first, tensors, at_input=True))  # no conv: no layout change
    head = model.nodes_ms([conv, pool_after])
    kernels = model.node_ms(conv, tensors) + model.node_ms(pool_after, tensors)
    layout = model.layout_ms([conv, pool_after])
    # into NHWC before the conv (x) and back after the pool (z, read by nothing in the half)
    fin, fout = p.fits["layout_transform:in"], p.fits["layout_transform:out"]
    expect = (fin["ms_per_byte"] * x.nbytes + fin["ms_fixed"]) + (fout["ms_per_byte"] * z.nbytes + fout["ms_fixed"]) + 2 * p.kernel_overhead_ms
    assert layout == pytest.approx(expect, rel=1e-6) and head == pytest.approx(kernels + layout, rel=1e-6)


def test_a_fused_residual_add_has_its_own_fit_apart_from_the_standalone_add():
    base = _synthetic()
    epi = [Sample("add", {"epilogue": True}, 0, n, 0, 0, 1e-6 * n / 1000, 10, key=f"res {n}") for n in (1000, 4000, 16000)]
    standalone = Sample("add", {}, 0, 8000, 4000, 0, 0.5, 10, key="add")
    p = fit_profile(base.with_samples((*base.samples, *epi, standalone)))
    assert p.fits["add:epilogue"]["samples"] == 3 and p.fits["add"]["samples"] == 1
    assert p.fits["add:epilogue"]["ms_per_byte"] == pytest.approx(1e-9, rel=1e-6)
    model = ProfileComputeModel("device", p)
    add = Node("add", "add", "aten.add.Tensor", ("a", "b"), (TensorInfo("add", (1, 10, 10, 10), "float32"),))
    assert model.epilogue_ms(add, 4000) == pytest.approx(4e-6)
    assert model.epilogue_ms(add, 0) == 0.0


def _conv_node(name: str, src: str, c: int, cout: int | None = None, hw: int = 14) -> Node:
    cout = cout or c
    return Node(name, "conv2d", "aten.conv2d.default", (src,), (TensorInfo(name, (1, cout, hw, hw), "float32"),),
                macs=cout * c * 9 * hw * hw, param_bytes=(cout * c * 9 + cout) * 4,
                attrs={"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "groups": 1, "in_channels": c, "out_channels": cout})


def _chain(c: int, depth: int) -> list[Node]:
    return [_conv_node(f"conv{i}", "x" if i == 0 else f"conv{i - 1}", c) for i in range(depth)]


def test_macs_count_by_the_vector_lanes_the_cpu_schedule_fills():
    """The schedule vectorizes output channels by their largest divisor up to the lanes: 1000 channels fill 10 of 16."""
    conv = {"kernel": [1, 1], "groups": 1, "in_channels": 512}
    assert lane_use("conv2d", {**conv, "out_channels": 1008}, 16) == 1.0
    assert lane_use("conv2d", {**conv, "out_channels": 1000}, 16) == 10 / 16
    assert lane_use("conv2d", {**conv, "out_channels": 68}, 16) == 4 / 16
    assert lane_use("conv2d", {**conv, "out_channels": 1000}, 8) == 1.0  # AVX2: 8 lanes divide 1000
    assert lane_use("linear", {"out_features": 10}, 16) == pytest.approx(10 / 16)
    assert lane_use("relu", {}, 16) == 1.0 and lane_use("conv2d", {**conv, "out_channels": 1000}, 1) == 1.0
    samples = []
    for c in (16, 32, 48, 64):  # every lane filled: 2e-8 ms per MAC
        macs = c * c * 9 * 196
        samples.append(Sample("conv2d", {"kernel": [3, 3], "groups": 1, "in_channels": c, "out_channels": c}, macs, c * 784, c * 784,
                              c * c * 36, 2e-8 * macs, 10, key=f"conv {c}"))
    base = _synthetic()
    model = ProfileComputeModel("device", fit_profile(replace(base, samples=tuple(samples), machine={**base.machine, "vector_lanes": 16})))

    def per_mac(cout: int) -> float:
        attrs = {"kernel": [3, 3], "groups": 1, "in_channels": 64, "out_channels": cout}
        macs = cout * 64 * 9 * 196
        return model.kernel_ms("conv2d", attrs, macs, 64 * 784, cout * 784, cout * 64 * 36) / macs

    assert per_mac(64) == pytest.approx(2e-8, rel=0.02)
    assert per_mac(72) == pytest.approx(2e-8 * 16 / 12, rel=0.02)  # 72 channels: vectors of 12 lanes
    assert per_mac(68) == pytest.approx(2e-8 * 16 / 4, rel=0.02)  # 68: of 4
    assert vector_lanes(base) == 1 and vector_lanes(replace(base, machine={**base.machine, "arch": "x86_64"})) == 16


def test_weights_past_the_l2_are_read_again_for_every_tile_of_output_columns():
    conv = {"groups": 1, "kernel": [1, 1]}
    assert weight_passes("conv2d", {**conv, "out_shape": [1, 512, 14, 14]}, 16) == 14  # a tile of 14 columns per row
    assert weight_passes("conv2d", {**conv, "out_shape": [1, 64, 56, 56]}, 16) == 56 * 4  # tiles of 14: four per row
    assert weight_passes("conv2d", {**conv, "out_shape": [1, 64, 13, 13]}, 8) == 13 * 2  # 13 is prime: tiles of 7 and 6 columns
    assert weight_passes("conv2d", {"groups": 64, "out_shape": [1, 64, 14, 14]}, 16) == 1  # depthwise weights are few
    assert weight_passes("linear", {"out_shape": [1, 1000]}, 16) == 1
    # over tokens the rows are the register tile: 196 rows in tiles of 14, 197 (prime) in 13 tiles with a tail
    assert weight_passes("linear", {"out_shape": [1, 196, 768]}, 16) == 14
    assert weight_passes("linear", {"out_shape": [1, 197, 768]}, 16) == 13
    cpu = CPUFacts(16, 16, l2_bytes=1 << 20)
    attrs = {**conv, "out_shape": [1, 512, 14, 14]}
    assert _moved("conv2d", attrs, 100, 200, 2 << 20, cpu) == 100 + 200 + 14 * (2 << 20)
    assert _moved("conv2d", attrs, 100, 200, 1 << 19, cpu) == 100 + 200 + (1 << 19)  # fits the L2: read once
    assert _moved("conv2d", attrs, 100, 200, 2 << 20, CPUFacts(16, 16)) == 100 + 200 + (2 << 20)  # L2 size unknown


def test_timing_keeps_the_median_batch_or_under_a_quota_the_fastest():
    """A call that slows down as it runs: the median batch is a middle one, the fastest the first."""
    from cogent_compiler.cost.profile_worker import time_call

    def slowing() -> Callable[[], None]:
        calls = [0]

        def f() -> None:
            calls[0] += 1
            end = time.perf_counter() + 2e-6 * calls[0] ** 0.5
            while time.perf_counter() < end:
                pass
        return f

    median, n = time_call(slowing(), 0.002, 5)
    fastest, m = time_call(slowing(), 0.002, 5, fastest=True)
    assert n > 5 and m > 5 and fastest < 0.9 * median


def test_timing_by_cpu_share_counts_work_not_waiting():
    """Under a quota a call is its CPU time over the quota: time spent off the CPU (here asleep) is not the call's."""
    from cogent_compiler.cost.profile_worker import time_call

    def f() -> None:
        end = time.process_time() + 2e-4
        while time.process_time() < end:
            pass
        time.sleep(1e-3)

    wall, _ = time_call(f, 0.005, 3)
    work, _ = time_call(f, 0.005, 3, cpu_share=1.0)
    tenth, _ = time_call(f, 0.005, 3, cpu_share=0.1)
    assert wall > 1.0 and 0.15 < work < 0.6 and 7 * work < tenth < 14 * work


def test_the_whole_call_fit_is_calibrated_on_reference_networks_end_to_end():
    """Reference networks that ran 1.25x their predicted kernels teach the predictor to scale a half's kernels by 1.25."""
    base = _synthetic()
    bare = ProfileComputeModel("device", base)
    nets = []
    for c, depth in ((8, 2), (16, 3), (32, 2), (64, 4), (16, 6), (64, 1)):
        nodes = _chain(c, depth)
        wall = 1.25 * bare.nodes_ms(nodes)
        nets.append(Sample("graph", {"net": f"chain{c}x{depth}", "kernels": depth + 2, "act_bytes": 0, "nodes": [n.to_json() for n in nodes]},
                           0, 0, 0, sum(n.param_bytes for n in nodes), 0.0, 10, key=f"graph chain{c}x{depth}", wall_ms=wall))
    p = fit_profile(base.with_samples((*base.samples, *nets)))
    graph = p.fits["graph"]
    assert graph["method"] == "end-to-end" and graph["samples"] == 6
    assert graph["kernel_scale"] == pytest.approx(1.25, rel=1e-3) and graph["max_rel_err"] < 1e-3
    model = ProfileComputeModel("device", p)
    unseen = _chain(48, 5)
    assert model.nodes_ms(unseen) == pytest.approx(1.25 * bare.nodes_ms(unseen), rel=1e-3)
    # a profile of before (its networks without nodes) keeps the gap-to-kernels fit
    old = fit_profile(base.with_samples((*base.samples, *(replace(s, attrs={k: v for k, v in s.attrs.items() if k != "nodes"}, ms=0.01)
                                                           for s in nets))))
    assert old.fits["graph"]["method"] == "kernels" and "kernel_scale" not in old.fits["graph"]


def test_linear_weights_are_streamed_only_when_a_half_outgrows_the_cache():
    base = _synthetic()
    fc = Node("fc", "linear", "aten.linear.default", ("x",), (TensorInfo("fc", (1, 1000), "float32"),), macs=2048 * 1000,
              param_bytes=(2048 * 1000 + 1000) * 4, attrs={"in_features": 2048, "out_features": 1000})
    nodes = [*_chain(64, 2), fc]
    params = sum(n.param_bytes for n in nodes)
    small = ProfileComputeModel("device", replace(base, machine={**base.machine, "llc_bytes": params - 1}))
    large = ProfileComputeModel("device", replace(base, machine={**base.machine, "llc_bytes": params}))
    assert small.streamed_param_bytes(nodes, params) == fc.param_bytes
    assert large.streamed_param_bytes(nodes, params) == 0
    assert ProfileComputeModel("device", base).streamed_param_bytes(nodes, params) == 0  # cache size not recorded


def test_a_profile_fitted_by_another_version_is_refitted_when_loaded(tmp_path, tiny_graph, caplog):
    stale = replace(_synthetic(), fits={"conv2d": {"ms_per_mac": 1.0, "ms_per_byte": 0.0, "ms_fixed": 0.0, "samples": 4}}, fit_method=0,
                    schedule_rules=SCHEDULE_RULES)
    save_profile(stale, tmp_path / "old.json")
    with caplog.at_level(logging.WARNING, logger="cogent_compiler.cost.predictor"):
        model = ProfileComputeModel.from_file("device", tmp_path / "old.json")
    assert model.profile.fit_method == FIT_METHOD and model.profile.fits == _synthetic().fits
    assert not caplog.records
    # measured with other schedule rules: refitted too, but its kernel times may not be today's: a warning says so
    save_profile(replace(stale, schedule_rules=1), tmp_path / "older.json")
    with caplog.at_level(logging.WARNING, logger="cogent_compiler.cost.predictor"):
        ProfileComputeModel.from_file("device", tmp_path / "older.json")
    assert any("schedule rules v1" in r.getMessage() and "re-profile" in r.getMessage() for r in caplog.records)
    for n in tiny_graph.nodes:
        assert Node.from_json(json.loads(json.dumps(n.to_json()))) == n


def test_fusion_puts_relu_and_residual_add_into_the_conv(tiny_graph):
    from cogent_compiler.passes import FoldBatchNorm

    g = FoldBatchNorm()(tiny_graph)
    fused = fused_epilogues(g.nodes)
    ops = {n.name: n.op for n in g.nodes}
    # stem conv -> relu, conv_a -> relu and conv_b -> add (the residual y is read twice, so the relu before it is not fused into the add)
    assert sorted(ops[n] for n in fused) == ["add", "relu", "relu"]
    add = next(n for n in g.nodes if n.op == "add")
    assert fused[add.name] == g.tensors[add.inputs[0]].nbytes  # the residual operand is the extra read


def test_reference_layers_cover_every_family_early():
    layers = reference_layers()
    assert len({s.key for s in layers}) == len(layers) > 100
    first = layers[:25]
    assert {s.kind for s in first} >= {"conv2d", "linear", "max_pool2d", "adaptive_avg_pool2d", "relu", "hardtanh", "add", "cat"}
    assert {s.groups > 1 for s in first if s.kind == "conv2d"} == {True, False}
    with pytest.raises(ProfileError, match="lstm"):
        reference_layers(["lstm"])
    # transformer layers are there too, on tokens
    kinds = {s.kind for s in reference_layers(["layer_norm", ATTENTION, "softmax", "matmul", "linear"])}
    assert kinds == {"layer_norm", ATTENTION, "softmax", "matmul", "linear"}


@pytest.fixture(scope="session")
def measured(tmp_path_factory) -> Path:
    """A small profile measured for real on this CPU (about 20 s)."""
    out = tmp_path_factory.mktemp("profile") / "llvm.json"
    measure_profile("llvm", out, budget_s=120, layers=TINY_LAYERS)
    return out


@pytest.mark.slow
def test_a_measured_profile_predicts_an_unmeasured_channel_count(measured, tmp_path):
    profile = load_profile(measured, expect_target="llvm")
    assert len(profile.samples) == len(TINY_LAYERS)
    assert profile.machine["threads"] >= 1 and profile.machine["cpu_quota"] is None and profile.tvm
    # a pool runs between convolutions (NHWC): only its own kernel is its time; at a half's input (NCHW) it is another sample
    pool = next(s for s in profile.samples if s.key == "max_pool2d k2 s2 8 @16")
    assert any("conv2d" in k for k in pool.kernels) and pool.ms == pytest.approx(pool.kernels["max_pool2d"])
    at_input = next(s for s in profile.samples if s.key == "max_pool2d k2 s2 8 @16 at input")
    assert at_input.attrs["boundary"] and not any("conv2d" in k for k in at_input.kernels) and "max_pool2d:boundary" in profile.fits
    conv = next(s for s in profile.samples if s.key == "conv2d k3 s1 g1 64->64 @14")
    assert conv.macs == 64 * 64 * 9 * 14 * 14 and conv.ms > 0 and conv.runs >= 7
    # the kernel is timed by the profiler and the whole call by the wall clock, in separate runs: on a shared machine
    # either can be the larger (a busy neighbour made the kernel's runs 1.6x the call's), so only both are checked present
    assert "fused_conv2d_add_relu" in conv.kernels and conv.wall_ms > 0
    # measure 48 channels (never in the profile) and compare with the prediction
    held_out = measure_profile("llvm", tmp_path / "held.json", budget_s=60, layers=[LayerSpec("conv2d", 48, 48, 14, 3)])
    truth = held_out.samples[0]
    fit = ProfileComputeModel("device", profile).fit_for(truth.op, truth.attrs)
    predicted = fit.predict(truth.macs, truth.bytes_moved)
    assert truth.ms / 3 < predicted < truth.ms * 3, (predicted, truth.ms)


TRANSFORMER_LAYERS = [
    LayerSpec("linear", 64, 64, 17), LayerSpec("linear", 64, 192, 17), LayerSpec("linear", 64, 256, 17), LayerSpec("linear", 256, 64, 17),
    LayerSpec("linear", 64, 10), LayerSpec("layer_norm", 64, 0, 17), LayerSpec("layer_norm", 192, 0, 65),
    LayerSpec(ATTENTION, 64, 0, 17, groups=4), LayerSpec(ATTENTION, 192, 0, 65, groups=3), LayerSpec("softmax", 0, 0, 17, groups=4),
    LayerSpec("matmul", 16, 17, 17, groups=4), LayerSpec("relu", 8, 0, 16), LayerSpec("add", 8, 0, 16), LayerSpec("cat", 16, 0, 14),
    LayerSpec("conv2d", 3, 16, 32, 3), LayerSpec("conv2d", 16, 16, 14, 3), LayerSpec(GRAPH, 0, net="encoder-65"),
]


def test_fit_variants():
    assert fit_key("conv2d", {"groups": 32, "in_channels": 32, "kernel": [3, 3]}) == "conv2d:depthwise"
    assert fit_key("conv2d", {"groups": 1, "kernel": [1, 1]}) == "conv2d:1x1"
    assert fit_key("conv2d", {"groups": 1, "kernel": [8, 8]}) == "conv2d:k8x8"
    # a linear layer over a transformer's tokens reuses its weights: a fit of its own; at batch 1 the kind's
    assert fit_key("linear", {"out_shape": [1, 197, 768]}) == fit_key("linear", {"out_shape": [197, 768]}) == "linear:tokens"
    assert fit_key("linear", {"out_shape": [1, 1000]}) is None and fit_key("layer_norm", {"out_shape": [1, 197, 768]}) is None
    assert fit_key("max_pool2d", {"boundary": True}) == "max_pool2d:boundary"


@pytest.mark.slow
def test_a_transformer_is_profiled_and_predicted(tmp_path):
    import torch
    from tiny_models import tiny_vit

    from cogent_compiler.frontend import from_module, trace

    profile = measure_profile("llvm", tmp_path / "vit.json", budget_s=300, layers=TRANSFORMER_LAYERS, threads=1)
    assert len(profile.samples) == len(TRANSFORMER_LAYERS)
    assert {"linear", "layer_norm", ATTENTION, "softmax", "matmul", GRAPH} <= set(profile.fits)
    assert profile.fits["linear:tokens"]["samples"] == 4 and profile.fits["linear"]["samples"] == 5
    by_key = {s.key: s for s in profile.samples}
    attention = by_key["attention h4 64 x17"]
    # TVM writes attention out as batched matmuls and a softmax; every kernel of it is its time, transposes included
    assert attention.macs == 4 * 17 * 17 * (16 + 16) and attention.attrs["heads"] == 4
    assert sum("matmul" in k for k in attention.kernels) == 2 and any("softmax" in k for k in attention.kernels)
    assert attention.ms == pytest.approx(sum(attention.kernels.values()), rel=1e-3)
    tokens = by_key["linear 64->192 x17"]
    assert tokens.macs == 17 * 64 * 192 and by_key["linear 64->10"].macs == 640
    # a model none of whose layers was measured: every node has a fit, and its kernels are predicted near what they took
    model = ProfileComputeModel("device", profile)
    vit = trace(from_module(tiny_vit(), (torch.randn(1, 3, 32, 32),)))
    assert 0 < model.nodes_ms(vit.nodes) < 50
    encoder = by_key["graph encoder-65"]
    predicted_kernels = model._parts([Node.from_json(d) for d in encoder.attrs["nodes"]])[0]
    measured_kernels = sum(encoder.kernels.values())
    assert measured_kernels / 3 < predicted_kernels < measured_kernels * 3, (predicted_kernels, measured_kernels)


@pytest.mark.slow
def test_plan_with_device_and_edge_profiles(measured, capsys):
    argv = ["plan", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--device-profile", str(measured), "--edge-profile", str(measured), "--bandwidth", "1mbit"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    for side in ("device", "edge"):
        assert report["conditions"][side]["source"] == f"profile {measured}"
        assert report["conditions"][side]["fits"]["conv2d"]["samples"] >= 5
    device_only = report["baselines"]["device_only"]["predicted"]
    assert 0 < device_only["device_ms"] < 50
    assert main([*argv, "-q"]) == 0
    assert f"device profile {measured}, edge profile {measured}" in capsys.readouterr().out
    # a profile of this CPU is refused for a GPU edge, before the model is loaded
    code = main(["plan", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--edge-profile", str(measured), "--target", "llvm,cuda", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "used for 'cuda:sm_80'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_profile_on_a_small_budget_resumes(tmp_path, capsys):
    out = tmp_path / "p.json"
    argv = ["profile", "--target", "llvm", "-o", str(out), "--only", "relu,add", "--json"]
    assert main([*argv, "--threads", "1", "--budget", "8s"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["samples"] >= 1 and first["threads"] == 1 and set(first["fits"]) <= {"relu", "add"}
    facts = {k: load_profile(out).machine[k] for k in ("vector_lanes", "vector_block", "l2_bytes", "llc_bytes")}
    assert facts["vector_lanes"] in (4, 8, 16) and facts["vector_block"] in (8, 16)
    # a profile from a cogentc that did not record the CPU's facts gains them when resumed on the same machine
    old = load_profile(out)
    save_profile(replace(old, machine={k: v for k, v in old.machine.items() if k not in facts}), out)
    assert main([*argv, "--threads", "1", "--budget", "6s"]) == 0
    second = json.loads(capsys.readouterr().out)
    keys = [s.key for s in load_profile(out).samples]
    assert second["samples"] > first["samples"] and len(keys) == len(set(keys))
    assert {k: load_profile(out).machine[k] for k in facts} == facts
    # another thread count is another profile: refused, the file kept
    assert main([*argv, "--threads", "2", "--budget", "5s"]) == 1
    assert "threads 1" in capsys.readouterr().err and len(load_profile(out).samples) == second["samples"]
    # samples timed as other schedule rules scheduled the kernels are not resumed: measured again
    assert load_profile(out).schedule_rules == SCHEDULE_RULES
    old = load_profile(out)
    save_profile(replace(old, schedule_rules=1, samples=tuple(replace(x, ms=1e6) for x in old.samples)), out)
    assert main([*argv[:-1], "--threads", "1", "--budget", "5s"]) == 0
    assert f"schedule rules v1, this compiler's are v{SCHEDULE_RULES}: measuring it again" in capsys.readouterr().err
    again = load_profile(out)
    assert again.schedule_rules == SCHEDULE_RULES and again.samples and all(x.ms < 1e6 for x in again.samples)


@pytest.mark.slow
def test_recalibrate_times_the_reference_networks_again_and_refits_the_whole_call(tmp_path, capsys):
    """A profile whose reference network ran 2x slower when measured (doctored here) is re-anchored by --recalibrate."""
    out = tmp_path / "fc.json"
    layers = [LayerSpec("linear", c, o) for c, o in ((512, 512), (1024, 1024), (2048, 1000), (2048, 2048))] + [LayerSpec(GRAPH, 0, net="fc")]
    measure_profile("llvm", out, budget_s=300, layers=layers, threads=1)
    profile = load_profile(out)
    fc = next(s for s in profile.samples if s.op == GRAPH)
    save_profile(replace(profile.with_samples(tuple(replace(s, wall_ms=2 * s.wall_ms) if s.op == GRAPH else s for s in profile.samples)),
                         fits={}), out)
    nodes = [Node.from_json(d) for d in fc.attrs["nodes"]]
    slow = ProfileComputeModel.from_file("device", out).nodes_ms(nodes)
    assert slow == pytest.approx(2 * fc.wall_ms, rel=0.05)  # one network: the whole-call fit reproduces its time

    assert main(["profile", "--target", "llvm", "-o", str(out), "--threads", "1", "--recalibrate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == len(layers)
    again = load_profile(out)
    ratio = again.machine["recalibrated"]["now_over_before"]["graph fc"]
    assert ratio < 0.8 and again.machine["recalibrated"]["median"] == ratio  # about 0.5, on a noisy shared machine
    # the layers are kept as measured; only the network's sample is new
    assert [(s.key, s.ms) for s in again.samples if s.op != GRAPH] == [(s.key, s.ms) for s in profile.samples if s.op != GRAPH]
    (new_fc,) = [s for s in again.samples if s.op == GRAPH]
    assert new_fc.wall_ms == pytest.approx(ratio * 2 * fc.wall_ms, rel=1e-3)
    assert ProfileComputeModel.from_file("device", out).nodes_ms(nodes) == pytest.approx(new_fc.wall_ms, rel=0.05) and new_fc.wall_ms < 0.8 * slow


def test_recalibrate_needs_a_profile_and_takes_no_only(capsys, tmp_path):
    for extra, needle in (([], "measure one first with `cogentc profile --target llvm -o"), (["--only", "relu"], "give one of them")):
        assert main(["profile", "-o", str(tmp_path / "x.json"), "-q", "--recalibrate", *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("cogentc: error:") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_cli_profile_refuses_what_it_cannot_measure(capsys, tmp_path):
    for extra, needle in ((["--target", "arm"], "needs --rpc"), (["--target", "cuda"], "needs --rpc"),
                          (["--rpc", "board:9190"], "HOST:PORT:KEY"), (["--only", "lstm"], "lstm")):
        assert main(["profile", "-o", str(tmp_path / "x.json"), "-q", *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("cogentc: error:") and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").exists(),
                    reason="--cpu-quota needs root and a cgroup v1 cpu controller")
def test_cpu_quota_times_in_a_cgroup_and_removes_it(tmp_path):
    p = measure_profile("llvm", tmp_path / "q.json", budget_s=60, cpu_quota=0.5, threads=1, layers=[LayerSpec("relu", 8, 0, 7)])
    assert p.cpu_quota == 0.5 and p.machine["quota_period_us"] == 10_000 and p.samples[0].ms > 0
    assert p.machine["quota_timing"] == QUOTA_TIMING
    # a quota profile timed by the wall clock (before QUOTA_TIMING) is measured again, not resumed
    machine = {k: v for k, v in p.machine.items() if k != "quota_timing"}
    save_profile(replace(p, machine=machine, samples=tuple(replace(x, ms=1e6) for x in p.samples)), tmp_path / "q.json")
    said: list[str] = []
    again = measure_profile("llvm", tmp_path / "q.json", budget_s=60, cpu_quota=0.5, threads=1, layers=[LayerSpec("relu", 8, 0, 7)],
                            progress=said.append)
    assert any("by the wall clock" in m and "measuring it again" in m for m in said)
    assert again.machine["quota_timing"] == QUOTA_TIMING and all(x.ms < 1e6 for x in again.samples)
    # one thread under a quota of 1.5 cores never reaches it: it runs at one core's speed
    for threads, quota, share in ((1, 1.5, 1.0), (2, 1.5, 1.5), (1, 0.1, 0.1)):
        worker = _Worker(threads, quota)
        try:
            assert worker.cpu_share == share
        finally:
            worker.close()
    assert not list(Path("/sys/fs/cgroup/cpu").glob(f"cgnt-{os.getpid()}-prof"))
