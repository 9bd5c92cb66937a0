"""Search baselines for the learned policy, at an equal budget of evaluated plans.

Each searcher proposes prune ratios, pairs them with the fastest candidate
cut under the conditions (``PlanSpace.best_cut``: exact over the candidates,
which only helps the baselines), and keeps the fastest plan within the
accuracy budget.  The budget is the number of plans evaluated (ratio vectors
proposed; accuracy is measured for each through the space's cached oracle):

- ``uniform``: the same ratio for every group, on an even grid over
  ``[0, max_ratio]``;
- ``random``: ratios drawn uniformly per group;
- ``optuna``: Optuna's TPE sampler over the per-group ratios and the cut
  position directly (the cut is its choice here, not ``best_cut``'s).

Every searcher returns a ``SearchResult``; the unpruned model at its best
cut is always a candidate (it needs no accuracy check), so a result is never
worse than partitioning alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cogent_compiler.policy.space import Conditions, PlanSpace

__all__ = ["SEARCHERS", "SearchResult", "optuna_search", "random_search", "uniform_search"]


@dataclass
class SearchResult:
    """The best feasible plan a searcher found, and what finding it cost."""

    method: str
    ratios: dict[str, float] = field(default_factory=dict)
    cut: tuple[str, ...] = ()
    latency_ms: float = float("inf")
    accuracy: float | None = None
    evaluations: int = 0
    wall_s: float = 0.0

    def offer(self, ratios: Mapping[str, float], cut: tuple[str, ...], latency_ms: float, accuracy: float | None) -> None:
        if latency_ms < self.latency_ms:
            self.ratios, self.cut, self.latency_ms, self.accuracy = dict(ratios), tuple(cut), latency_ms, accuracy

    def to_json(self) -> dict[str, Any]:
        return {"latency_ms": round(self.latency_ms, 3), "accuracy": self.accuracy, "evaluations": self.evaluations,
                "wall_s": round(self.wall_s, 2), "cut": list(self.cut), "ratios": {k: round(v, 3) for k, v in sorted(self.ratios.items())}}


def _run(method: str, space: PlanSpace, c: Conditions, proposals: Callable[[SearchResult], None]) -> SearchResult:
    t0 = time.perf_counter()
    result = SearchResult(method)
    cut, lat = space.best_cut({}, c)
    _, acc = space.feasible({}, c)
    result.offer({}, cut, lat.total_ms, acc)
    proposals(result)
    result.wall_s = time.perf_counter() - t0
    return result


def _try(space: PlanSpace, c: Conditions, ratios: Mapping[str, float], result: SearchResult) -> None:
    result.evaluations += 1
    ok, acc = space.feasible(ratios, c)
    if ok:
        cut, lat = space.best_cut(ratios, c)
        result.offer(ratios, cut, lat.total_ms, acc)


def uniform_search(space: PlanSpace, c: Conditions, budget: int, seed: int = 0) -> SearchResult:
    def go(result: SearchResult) -> None:
        for r in np.linspace(0.0, space.max_ratio, budget + 1)[1:]:
            _try(space, c, {g: float(r) for g in space.groups}, result)
    return _run("uniform", space, c, go)


def random_search(space: PlanSpace, c: Conditions, budget: int, seed: int = 0) -> SearchResult:
    rng = np.random.default_rng(seed)

    def go(result: SearchResult) -> None:
        for _ in range(budget):
            _try(space, c, {g: float(rng.uniform(0, space.max_ratio)) for g in space.groups}, result)
    return _run("random", space, c, go)


def optuna_search(space: PlanSpace, c: Conditions, budget: int, seed: int = 0, *, exact_cut: bool = False) -> SearchResult:
    """TPE over the ratios and the cut; ``exact_cut`` pairs each trial's ratios with their fastest cut instead (``--planner optuna``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def go(result: SearchResult) -> None:
        device_only = space.price({}, tuple(space.graph.outputs), c).total_ms

        def objective(trial: Any) -> float:
            ratios = {g: trial.suggest_float(f"r{i}", 0.0, space.max_ratio) for i, g in enumerate(space.groups)}
            result.evaluations += 1
            ok, acc = space.feasible(ratios, c)
            if exact_cut:
                cut, priced = space.best_cut(ratios, c)
                latency = priced.total_ms
            else:
                cut = space.cuts[trial.suggest_int("cut", 0, len(space.cuts) - 1)]
                latency = space.price(ratios, cut, c).total_ms
            if not ok:
                return 2.0 * device_only  # worse than any feasible plan
            result.offer(ratios, cut, latency, acc)
            return latency

        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
        study.optimize(objective, n_trials=budget)
    return _run("optuna", space, c, go)


SEARCHERS: dict[str, Callable[[PlanSpace, Conditions, int, int], SearchResult]] = {
    "uniform": uniform_search, "random": random_search, "optuna": optuna_search,
}
