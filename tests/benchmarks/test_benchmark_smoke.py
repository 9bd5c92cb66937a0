"""Short smoke forms of the benchmarks: they run end to end and write well-formed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from testbed_support import needs_root

ROOT = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path, *args: str) -> dict:
    """Run ``benchmarks/SCRIPT`` with ``args`` (its output path included); return the JSON it wrote to ``out``."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(out.read_text())


@needs_root
def test_e2e_benchmark_smoke(tmp_path):
    out = tmp_path / "e2e.json"
    result = _run("e2e.py", out, "--smoke", "--out", str(out), "--work", str(tmp_path / "work"))
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
    result = _run("backends.py", out, "--smoke", "--output", str(out))
    assert result["machine"]["cores"] and result["results"]
    for row in result["results"]:
        assert row["ort_ms"] > 0 and row["tvm_ms"] > 0 and row["torch_ms"] > 0
        assert max(row["max_abs_err_vs_torch"].values()) <= 1e-4


def test_pruning_benchmark_smoke(tmp_path):
    out = tmp_path / "pruning.json"
    result = _run("pruning.py", out, "--smoke", "-o", str(out))
    assert result["machine"]["cores"] and result["setup"]["threads"] == 1
    base, half = result["cases"]
    for c in (base, half):
        assert set(c) >= {"model", "ratio", "macs", "acc_before", "acc_pruned", "acc_finetuned", "latency_ms"}
        assert c["latency_ms"] > 0 and c["tvm_max_abs_err_vs_torch"] <= 1e-3
    assert (base["ratio"], half["ratio"]) == (0.0, 0.5) and base["acc_before"] == half["acc_before"] > 0.8
    # 50 % of the channels of every group: about a quarter of the MACs, and fine-tuning recovers what pruning lost
    assert 0.2 < half["macs"] / base["macs"] < 0.35
    assert half["acc_finetuned"] > half["acc_pruned"] and half["acc_finetuned"] > 0.8


def test_policy_benchmark_smoke(tmp_path):
    out = tmp_path / "policy.json"
    # the training length per prune group, the model measured in a worker process
    result = _run("policy.py", out, "--smoke", "--rl-episodes", "10", "--jobs", "2", "-o", str(out))
    assert result["machine"]["cores"] and len(result["cases"]) == 2 and not result["partial"] and result["setup"]["jobs"] == 2
    for case in result["cases"]:
        assert case["methods"]["rl"]["steps"] == 10 * 6  # vgg_digits has 6 prune groups
        assert set(case["methods"]) == {"rl", "rl_rollout", "uniform", "random", "optuna"}
        budget = case["budget"]  # the policy's measurements (training, repairs of its answer or of its rollout), given to each baseline
        assert budget >= max(case["methods"]["rl"]["evaluations"], case["methods"]["rl_rollout"]["evaluations"]) > 0
        assert all(case["methods"][m]["evaluations"] == budget for m in ("uniform", "random", "optuna"))
        # "unpruned": the rollout prunes more than a plan measured over the budget, and no measured plan fits
        assert case["methods"]["rl"]["source"] in ("rollout", "measured plan", "unpruned")
        if case["methods"]["rl"]["source"] == "unpruned":
            assert case["methods"]["rl"]["latency_ms"] == pytest.approx(case["partition_only_ms"], abs=1e-3)
        for name, m in case["methods"].items():  # every plan is within the accuracy budget; a search never loses to partitioning alone
            assert case["top1_unpruned"] - m["accuracy"] <= 0.01 + 1e-9
            assert name.startswith("rl") or m["latency_ms"] <= case["partition_only_ms"] + 1e-6
        assert case["rl_vs_best_baseline"] == round(case["methods"]["rl"]["latency_ms"] / min(
            case["methods"][m]["latency_ms"] for m in ("uniform", "random", "optuna")), 4)
        # every final plan checked again as a compile checks it: within the budget there too, and never slower than before the check
        for m in case["methods"].values():
            v = m["validated"]
            assert v["checks"] >= 0 and case["top1_unpruned_validated"] - v["accuracy"] <= 0.01 + 1e-9
            assert v["latency_ms"] <= case["partition_only_ms"] + 1e-6
