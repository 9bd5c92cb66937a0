"""cogentc compiles a model; cogent-edge and cogent-device run it as two processes on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from cogent_compiler.frontend import from_module, trace
from cogent_compiler.passes import FoldBatchNorm, single_tensor_cuts

BIN = Path(sys.executable).parent


def _randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    """A seeded resnet18 saved as .pt2, an input, PyTorch eager's output, and a middle cut."""
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(1, 3, 64, 64)
    root = tmp_path_factory.mktemp("resnet")
    torch.export.save(torch.export.export(model, (x,)), root / "resnet18.pt2")
    np.save(root / "x.npy", x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()
    graph = FoldBatchNorm()(trace(from_module(model, (x,), name="resnet18")))
    cuts = single_tensor_cuts(graph)
    return root, expected, cuts[len(cuts) // 2]


def _cogentc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run cogentc; a compile sends float32 (bit-exact halves) so that the split alone is what these tests check.

    Float16 on the wire has tests of its own (test_transfer_encoding.py).
    """
    exact = ["--transfer-dtype", "float32"] if "-o" in args else []
    return subprocess.run([str(BIN / "cogentc"), *args, *exact], cwd=cwd, capture_output=True, text=True, timeout=600)


class Edge:
    """A cogent-edge process on 127.0.0.1 with a free port."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if "serving" not in line:
            self.proc.kill()
            raise AssertionError(f"edge did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]
        self.address = line.strip().rsplit(" ", 1)[-1]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.mark.parametrize("plan", ["middle", "device", "edge"])
def test_bundle_runs_as_two_processes_and_matches_pytorch(resnet, plan):
    root, expected, middle = resnet
    out = root / f"out-{plan}"
    flags = {"middle": ["--cut", middle], "device": ["--planner", "device"], "edge": ["--planner", "edge"]}[plan]
    r = _cogentc("resnet18.pt2", "--target", "llvm,llvm", "-o", str(out), "--json", *flags, cwd=root)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["plan"]["cut"] == {"middle": [middle], "device": ["linear"], "edge": ["x"]}[plan]
    for half in ("device", "edge"):
        assert (out / half / "Dockerfile").read_text().count("ARG BASE_IMAGE") == 1
        assert json.loads((out / half / "manifest.json").read_text())["role"] == half
    assert (out / "compose.yaml").is_file() and (out / "plan.json").is_file()

    edge = Edge([str(BIN / "cogent-edge"), "serve", str(out / "edge"), "--port", "0"])
    try:
        y = root / f"y-{plan}.npy"
        d = subprocess.run(
            [str(BIN / "cogent-device"), "run", str(out / "device"), "--edge", edge.address, "--input", str(root / "x.npy"), "--output", str(y)],
            capture_output=True, text=True, timeout=120,
        )
        assert d.returncode == 0, d.stderr
    finally:
        edge.stop()
    err = float(np.abs(np.load(y) - expected).max())
    assert err <= 1e-4, f"plan {plan}: max abs error {err}"


def test_bundle_runs_in_an_interpreter_without_torch_or_the_tvm_compiler(resnet, tmp_path, isolated_python):
    """The bundle's own runtime/ folder plus numpy is all either half needs."""
    root, expected, middle = resnet
    out = root / "out-isolated"
    r = _cogentc("resnet18.pt2", "--target", "llvm,llvm", "-o", str(out), "--cut", middle, cwd=root)
    assert r.returncode == 0, r.stderr
    assert not list((out / "edge" / "runtime").rglob("libtvm_compiler.so"))
    base_python, env_for = isolated_python

    def env(half: str) -> dict[str, str]:
        return env_for(out / half / "runtime")

    probe = subprocess.run([base_python, "-S", "-c", "import torch"], env=env("edge"), capture_output=True, text=True)
    assert probe.returncode != 0, "the isolated interpreter can see torch; the test would prove nothing"
    edge = Edge([base_python, "-S", "-m", "cogent_compiler.runtime.edge", "serve", str(out / "edge"), "--port", "0"], env=env("edge"))
    try:
        y = tmp_path / "y.npy"
        d = subprocess.run(
            [base_python, "-S", "-m", "cogent_compiler.runtime.device", "run", str(out / "device"),
             "--edge", edge.address, "--input", str(root / "x.npy"), "--output", str(y)],
            env=env("device"), capture_output=True, text=True, timeout=120,
        )
        assert d.returncode == 0, d.stderr
    finally:
        edge.stop()
    assert float(np.abs(np.load(y) - expected).max()) <= 1e-4


def test_onnx_model_is_split_lowered_and_matches_onnxruntime(resnet, tmp_path):
    import logging

    import onnxruntime as ort

    root, _, _ = resnet
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(weights=None)).eval()
    x = np.load(root / "x.npy")
    logging.disable(logging.WARNING)  # the ONNX exporter is chatty
    try:
        torch.onnx.export(model, (torch.from_numpy(x),), str(tmp_path / "resnet18.onnx"), dynamo=True)
    finally:
        logging.disable(logging.NOTSET)
    expected = ort.InferenceSession(str(tmp_path / "resnet18.onnx")).run(None, {"x": x})[0]

    plan = _cogentc("plan", "resnet18.onnx", "--json", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    candidates = [c["cut"][0] for c in json.loads(plan.stdout)["candidates"]]
    middle = candidates[len(candidates) // 2]
    r = _cogentc("resnet18.onnx", "-o", "out", "--cut", middle, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    edge = Edge([str(BIN / "cogent-edge"), "serve", str(tmp_path / "out" / "edge"), "--port", "0"])
    try:
        d = subprocess.run(
            [str(BIN / "cogent-device"), "run", str(tmp_path / "out" / "device"), "--edge", edge.address,
             "--input", str(root / "x.npy"), "--output", str(tmp_path / "y.npy")],
            capture_output=True, text=True, timeout=120,
        )
        assert d.returncode == 0, d.stderr
    finally:
        edge.stop()
    assert float(np.abs(np.load(tmp_path / "y.npy") - expected).max()) <= 1e-4
