"""Transfer encodings end to end: a float16 boundary on a CNN trained on real data, and a uint8 pixel input.

The device and edge halves run as in deployment: the edge is a ``cogent-edge``
process, the device a ``DeviceClient`` talking to it over loopback.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cogent_compiler.driver import CompileOptions, compile
from cogent_compiler.frontend import from_module, trace
from cogent_compiler.frontend.pixels import parse_pixels, with_pixel_input
from edge_support import infer_bundle


def _digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, upsampled to 16x16 in [0, 1]: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False).numpy()
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _trained_cnn(x: np.ndarray, y: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(512, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 32):
            idx = perm[i:i + 32]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits_bundles(tmp_path_factory):
    """The digits CNN compiled twice at the same cut (the first pooling's output): float32 and float16 on the wire."""
    x_train, y_train, x_test, y_test = _digits()
    model = _trained_cnn(x_train, y_train)
    graph = trace(from_module(model, (torch.from_numpy(x_test[:1]),), name="digits_cnn"))
    cut = next(n.outputs[0].name for n in graph.nodes if n.op == "max_pool2d")  # 16x8x8 floats cross
    root = tmp_path_factory.mktemp("digits")
    outs = {}
    for dtype in ("float32", "float16"):
        opts = CompileOptions(cut=(cut,), transfer_dtype=dtype, backend="tvm", use_tunedb=False)
        outs[dtype] = compile(graph, root / dtype, opts, progress=lambda *_: None).out_dir
    return outs, cut, x_test, y_test


def _run(bundle: Path, xs: np.ndarray) -> np.ndarray:
    """The bundle's logits for every sample of ``xs``, one request each."""
    return np.concatenate([next(iter(out.values())) for out in infer_bundle(bundle, [[x[None]] for x in xs])])


def test_float16_boundary_keeps_the_accuracy(digits_bundles):
    outs, cut, x_test, y_test = digits_bundles
    device = json.loads((outs["float16"] / "device" / "manifest.json").read_text())
    edge = json.loads((outs["float16"] / "edge" / "manifest.json").read_text())
    assert device["encodings"] == edge["encodings"] == {cut: "float16"}
    assert json.loads((outs["float32"] / "device" / "manifest.json").read_text())["encodings"] == {}
    plan16 = json.loads((outs["float16"] / "plan.json").read_text())["chosen"]
    plan32 = json.loads((outs["float32"] / "plan.json").read_text())["chosen"]
    assert plan16["encodings"] == {cut: "float16"}
    assert plan16["predicted"]["transfer_ms"] < plan32["predicted"]["transfer_ms"]  # 2 KiB instead of 4 KiB at 20 Mbit/s

    logits32, logits16 = _run(outs["float32"], x_test), _run(outs["float16"], x_test)
    acc32 = float((logits32.argmax(1) == y_test).mean())
    acc16 = float((logits16.argmax(1) == y_test).mean())
    assert acc32 > 0.9  # the model learned the digits: the comparison below means something
    assert abs(acc16 - acc32) <= 1 / len(y_test)  # at most one test image changes its class
    rel = np.abs(logits16 - logits32).max() / np.abs(logits32).max()
    assert 0 < rel < 5e-3  # float16 rounds (2^-11 relative per value) and does not blow up


def test_values_beyond_float16_cross_as_float32(digits_bundles):
    """An activation above 65504 would become inf in float16: the device sends that tensor as float32 instead."""
    outs, _, x_test, _ = digits_bundles
    huge = x_test[:3] * 1e5
    exact, encoded = _run(outs["float32"], huge), _run(outs["float16"], huge)
    assert np.isfinite(encoded).all()
    np.testing.assert_allclose(encoded, exact, rtol=1e-5)


def test_pixel_input_sends_the_uint8_image(tmp_path):
    """--input-pixels: the model takes uint8 pixels and normalises them itself; edge-only sends one byte per value."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    loaded = with_pixel_input(from_module(net, (torch.rand(1, 3, 32, 32),), name="pix"), parse_pixels("imagenet"))
    graph = trace(loaded)
    assert [(t.shape, t.dtype) for t in graph.inputs] == [((1, 3, 32, 32), "uint8")]
    assert [n.op for n in graph.nodes[:3]] == ["cast", "mul", "add"]
    result = compile(graph, tmp_path / "out", CompileOptions(planner="edge", backend="tvm", use_tunedb=False), progress=lambda *_: None)
    assert result.report.chosen.encodings == {}  # uint8 crosses as it is
    assert result.device.inputs[0].dtype == "uint8" and result.edge.inputs[0].dtype == "uint8"

    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, 32, 32), dtype=np.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((torch.from_numpy(pixels).float() / 255 - mean) / std).numpy()
    got = _run(result.out_dir, pixels)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_pixel_input_on_an_onnx_model(tmp_path):
    """An ONNX model gets the same uint8 input: Cast, Mul and Add nodes in front, checked by onnxruntime."""
    import onnxruntime

    from cogent_compiler.frontend import load_model

    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    torch.onnx.export(net, (torch.rand(1, 3, 8, 8),), str(tmp_path / "m.onnx"), dynamo=True, verbose=False)
    loaded = with_pixel_input(load_model(tmp_path / "m.onnx"), parse_pixels("0.5,0.5,0.5/0.25,0.25,0.25"))
    graph = trace(loaded)
    assert [t.dtype for t in graph.inputs] == ["uint8"] and [n.op for n in graph.nodes[:3]] == ["cast", "mul", "add"]
    pixels = np.random.default_rng(1).integers(0, 256, (1, 3, 8, 8), dtype=np.uint8)
    session = onnxruntime.InferenceSession(loaded.program.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {graph.inputs[0].name: pixels})
    with torch.no_grad():
        expected = net((torch.from_numpy(pixels).float() / 255 - 0.5) / 0.25).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bad_pixel_specs_are_one_line_errors():
    from cogent_compiler.errors import FrontendError

    with pytest.raises(FrontendError, match="expected imagenet, unit or MEAN/STD"):
        parse_pixels("bright")
    with pytest.raises(FrontendError, match="every std must be positive"):
        parse_pixels("0.5/0")
    net = nn.Sequential(nn.Conv2d(3, 4, 3)).eval()
    with pytest.raises(FrontendError, match="gives 2 channel values, but the model's input has 3 channels"):
        with_pixel_input(from_module(net, (torch.rand(1, 3, 8, 8),)), parse_pixels("0.5,0.5/0.2,0.2"))
