"""Optuna tunes the agent: learning rate, action noise, replay buffer, gamma, warm-up and network width.

Each trial trains a TD3 policy (``rl.train_policy``) with the trial's
hyperparameters and scores it on a fixed set of evaluation conditions: the
mean over them of the answered plan's latency relative to the unpruned
device-only latency, an over-budget plan counting as device-only plus its
penalty (the environment's reward, negated; lower is better).  While it
trains, every checkpoint reports the mean episode reward so far
(``trial.report``) and the median pruner stops trials that trail the others
(``trial.should_prune``).

The study lives in any storage Optuna takes: SQLite by default
(``sqlite:///cogent-tune.db``), or a SQLAlchemy URL such as
``postgresql://user@host/db`` so that workers on several machines tune one
study -- ``cogentc tune MODEL --storage URL --study NAME`` runs one worker.
``optuna-dashboard URL`` shows it.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from cogent_compiler.errors import PlanError
from cogent_compiler.policy.env import PruneCutEnv
from cogent_compiler.policy.rl import AgentConfig, LearnedPolicy, train_policy
from cogent_compiler.policy.space import ConditionRanges, Conditions, PlanSpace

__all__ = ["DEFAULT_STORAGE", "evaluation_conditions", "score_policy", "suggest_config", "tune_agent"]

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///cogent-tune.db"


def suggest_config(trial: Any, base: AgentConfig) -> AgentConfig:
    """The hyperparameters a trial tries (``base`` gives the training length and seed)."""
    return replace(
        base,
        learning_rate=trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
        noise_sigma=trial.suggest_float("noise_sigma", 0.1, 0.8),
        noise_correlation=trial.suggest_float("noise_correlation", 0.0, 0.95),
        buffer_size=trial.suggest_categorical("buffer_size", [5_000, 20_000, 100_000]),
        gamma=trial.suggest_float("gamma", 0.9, 0.999),
        learning_starts=trial.suggest_int("learning_starts", 50, max(51, base.timesteps // 4), log=True),
        # how much of the warm-up prunes every group alike: no share won across models and seeds (benchmarks/policy.py)
        uniform_warmup=trial.suggest_float("uniform_warmup", 0.0, 1.0),
        width=trial.suggest_categorical("width", [32, 64, 128]),
    )


def evaluation_conditions(ranges: ConditionRanges, n: int = 8, seed: int = 12345) -> list[Conditions]:
    """``n`` conditions drawn from ``ranges`` with a fixed seed: every trial is scored on the same ones."""
    rng = np.random.default_rng(seed)
    return [ranges.sample(rng) for _ in range(n)]


def score_policy(policy: LearnedPolicy, space: PlanSpace, conditions: Sequence[Conditions]) -> float:
    """Mean negated reward of the policy's plans (accuracy measured): 1.0 is device-only, lower is better."""
    env = PruneCutEnv(space)
    total = 0.0
    for c in conditions:
        obs, _ = env.reset(options={"conditions": c})
        done = False
        reward = 0.0
        while not done:
            obs, reward, done, _, _ = env.step(np.array([policy.act(obs)], np.float32))
        total += -float(reward)
    return total / len(conditions)


def _open_study(storage: str, name: str, pruner: Any) -> Any:
    """Create or join the study; workers starting together race to create Optuna's tables, so the loser tries again."""
    import random
    import time

    import optuna
    import sqlalchemy.exc

    for attempt in range(6):
        try:
            return optuna.create_study(storage=storage, study_name=name, direction="minimize", load_if_exists=True,
                                       sampler=optuna.samplers.TPESampler(), pruner=pruner)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.DuplicatedStudyError, ValueError) as e:
            if attempt == 5 or isinstance(e, (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError, ValueError)):
                first = (str(e).splitlines() or [""])[0][:200]
                raise PlanError(f"--storage {storage}: cannot open Optuna study {name!r} ({type(e).__name__}: {first}); "
                                "give sqlite:///FILE or a reachable database URL such as postgresql://user@host/db") from e
            log.info("opening study %s: %s; trying again", name, type(e).__name__)
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def tune_agent(space: PlanSpace, *, storage: str = DEFAULT_STORAGE, study: str = "cogent", trials: int = 10,
               base: AgentConfig | None = None, ranges: ConditionRanges | None = None, out: str | Path | None = None,
               pruner: Any = None, say: Callable[[str], None] = lambda msg: None) -> Any:
    """Run ``trials`` trials of one worker on the study ``study`` in ``storage`` (created if new); return the study.

    With ``out``, the best policy of this worker's trials is written there.
    ``pruner`` replaces the median pruner in this worker.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = base or AgentConfig()
    ranges = ranges or ConditionRanges()
    conditions = evaluation_conditions(ranges)
    checkpoint = max(50, base.timesteps // 5)
    st = _open_study(storage, study, pruner or optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=checkpoint))
    best: tuple[float, LearnedPolicy | None] = (float("inf"), None)

    def objective(trial: Any) -> float:
        nonlocal best
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which of the study's workers ran it
        cfg = suggest_config(trial, base)
        pruned = False

        def report(step: int, mean_reward: float) -> bool:
            nonlocal pruned
            if np.isfinite(mean_reward):
                trial.report(-mean_reward, step)
                if trial.should_prune():
                    pruned = True
                    return False
            return True

        with tempfile.TemporaryDirectory(prefix="cogent-trial-") as tmp:
            policy = train_policy(space, cfg, Path(tmp) / "policy.zip", ranges=ranges, work=Path(tmp) / "work",
                                  checkpoint_every=checkpoint, callback=report)
        if pruned:
            say(f"trial {trial.number}: pruned at a checkpoint (trails the median)")
            raise optuna.TrialPruned()
        score = score_policy(policy, space, conditions)
        say(f"trial {trial.number}: score {score:.4f} (1.0 = device-only) with {trial.params}")
        if score < best[0]:
            best = (score, policy)
        return score

    st.optimize(objective, n_trials=trials)
    if out is not None and best[1] is not None:
        best[1].save(out)
    return st
