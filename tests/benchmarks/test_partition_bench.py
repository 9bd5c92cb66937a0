"""The partition benchmark's predicted part on one small model with synthetic profiles: well-formed, consistent results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.partition import PLANS, main
from cogent_compiler.cost import Profile, Sample, fit_profile, save_profile

#: Every op kind squeezenet1_1 has (reshape is free).
OPS = ("conv2d", "relu", "cat", "max_pool2d", "adaptive_avg_pool2d")


def _profile(gmacs: float, gbytes: float, quota: float | None) -> Profile:
    """A profile whose every op takes MACs / gmacs + bytes / gbytes + 5 µs exactly (a device ``gmacs`` GMAC/s fast)."""
    samples = []
    for op in OPS:
        for c in (8, 16, 32, 64):
            macs = c * c * 9 * 196 if op == "conv2d" else 0
            in_b, out_b, par_b = c * 196 * 4, c * 196 * 4, (c * c * 9 + c) * 4 if op == "conv2d" else 0
            ms = macs / (gmacs * 1e6) + (in_b + out_b + par_b) / (gbytes * 1e6) + 0.005
            attrs = {"kernel": [3, 3], "groups": 1, "in_channels": c, "out_channels": c} if op == "conv2d" else {}
            samples.append(Sample(op, attrs, macs, in_b, out_b, par_b, ms, 10, key=f"{op} {c}"))
    machine = {"cpu": "synthetic", "cpu_quota": quota, "threads": 1}
    return fit_profile(Profile("llvm", '{"kind": "llvm"}', machine, "0.27", "2026-01-01", tuple(samples)))


@pytest.fixture(scope="module")
def profiles(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("profiles")
    device, edge = folder / "device.json", folder / "edge.json"
    save_profile(_profile(1.0, 1.0, 0.1), device)  # a weak device ...
    save_profile(_profile(100.0, 100.0, None), edge)  # ... and an edge 100x faster
    return device, edge


def test_predicted_part_writes_every_plan_and_picks_the_fastest(profiles, tmp_path):
    device, edge = profiles
    out = tmp_path / "partition.json"
    assert main(["--models", "squeezenet1_1", "--bandwidths", "1,1000", "--device-profile", str(device), "--edge-profile", str(edge),
                 "--transfer-dtype", "float32", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] and "--models squeezenet1_1" in result["command"]
    d = result["profiles"]["device"]
    assert (d["path"], d["samples"], d["cpu_quota"]) == (str(device), 4 * len(OPS), 0.1)
    assert result["link"]["rtt_ms"] == 0.0 and result["link"]["per_message_ms"] == 0.0
    slow, fast = result["cases"]
    for case in (slow, fast):
        assert case["model"] == "squeezenet1_1" and set(case["plans"]) == set(PLANS) and "measured_ms" not in case
        assert case["plans"][case["chosen"]] == min(case["plans"].values())
        # the best single cut is searched over cuts that include the input and the output
        assert case["plans"]["single_cut"] <= min(case["plans"]["device_only"], case["plans"]["edge_only"])
        for name, d in case["plan_details"].items():
            assert d["predicted_ms"] == case["plans"][name]
            assert d["device_ms"] + d["transfer_ms"] + d["edge_ms"] == pytest.approx(d["predicted_ms"], abs=2e-3)
            assert d["encodings"] == {} and d["wire_bytes"] == d["sent_bytes"]  # float32 on the wire, as asked
    assert (slow["bandwidth_mbps"], fast["bandwidth_mbps"]) == (1.0, 1000.0)
    assert slow["chosen"] == "device_only"  # 600 kB of input over 1 Mbit/s: seconds, against ~0.4 s of device compute
    assert result["link"]["transfer_dtype"] == "float32"
    assert fast["chosen"] != "device_only" and fast["speedup_predicted_vs_device_only"] > 2
    summary = result["summary"]
    assert summary["all"]["cases"] == 2 and set(summary["by_bandwidth_mbps"]) == {"1", "1000"}
    counts = summary["all"]
    assert counts["min_cut_beats_single_cut"] + counts["min_cut_ties_single_cut"] + counts["min_cut_loses_to_single_cut"] == 2
    assert sum(counts["chosen"].values()) == 2 and "measured" not in summary


def test_float16_on_the_wire_halves_the_bytes_of_float32_tensors(profiles, tmp_path):
    device, edge = profiles
    out = tmp_path / "partition.json"
    assert main(["--models", "squeezenet1_1", "--bandwidths", "1", "--device-profile", str(device), "--edge-profile", str(edge),
                 "--transfer-dtype", "float16", "-o", str(out)]) == 0
    (case,) = json.loads(out.read_text())["cases"]
    edge_only = case["plan_details"]["edge_only"]
    assert edge_only["encodings"] == {"x": "float16"} and edge_only["wire_bytes"] * 2 == edge_only["sent_bytes"]
    assert case["plan_details"]["device_only"]["wire_bytes"] == 0


def test_a_missing_profile_names_the_command_that_makes_it(profiles, tmp_path):
    _, edge = profiles
    with pytest.raises(SystemExit, match=r"cogentc profile --target llvm"):
        main(["--models", "squeezenet1_1", "--device-profile", str(tmp_path / "none.json"), "--edge-profile", str(edge),
              "-o", str(tmp_path / "x.json")])
