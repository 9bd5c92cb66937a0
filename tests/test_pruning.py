"""Pruning in the compile: held to the accuracy budget on real data, repaired or rejected, and refused without data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from cogent_compiler.accuracy import load_data
from cogent_compiler.cli import main
from cogent_compiler.driver import CompileOptions, compile
from cogent_compiler.frontend import from_module, trace
from edge_support import infer_bundle

SHAPE = (1, 1, 16, 16)


@pytest.fixture(scope="module")
def digits_graph():
    """A 64-channel CNN trained on scikit-learn's digits (16x16), traced with its eager module."""
    data = load_data("digits", SHAPE, 10)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 16, 10),
    )
    from cogent_compiler.accuracy import finetune

    finetune(model, data, steps=200)
    return trace(from_module(model.eval(), (torch.from_numpy(data.x_val[:1]),), name="digits_cnn")), data


def _quiet(*_):
    pass


def test_without_data_nothing_is_pruned_and_the_user_is_told(digits_graph, tmp_path):
    graph, _ = digits_graph
    said = []
    result = compile(graph, tmp_path / "out", CompileOptions(prune=0.5, planner="device", backend="tvm", use_tunedb=False),
                     progress=lambda stage, msg: said.append(f"{stage}: {msg}"))
    assert result.graph.total_macs == graph.total_macs
    assert result.accuracy["status"] == "skipped: no data" and result.report.chosen.prune_ratios == {}
    assert any("skipped: no --data" in s and "--prune-unvalidated" in s for s in said)


def test_pruning_within_budget_ships_the_fine_tuned_model(digits_graph, tmp_path):
    graph, data = digits_graph
    options = CompileOptions(prune=0.5, max_accuracy_drop=0.05, finetune_steps=150, cut=(next(n.outputs[0].name for n in graph.nodes
                             if n.op == "max_pool2d"),), backend="tvm", use_tunedb=False, transfer_dtype="float32")
    result = compile(graph, tmp_path / "out", options, progress=_quiet, data=data)
    acc = result.accuracy
    assert acc["status"] in ("accepted", "repaired") and acc["data"] == "digits"
    assert acc["top1_before"] > 0.9 and acc["drop"] <= 0.05
    assert acc["top1_finetuned"] >= acc["top1_pruned"] - 0.01  # fine-tuning does not make it worse (beyond noise)
    assert result.graph.total_macs < graph.total_macs and acc["macs_after"] == result.graph.total_macs
    assert dict(result.report.chosen.prune_ratios) == acc["ratios"] and acc["ratios"]
    plan = json.loads((result.out_dir / "plan.json").read_text())
    assert plan["accuracy"]["top1_finetuned"] == acc["top1_finetuned"] and plan["chosen"]["prune_ratios"] == acc["ratios"]
    page = (result.out_dir / "report.html").read_text()
    assert "Pruning and accuracy" in page and f"{100 * acc['top1_before']:.2f} %" in page
    # the bundle computes the fine-tuned pruned model, and its accuracy is the one reported
    xs = data.x_val[:40]
    got = np.concatenate([next(iter(o.values())) for o in infer_bundle(result.out_dir, [[x[None]] for x in xs])])
    with torch.no_grad():
        expected = result.graph.module(torch.from_numpy(xs)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


def test_a_plan_over_budget_is_repaired_or_rejected(digits_graph, tmp_path):
    graph, data = digits_graph
    said = []
    options = CompileOptions(prune=0.9, max_accuracy_drop=0.0, finetune_steps=1, planner="device", backend="tvm", use_tunedb=False)
    result = compile(graph, tmp_path / "out", options, progress=lambda stage, msg: said.append(msg), data=data)
    acc = result.accuracy
    first = acc["attempts"][0]
    assert first["ratios"] == {name: 0.9 for name in first["ratios"]} and first["drop"] > 0.0  # 90 % gone, one step: worse
    assert acc["status"] in ("repaired", "rejected")
    if acc["status"] == "rejected":
        assert result.graph.total_macs == graph.total_macs and acc["ratios"] == {} and any("rejected" in s for s in said)
    else:
        assert acc["drop"] <= 0.0 and max(acc["ratios"].values()) < 0.9 and any("repaired" in s for s in said)
    # bisection: every attempt at a larger scale than the one that ships lost too much
    shipped = max((a["scale"] for a in acc["attempts"] if a["drop"] <= 0.0), default=0.0)
    assert all(a["drop"] > 0.0 for a in acc["attempts"] if a["scale"] > shipped)
    assert [a["scale"] for a in acc["attempts"]][:2] == [1.0, 0.5]


def test_an_evaluation_function_measures_without_fine_tuning(digits_graph):
    from cogent_compiler.accuracy import evaluate, prune_within_budget

    graph, data = digits_graph

    def top1(module):
        return evaluate(module, data.x_val, data.y_val)

    shipped, report = prune_within_budget(graph, {g: 0.25 for g in ("0", "4")}, top1, 1.0)
    assert report.status == "accepted" and report.finetuned is None and report.finetune == {}
    assert report.before == pytest.approx(top1(graph.module)) and report.pruned == pytest.approx(top1(shipped.module))


def test_cli_prunes_with_digits_and_refuses_bad_data(tmp_path, capsys):
    common = ["tiny_models:small_cnn", "--input-shape", "1,3,16,16", "--planner", "device", "--backend", "tvm", "--no-tunedb"]
    assert main([*common, "--prune", "0.5", "--data", "digits", "--finetune-steps", "20", "--max-accuracy-drop", "1",
                 "-o", str(tmp_path / "a"), "-q"]) == 0
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    assert plan["accuracy"]["status"] == "accepted" and plan["accuracy"]["finetune"]["steps"] == 20
    assert plan["accuracy"]["macs_after"] < plan["accuracy"]["macs_before"]
    assert plan["build"]["options"]["data"] == "digits"
    capsys.readouterr()
    npz = tmp_path / "bad.npz"
    np.savez(npz, x=np.zeros((4, 3, 16, 16), np.float32), y=np.array([0, 1, 2, 11]))
    assert main([*common, "--prune", "0.5", "--data", f"npz:{npz}", "-o", str(tmp_path / "b"), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "11" in err and "10 classes" in err
    assert not (tmp_path / "b").exists()


def test_a_dataloader_is_data_too(digits_graph, tmp_path):
    """The Python API takes a torch DataLoader: it is split into fine-tuning and validation data like any source."""
    graph, data = digits_graph
    x = np.concatenate([data.x_train, data.x_val])
    y = np.concatenate([data.y_train, data.y_val])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=64)
    options = CompileOptions(prune=0.25, max_accuracy_drop=0.05, finetune_time_s=3.0, planner="device", backend="tvm", use_tunedb=False)
    result = compile(graph, tmp_path / "out", options, progress=_quiet, data=loader)
    acc = result.accuracy
    assert acc["data"] == "dataloader" and acc["status"] in ("accepted", "repaired") and acc["top1_before"] > 0.9
    assert acc["finetune"]["seconds"] <= 10 and result.graph.total_macs < graph.total_macs


def test_a_repair_bisects_the_scale_of_the_ratios():
    from cogent_compiler.accuracy.budget import bisect_scale

    tried = []

    def up_to(limit):
        return lambda s: tried.append(s) or s <= limit

    assert bisect_scale(up_to(0.6), 4) == 0.5 and tried == [1.0, 0.5, 0.75, 0.625]
    tried.clear()
    assert bisect_scale(up_to(0.6), 5) == 0.5625  # one more attempt, closer to the limit
    tried.clear()
    assert bisect_scale(up_to(2.0), 4) == 1.0 and tried == [1.0]  # what was asked for fits: nothing more is tried
    tried.clear()
    assert bisect_scale(up_to(0.1), 4) is None and tried == [1.0, 0.5, 0.25, 0.125]
    tried.clear()
    assert bisect_scale(up_to(1.6), 4, top=2.0) == 1.5 and tried == [1.0, 2.0, 1.5, 1.75]  # stretched towards top
    tried.clear()
    assert bisect_scale(up_to(3.0), 4, top=2.0) == 2.0 and tried == [1.0, 2.0]
    tried.clear()
    assert bisect_scale(up_to(0.6), 4, top=2.0) == 0.5 and tried == [1.0, 0.5, 0.75, 0.625]  # top changes nothing below 1


def test_a_drop_of_exactly_the_budget_fits(digits_graph):
    """0.995 - 0.985 is 0.010000000000000009 in floats: a 1-point budget must still accept a 1-point drop (2 of 200 samples)."""
    from cogent_compiler.accuracy import prune_within_budget
    from cogent_compiler.accuracy.budget import within_budget

    graph, _ = digits_graph
    calls = []

    def top1(module):  # the user's own evaluation: 199/200 before pruning, 197/200 after
        calls.append(module)
        return 0.995 if len(calls) == 1 else 0.985

    _, report = prune_within_budget(graph, {"0": 0.25}, top1, 0.01)
    assert report.status == "accepted" and report.drop > 0.01 and [a["scale"] for a in report.attempts] == [1.0]
    assert within_budget(0.995 - 0.985, 0.01) and not within_budget(0.995 - 0.98, 0.01)


def test_a_plan_that_fits_is_stretched_towards_the_cap(digits_graph):
    """``stretch_to``: ratios that fit are scaled up (each capped) while the check still passes, by the same bisection."""
    from cogent_compiler.accuracy import prune_within_budget

    graph, _ = digits_graph

    def top1(module):  # the user's evaluation: fine while the first convolution keeps 24 of its 64 channels or more
        first = next(m for m in module.modules() if isinstance(m, nn.Conv2d))
        return 0.99 if first.out_channels >= 24 else 0.5

    said = []
    shipped, report = prune_within_budget(graph, {"0": 0.25, "4": 0.125}, top1, 0.01, stretch_to=0.75, say=said.append)
    # ceiling 0.75 / 0.125 = 6 (every ratio at 0.75): scale 1 fits, 6 and 3.5 (16 channels left) do not, 2.25 (28) does
    assert [a["scale"] for a in report.attempts] == [1.0, 6.0, 3.5, 2.25]
    assert report.status == "stretched" and report.ratios == pytest.approx({"0": 0.5625, "4": 0.28125})
    assert report.attempts[1]["ratios"] == {"0": 0.75, "4": 0.75}
    assert shipped.total_macs < graph.total_macs and any("stretched" in s for s in said)
    # without stretch_to the same plan ships as asked, after one attempt
    _, asked = prune_within_budget(graph, {"0": 0.25, "4": 0.125}, top1, 0.01)
    assert asked.status == "accepted" and [a["scale"] for a in asked.attempts] == [1.0]


def test_ratios_that_remove_no_channel_leave_the_users_model_untouched(digits_graph):
    """Rounding to 8 channels makes a small ratio remove nothing: the "pruned" model is the graph's own, and fine-tuning it in
    place changed the model every later plan and the compile's check started from (ResNet-18's top-1 before pruning read 0.969,
    not 0.984, after a policy was trained in the same process)."""
    from cogent_compiler.accuracy import prune_within_budget
    from cogent_compiler.passes.prune_channels import kept_channels

    graph, data = digits_graph
    assert kept_channels(64, 0.05) == 64
    weights = {k: v.clone() for k, v in graph.module.state_dict().items()}
    said = []
    shipped, report = prune_within_budget(graph, {"0": 0.05}, data, 0.01, finetune_steps=5, say=said.append)
    assert report.status == "accepted" and report.finetuned is None and shipped.total_macs == graph.total_macs
    assert any("remove no channel" in s for s in said)
    assert all(torch.equal(v, weights[k]) for k, v in graph.module.state_dict().items())
