"""`cogentc bench` measures a real bundle on the testbed — as processes, and as the bundle's own containers."""

from __future__ import annotations

import json

import pytest
from testbed_support import leftover_names, needs_podman, needs_root

from cogent_compiler.cli import main

pytestmark = needs_root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    assert main(["tiny_models:tiny_cnn", "--input-shape", "1,3,32,32", "--cut", "relu", "--transfer-dtype", "float32", "-o", str(root / "out"), "-q"]) == 0
    return root / "out"


def _check(result: dict, requests: int) -> None:
    plans = result["plans"]
    assert set(plans) == {"device_eager", "chosen", "device_only", "edge_only", "single_cut"}
    for name, p in plans.items():
        assert p["requests"] == requests and len(p["runs_ms"]) == requests
        assert 0 < p["median_ms"] <= p["p95_ms"]
        if name != "device_eager":
            assert p["max_abs_error"] <= 1e-4, (name, p["max_abs_error"])
            assert "predicted_ms" in p
    assert plans["chosen"]["cut"] == ["relu"] and plans["edge_only"]["cut"] == ["x"]
    assert result["speedup_vs_device_eager"] == pytest.approx(plans["device_eager"]["median_ms"] / plans["chosen"]["median_ms"], rel=1e-3)
    assert result["machine"]["cores"] and result["conditions"]["bandwidth_mbps"] == 20


def test_bench_processes(bundle, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(bundle), "--bandwidth", "20mbit", "--device-quota", "0.5", "--requests", "5", "-o", str(out), "-q"]) == 0
    result = json.loads(out.read_text())
    _check(result, 5)
    assert result["mode"] == "processes"
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speedup of the chosen plan" in capsys.readouterr().out
    assert not leftover_names()


def test_bench_repeat_slows_a_small_device_half_that_the_quota_does_not(bundle, tmp_path):
    """tiny_cnn's device-only plan is well under 1 ms of work: a 10 % quota lets it run at full speed, repeat mode does not."""
    ms = {}
    for sched in ("quota", "repeat"):
        out = tmp_path / f"{sched}.json"
        assert main(["bench", str(bundle), "--bandwidth", "20mbit", "--device-quota", "0.1", "--device-sched", sched, "--requests", "5",
                     "-o", str(out), "-q"]) == 0
        result = json.loads(out.read_text())
        _check(result, 5)
        assert result["conditions"]["device_sched"] == sched
        ms[sched] = {k: p["median_ms"] if sched == "repeat" else min(p["runs_ms"]) for k, p in result["plans"].items()}
    # the device's own compute, 10x slower when repeated; the edge's is not. The quota side counts its fastest request. Eager
    # PyTorch is not compared: its ~0.4 ms per request is near the quota's 1 ms per period, so whether any of 5 requests escapes
    # throttling is chance (CI saw a fastest of 1.13 ms beside a repeated 4.25 ms), and throttling only ever slows a request.
    assert ms["repeat"]["device_only"] >= 4 * ms["quota"]["device_only"], ms
    assert ms["repeat"]["edge_only"] <= 2 * ms["quota"]["edge_only"], ms  # the device only sends the input
    assert not leftover_names()


@needs_podman
def test_bench_containers_builds_and_runs_the_bundle_images(bundle, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", str(bundle), "--bandwidth", "20mbit", "--device-quota", "0.5", "--requests", "3", "--containers", "-o", str(out), "-q"]) == 0
    result = json.loads(out.read_text())
    _check(result, 3)
    assert result["mode"] == "containers"
    chosen = result["plans"]["chosen"]
    assert chosen["device_image_bytes"] > 0 and chosen["edge_image_bytes"] > 0
    assert "edge_image_bytes" not in result["plans"]["device_only"]  # no edge needed
    assert not leftover_names()
