"""cogentc's manners: help everywhere, one-line failures that lose nothing, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cogent_compiler.cli import main

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "cmd",
    [["cogentc"], ["cogentc", "inspect"], ["cogentc", "plan"], ["cogentc", "profile"], ["cogent-edge", "serve"], ["cogent-device", "run"]],
)
def test_every_command_has_help(cmd):
    r = subprocess.run([str(BIN / cmd[0]), *cmd[1:], "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:") and len(r.stdout.splitlines()) > 5


def _fails(capsys, argv, *needles):
    code = main([*argv, "-q"])  # -q: stderr holds only what a failure prints
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cogentc: error:"), err
    for n in needles:
        assert n in err, err
    return err


def test_bad_inputs_get_one_line(capsys, tmp_path):
    _fails(capsys, [str(tmp_path / "missing.pt2")], "missing.pt2")
    garbage = tmp_path / "model.bin"
    garbage.write_bytes(b"\x00garbage" * 10)
    _fails(capsys, [str(garbage)], "model.bin", ".pt2")
    _fails(capsys, ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--target", "riscv,llvm"], "riscv")
    _fails(capsys, ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--target", "llvm"], "two targets")
    _fails(capsys, ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--bandwidth", "fast"], "bandwidth", "20mbit")
    _fails(capsys, ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--cut", "nope", "-o", str(tmp_path / "o")], "'nope'")
    _fails(capsys, ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--tune-budget", "soon"], "soon")
    _fails(capsys, ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--rpc-tracker", "myboard"], "HOST:PORT")
    _fails(capsys, ["tunedb", "export", "-o", str(tmp_path / "x.json"), "--tunedb", str(tmp_path / "none")], "no database")


@pytest.mark.slow
def test_tune_budget_fills_the_database_and_later_compiles_use_it(capsys, tmp_path):
    db = tmp_path / "tunedb"
    common = ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--planner", "device", "--backend", "tvm", "--tunedb", str(db), "--json"]
    assert main([*common, "--tune-budget", "2s", "-o", str(tmp_path / "a")]) == 0
    first = json.loads(capsys.readouterr().out)["backends"]["device"]
    assert first["tuning"]["tuned"] and first["tuning"]["seeded"] == first["tuning"]["tasks"] > 0
    assert first["tunedb"] == {"kernels": first["tuning"]["tasks"], "with_record": first["tuning"]["tasks"]}
    assert any(s.startswith("apply-database") for s in first["stages"])
    # a later compile, no tuning: every kernel is served from the database; plan.json says so
    assert main([*common, "-o", str(tmp_path / "b")]) == 0
    second = json.loads(capsys.readouterr().out)["backends"]["device"]
    assert second["tuning"] is None and second["tunedb"] == first["tunedb"]
    recorded = json.loads((tmp_path / "b" / "plan.json").read_text())["build"]["backends"]["device"]
    assert recorded["tunedb"] == first["tunedb"] and recorded["backend"] == "tvm"
    # --no-tunedb ignores it
    assert main([*common, "--no-tunedb", "-o", str(tmp_path / "c")]) == 0
    assert "tunedb" not in json.loads(capsys.readouterr().out)["backends"]["device"]


def test_a_failed_compile_loses_nothing(capsys, tmp_path):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    _fails(capsys, ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "-o", str(precious)], "not empty")
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_inspect_prints_the_ir_with_totals(capsys):
    assert main(["inspect", "torchvision.models:resnet18", "--input-shape", "1,3,224,224", "-q"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "linear" in out
    assert "1.81 GMAC" in out
    assert main(["inspect", "torchvision.models:resnet18", "--input-shape", "1,3,224,224", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert abs(summary["macs"] - 1.814e9) / 1.814e9 < 0.01


def test_plan_reports_baselines_and_the_best_candidate(capsys):
    argv = ["plan", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--bandwidth", "1mbit", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["baselines"]) == {"device_only", "edge_only"}
    totals = [c["predicted"]["total_ms"] for c in report["candidates"]] + [b["predicted"]["total_ms"] for b in report["baselines"].values()]
    assert report["chosen"]["predicted"]["total_ms"] == min(totals)
    assert main(argv[:-1]) == 0
    table = capsys.readouterr().out
    assert "<- chosen" in table and "device_only" in table and "edge_only" in table


def test_mincut_planner_from_the_command_line(capsys):
    assert main(["plan", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--planner", "mincut", "--bandwidth", "5mbit", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chosen"]["name"] == "min_cut"
    assert set(report["baselines"]) == {"device_only", "edge_only", "single_cut"}
    best_baseline = min(b["predicted"]["total_ms"] for b in report["baselines"].values())
    assert report["chosen"]["predicted"]["total_ms"] <= best_baseline
