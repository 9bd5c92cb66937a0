"""``benchmarks/backend_speed_gpu.py``: compiles for cuda anywhere nvcc is; runs only where a GPU is, and says so clearly where none is."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "backend_speed_gpu.py"

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc (the CUDA toolkit) on the PATH to compile CUDA kernels")


def _gpu_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


def test_without_a_gpu_it_stops_with_one_line_and_writes_nothing(tmp_path):
    if _gpu_visible():
        pytest.skip("a GPU is visible: the benchmark runs instead")
    out = tmp_path / "gpu.json"
    r = _run("--models", "resnet18_pruned50", "-o", str(out))
    assert r.returncode == 2 and not out.exists()
    (line,) = r.stderr.strip().splitlines()
    assert "no CUDA GPU is visible" in line and "--compile-only" in line


@needs_nvcc
def test_compile_only_records_the_cuda_compile_of_a_model(tmp_path):
    out = tmp_path / "gpu.json"
    r = _run("--compile-only", "--arch", "sm_90", "--models", "resnet18_pruned50", "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["ran"] is False and doc["arch"] == "sm_90" and doc["summary"]["geomean_tvm_vs_torch"] is None
    (row,) = doc["results"]
    assert row["model"] == "resnet18_pruned50" and row["fatbins"] >= 1 and row["compile_s"] > 0
    assert any("dlight" in stage for stage in row["stages"]), row["stages"]
    assert "tvm_cuda_ms" not in row


@needs_nvcc
def test_on_a_gpu_tvm_matches_pytorch_and_both_are_timed(tmp_path):
    if not _gpu_visible():
        pytest.skip("running the CUDA kernels needs an NVIDIA GPU (none here)")
    out = tmp_path / "gpu.json"
    r = _run("--models", "resnet18_pruned50", "--repeats", "5", "--warmup", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    (row,) = doc["results"]
    assert doc["ran"] and doc["gpu"]["arch"].startswith("sm_")
    assert row["torch_cuda_ms"] > 0 and row["tvm_cuda_ms"] > 0
    assert row["max_abs_err_vs_torch"] <= 1e-3 * max(1.0, row["reference_max_abs"])
