"""Optuna tunes the agent: trials in SQLite, early pruning, two workers on one PostgreSQL study, the dashboard reads it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

from cogent_compiler.cost import ComputeModel
from cogent_compiler.frontend import from_module, trace
from cogent_compiler.passes import FoldBatchNorm
from cogent_compiler.passes.prune_groups import PruneAnalysis
from cogent_compiler.policy.rl import AgentConfig, LearnedPolicy
from cogent_compiler.policy.space import ConditionRanges, PlanSpace
from cogent_compiler.policy.tune import tune_agent
from rpc_support import free_port

REPO = Path(__file__).resolve().parents[2]


def _space() -> PlanSpace:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16 * 16, 10)).eval()
    graph = FoldBatchNorm()(trace(from_module(model, (torch.rand(1, 3, 16, 16),), name="small")))
    return PlanSpace(graph, PruneAnalysis(()), ComputeModel("device", 0.2), ComputeModel("edge", 100.0), None)


def test_trials_are_stored_scored_and_the_best_policy_written(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    study = tune_agent(_space(), storage=storage, study="s", trials=3, base=AgentConfig(timesteps=120), out=tmp_path / "best.zip",
                       ranges=ConditionRanges(bandwidth_mbps=(1.0, 50.0)))
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert set(study.best_params) == {"learning_rate", "noise_sigma", "noise_correlation", "buffer_size", "gamma", "learning_starts", "uniform_warmup", "width"}
    assert 0 < study.best_value <= 4.0
    assert LearnedPolicy.load(tmp_path / "best.zip").info["config"]["width"] == study.best_params["width"]
    # a second worker joins the same study
    again = tune_agent(_space(), storage=storage, study="s", trials=1, base=AgentConfig(timesteps=120))
    assert len(again.trials) == 4
    # and optuna-dashboard serves it
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard

    app = optuna_dashboard.wsgi(storage)
    env: dict = {"PATH_INFO": "/api/studies", "REQUEST_METHOD": "GET"}
    setup_testing_defaults(env)
    status = []
    body = b"".join(app(env, lambda s, h, *exc: status.append(s)))
    assert status[0].startswith("200"), env["wsgi.errors"].getvalue()[-1500:]
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["s"]


def test_trials_that_trail_are_pruned_while_training(tmp_path):
    steps = []
    # a pruner that stops every trial at its first report: training must stop there, not run to the end
    study = tune_agent(_space(), storage=f"sqlite:///{tmp_path / 'p.db'}", study="p", trials=2, base=AgentConfig(timesteps=400),
                       pruner=optuna.pruners.ThresholdPruner(upper=0.0), say=steps.append)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(max(t.intermediate_values) < 400 for t in study.trials)
    assert sum("pruned at a checkpoint" in s for s in steps) == 2


@pytest.fixture
def postgres():
    """A fresh database on the PostgreSQL server ``.ci/run`` starts (``$COGENT_TEST_POSTGRES``), else on a throwaway one."""
    import sqlalchemy

    url = os.environ.get("COGENT_TEST_POSTGRES")
    root = None
    if not url:
        if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
            pytest.skip("needs Debian's postgresql package (scripts/setup installs it)")
        root = Path(tempfile.mkdtemp(prefix="cogent-pg-"))
        url = subprocess.run([str(REPO / "scripts" / "postgres"), "start", str(root), str(free_port())], check=True,
                             capture_output=True, text=True, timeout=120).stdout.strip()
    name = f"test_{os.getpid()}_{free_port()}"
    admin = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
        if root is not None:
            subprocess.run([str(REPO / "scripts" / "postgres"), "stop", str(root)], check=False, timeout=120)
            shutil.rmtree(root, ignore_errors=True)


def test_two_workers_tune_one_postgresql_study_at_once(postgres, tmp_path):
    cmd = [sys.executable, "-m", "cogent_compiler.cli", "tune", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--rl-steps", "150",
           "--trials", "2", "--storage", postgres, "--study", "shared", "--device-gmacs", "0.05", "--edge-gmacs", "50", "--json"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "frontend")]))
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path) for _ in range(2)]
    outs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outs):
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres)
    assert len(study.trials) == 4 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    # both workers ran trials of the one study, with the pids of the two processes
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in study.trials} == {str(w.pid) for w in workers}
    assert {json.loads(o)["study"] for o, _ in outs} == {"shared"}
