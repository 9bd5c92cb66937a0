"""Short smoke forms of the benchmarks: they run end to end and write well-formed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testbed_support import needs_root

ROOT = Path(__file__).resolve().parents[2]


@needs_root
def test_e2e_benchmark_smoke(tmp_path):
    out = tmp_path / "e2e.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "e2e.py"), "--smoke", "--out", str(out), "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] and result["cases"]
    (case,) = result["cases"]
    assert case["model"] == "resnet18" and case["bandwidth_mbps"] == 20 and case["accuracy_drop"] == 0.0
    assert set(case["plans"]) == {"chosen", "device_only", "edge_only", "single_cut", "device_eager"}
    for name, p in case["plans"].items():
        assert p["measured_ms"] > 0 and p["max_abs_error"] <= 1e-4, name
        assert name == "device_eager" or p["predicted_ms"] > 0
    assert case["speedup_vs_device_eager"] == case["plans"]["device_eager"]["measured_ms"] / case["plans"]["chosen"]["measured_ms"]


def test_backends_benchmark_smoke(tmp_path):
    out = tmp_path / "backends.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "backends.py"), "--smoke", "--output", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] and result["results"]
    for row in result["results"]:
        assert row["ort_ms"] > 0 and row["tvm_ms"] > 0 and row["torch_ms"] > 0
        assert max(row["max_abs_err_vs_torch"].values()) <= 1e-4
