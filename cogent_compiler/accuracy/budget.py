"""Pruning held to an accuracy budget: measure, prune, fine-tune, measure again, repair or reject.

``prune_within_budget`` takes prune ratios (per group), real data and the
largest top-1 drop the user accepts.  It measures top-1 on the validation
split before pruning, prunes (``PruneChannels``), measures again, fine-tunes
within the step or time budget, and measures a third time.  If the drop after
fine-tuning exceeds the budget the plan is *repaired*: every ratio is scaled
by one common factor, found by bisection (``bisect_scale``: 1/2 first, then
halfway between the largest scale that fit and the smallest that did not),
the model pruned afresh from the original each time, up to ``attempts``
attempts in all; the largest scale that fit ships.  If none fits, the plan is
*rejected* and the model stays unpruned.  With ``stretch_to`` a plan that
fits is *stretched* the same way, upwards: scaled towards every ratio at
``stretch_to`` (each capped there, ``stretch_ceiling``) while it still fits, so a
plan found with a cheaper accuracy estimate (the learned policy's short
fine-tunes) reaches the edge of the budget the real check allows.  Every
attempt and its three accuracies are in the returned ``AccuracyReport``, which
``plan.json`` and the report show.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cogent_compiler.errors import DataError
from cogent_compiler.ir import Graph
from cogent_compiler.passes.prune_channels import PruneChannels

__all__ = ["AccuracyReport", "EvalFn", "bisect_scale", "prune_within_budget", "scale_ratios", "stretch_ceiling", "uniform_ratios",
           "within_budget"]

log = logging.getLogger(__name__)

#: A user's own evaluation: the model in, its top-1 accuracy in [0, 1] out.
EvalFn = Callable[[Any], float]


@dataclass(frozen=True)
class AccuracyReport:
    """What pruning did to accuracy.

    ``status``: ``accepted`` (the ratios asked for fit the budget), ``repaired``
    (smaller ratios did), ``stretched`` (larger ones did too), ``rejected`` (none did: the model is unpruned),
    ``unvalidated`` (pruned without data, as the user asked).  Accuracies are
    top-1 in [0, 1] on ``data``'s validation split, ``None`` where unmeasured.
    """

    status: str
    ratios: Mapping[str, float]
    data: str | None
    max_drop: float | None
    before: float | None = None
    pruned: float | None = None
    finetuned: float | None = None
    macs_before: int = 0
    macs_after: int = 0
    finetune: Mapping[str, Any] = field(default_factory=dict)
    attempts: tuple[Mapping[str, Any], ...] = ()

    @property
    def drop(self) -> float | None:
        """Top-1 lost by the model that ships (after fine-tuning), ``None`` if unmeasured."""
        after = self.finetuned if self.finetuned is not None else self.pruned
        return None if self.before is None or after is None else self.before - after

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "data": self.data, "max_accuracy_drop": self.max_drop, "top1_before": self.before,
                "top1_pruned": self.pruned, "top1_finetuned": self.finetuned, "drop": self.drop, "macs_before": self.macs_before,
                "macs_after": self.macs_after, "ratios": dict(sorted(self.ratios.items())), "finetune": dict(self.finetune),
                "attempts": [dict(a) for a in self.attempts]}


def within_budget(drop: float, max_drop: float) -> bool:
    """``drop <= max_drop`` up to float rounding: the budget says "at most", and 0.995 - 0.985 is 0.010000000000000009.

    Top-1 moves in steps of one sample (0.005 on 200), so a drop of exactly
    the budget is common, and a plain comparison rejected it or not by the
    last bit of two differences.
    """
    return drop <= max_drop + 1e-9


def uniform_ratios(groups: Any, ratio: float, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    """``ratio`` for every group of ``groups`` (a ``PruneAnalysis``), then ``overrides`` by group name."""
    out = {g.name: ratio for g in groups.groups} if ratio > 0 else {}
    out.update(overrides or {})
    return {k: v for k, v in out.items() if v > 0}


def bisect_scale(fits: Callable[[float], bool], attempts: int, top: float = 1.0) -> float | None:
    """The largest scale of the ratios found to fit in ``attempts`` tries: 1 first, then bisection; ``None`` if none fit.

    Scale 0 (unpruned) always fits and 1 is tried first; after a failure the
    next try is halfway between the largest scale known to fit and the
    smallest known not to, so a plan a little over the budget loses a little
    (0.75, 0.875 ...) where halving every ratio would lose half.  With
    ``top`` above 1 a plan that fits is stretched the same way: ``top`` next,
    then halfway between what fits and what does not.
    """
    lo, hi, scale, best = 0.0, max(top, 1.0), 1.0, None
    for _ in range(attempts):
        if fits(scale):
            best = lo = scale
            if scale >= hi:
                break
            scale = hi if scale == 1.0 else (lo + hi) / 2
        else:
            hi = scale
            scale = (lo + hi) / 2
    return best


def stretch_ceiling(ratios: Mapping[str, float], max_ratio: float, *, whole: bool = False) -> float:
    """The largest scale worth trying on ``ratios`` with each ratio capped at ``max_ratio``; 1 when nothing is pruned.

    Where the largest ratio reaches the cap, or, when it is there already
    (a scale that changes nothing) or with ``whole``, where the smallest
    pruned ratio does (every ratio at the cap).  The nearer ceiling keeps
    the plan's shape and bisects it finely; ``whole`` lets a plan with
    accuracy to spare grow all the way, for checks too costly to repeat
    (the compile's: each attempt is a full fine-tune).
    """
    pruned = [r for r in ratios.values() if r > 0]
    if not pruned:
        return 1.0
    peak = max(pruned)
    return max_ratio / peak if peak < max_ratio - 1e-9 and not whole else max(max_ratio / min(pruned), 1.0)


def scale_ratios(ratios: Mapping[str, float], k: float, max_ratio: float) -> dict[str, float]:
    """Every ratio times ``k``; scaled up (``k`` > 1), each stops at ``max_ratio``."""
    return {g: min(r * k, max_ratio) if k > 1.0 else r * k for g, r in ratios.items()}


def prune_within_budget(
    graph: Graph,
    ratios: Mapping[str, float],
    data: Any,
    max_drop: float,
    *,
    finetune_steps: int | None = None,
    finetune_time_s: float | None = None,
    attempts: int = 4,
    stretch_to: float | None = None,
    say: Callable[[str], None] = lambda msg: None,
) -> tuple[Graph, AccuracyReport]:
    """Prune ``graph`` by ``ratios`` within ``max_drop`` of top-1 on ``data``; the graph that ships and what happened.

    ``data`` is a ``Dataset`` (fine-tuned on its training split, measured on
    its validation split) or an ``EvalFn`` (measures only: no fine-tuning).
    ``stretch_to`` (a ratio in (0, 1)) stretches a plan that fits towards it
    within the same ``attempts``; ``None`` ships it as asked.
    """
    from cogent_compiler.accuracy.data import Dataset
    from cogent_compiler.accuracy.train import evaluate, finetune

    if not isinstance(data, Dataset) and not callable(data):
        raise DataError(f"data must be a Dataset, a DataLoader or an evaluation function model -> top-1, got {type(data).__name__}")
    name = data.name if isinstance(data, Dataset) else getattr(data, "__name__", "evaluation function")

    def measure(module: Any) -> float:
        if isinstance(data, Dataset):
            return float(evaluate(module, data.x_val, data.y_val))
        acc = float(data(module))
        if not 0.0 <= acc <= 1.0:
            raise DataError(f"the evaluation function returned {acc}; it must return top-1 accuracy as a fraction in [0, 1]")
        return acc

    t0 = time.perf_counter()
    before = measure(graph.module)
    say(f"top-1 before pruning {before:.4f} on {name} ({time.perf_counter() - t0:.1f}s)")
    tried: list[dict[str, Any]] = []
    if isinstance(data, Dataset) and finetune_steps is None and finetune_time_s is None:
        finetune_steps = 300
    found: dict[float, tuple[Graph, dict[str, float], float, float | None, dict[str, Any]]] = {}

    def fits(scale: float) -> bool:
        attempt = len(tried) + 1
        current = scale_ratios(ratios, scale, stretch_to or 1.0)  # without stretch_to no scale exceeds 1
        pruned = PruneChannels(current)(graph)
        acc_pruned = measure(pruned.module)
        say(f"attempt {attempt}: ratios x{scale:g}, pruned to {pruned.total_macs / max(graph.total_macs, 1):.0%} of the MACs, "
            f"top-1 {acc_pruned:.4f}")
        stats: dict[str, Any] = {}
        acc_ft = None
        if pruned.module is graph.module:  # the user's model itself: never fine-tuned in place
            say(f"attempt {attempt}: these ratios remove no channel (channels are kept in multiples of 8, groups of 8 or fewer "
                "whole): the model is unchanged")
        elif isinstance(data, Dataset):
            stats = finetune(pruned.module, data, steps=finetune_steps, time_s=finetune_time_s, progress=say)
            acc_ft = measure(pruned.module)
            say(f"attempt {attempt}: top-1 after fine-tuning {acc_ft:.4f} ({stats.get('steps')} steps, {stats.get('seconds', 0):.1f}s)")
        after = acc_ft if acc_ft is not None else acc_pruned
        tried.append({"scale": scale, "ratios": dict(sorted(current.items())), "macs": pruned.total_macs, "top1_pruned": acc_pruned,
                      "top1_finetuned": acc_ft, "drop": before - after})
        if not within_budget(before - after, max_drop):
            say(f"attempt {attempt}: top-1 drop {before - after:.4f} exceeds --max-accuracy-drop {max_drop}")
            return False
        found[scale] = (pruned, current, acc_pruned, acc_ft, stats)
        return True

    scale = bisect_scale(fits, attempts, stretch_ceiling(ratios, stretch_to, whole=True) if stretch_to is not None else 1.0)
    if scale is not None:
        pruned, current, acc_pruned, acc_ft, stats = found[scale]
        status = "accepted" if scale == 1.0 else "repaired" if scale < 1.0 else "stretched"
        if status == "stretched":
            say(f"stretched: the ratios asked for fit (top-1 drop {tried[0]['drop']:.4f}); scaled by {scale:.3g} (each at most "
                f"{stretch_to}) they still do, losing {before - (acc_ft if acc_ft is not None else acc_pruned):.4f}")
        if status == "repaired":
            say(f"repaired: the ratios asked for lost {tried[0]['drop']:.4f} top-1 (> {max_drop}); scaled by {scale:g} they lose "
                f"{before - (acc_ft if acc_ft is not None else acc_pruned):.4f}")
        shipped = pruned
        if stats:  # fine-tuning changed the weights PruneChannels exported: export the fine-tuned model (in eval mode)
            from cogent_compiler.passes.prune_channels import retrace

            shipped = retrace(graph, pruned.module.eval())
        return shipped, AccuracyReport(status, current, name, max_drop, before, acc_pruned, acc_ft, graph.total_macs,
                                       shipped.total_macs, stats, tuple(tried))
    say(f"rejected: no pruning within --max-accuracy-drop {max_drop} after {attempts} attempts; the model ships unpruned")
    return graph, AccuracyReport("rejected", {}, name, max_drop, before, None, None, graph.total_macs, graph.total_macs, {}, tuple(tried))
