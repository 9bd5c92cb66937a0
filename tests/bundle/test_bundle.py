"""The bundle: two container contexts with hashed artifacts, the slim runtime for each target, compose."""

from __future__ import annotations

import json
import shutil

import pytest

from cogent_compiler.driver import CompileOptions, compile
from cogent_compiler.runtime.manifest import load_manifest, sha256_file

EM = {"x86_64": 62, "aarch64": 183}


def _machine(path) -> int:
    return int.from_bytes(path.read_bytes()[18:20], "little")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="needs the aarch64 cross compiler; .ci/run installs it")
def test_arm_device_and_x86_edge_bundle(tiny_graph, tmp_path):
    mid = "relu"
    result = compile(tiny_graph, tmp_path / "out", CompileOptions(device_target="arm", edge_target="llvm", cut=(mid,), backend="tvm"))
    out = result.out_dir
    for half, arch in (("device", "aarch64"), ("edge", "x86_64")):
        folder = out / half
        m = load_manifest(folder, role=half)  # verifies every hash
        assert m.module is not None
        assert _machine(folder / m.module.library) == EM[arch]
        # the runtime TVM library travels for the half's own architecture, without the compiler
        assert _machine(folder / "runtime" / "tvm" / "lib" / "libtvm_runtime.so") == EM[arch]
        assert not (folder / "runtime" / "tvm" / "lib" / "libtvm_compiler.so").exists()
        assert list((folder / "runtime" / "tvm_ffi").glob(f"core.cpython-*-{arch}-linux-gnu.so"))
        assert (folder / "runtime" / "cogent_compiler" / "runtime" / "edge.py").is_file()
        assert not (folder / "runtime" / "cogent_compiler" / "frontend").exists()
        size = sum(p.stat().st_size for p in (folder / "runtime").rglob("*") if p.is_file())
        assert size < 40 * 2**20, f"{half} runtime is {size / 2**20:.0f} MiB"
        docker = (folder / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE=python:3.11-slim" in docker and "FROM ${BASE_IMAGE}" in docker
        assert "torch" not in docker.replace("torch and the TVM compiler are never installed", "")
        assert m.files == {f: sha256_file(folder / f) for f in ("model.so", "params.npz")}
    device = load_manifest(out / "device")
    edge = load_manifest(out / "edge")
    assert device.send == (mid,) and [t.name for t in edge.inputs] == [mid]
    assert device.plan["cut"] == [mid]
    assert "ENTRYPOINT" in (out / "edge" / "Dockerfile").read_text()
    compose = (out / "compose.yaml").read_text()
    assert "context: ./edge" in compose and "context: ./device" in compose and "edge:7461" in compose
    plan = json.loads((out / "plan.json").read_text())
    assert set(plan["baselines"]) == {"device_only", "edge_only"}


def test_recompiling_replaces_an_earlier_bundle(tiny_graph, tmp_path):
    out = tmp_path / "out"
    compile(tiny_graph, out, CompileOptions(planner="device"))
    assert load_manifest(out / "edge").module is None
    compile(tiny_graph, out, CompileOptions(planner="edge"))
    assert load_manifest(out / "device").module is None
    assert load_manifest(out / "device").send == ("x",)
    assert not list(tmp_path.glob(".out.partial*"))
