"""The first planner: best cut among the tensors that alone separate input from output.

Neurosurgeon-style: every single-tensor cut is scored with the latency model,
and device-only and edge-only are always computed beside it as baselines.
"""

from __future__ import annotations

import dataclasses
import logging

from cogent_compiler.cost.latency import LatencyModel
from cogent_compiler.errors import PlanError
from cogent_compiler.ir import Graph
from cogent_compiler.passes.partition import single_tensor_cuts
from cogent_compiler.policy.plan import Plan, PlanReport

__all__ = ["plan_single_cut", "baseline_plans"]

log = logging.getLogger(__name__)


def baseline_plans(graph: Graph, model: LatencyModel) -> dict[str, Plan]:
    """Device-only (everything on the device) and edge-only (raw input sent)."""
    return {
        "device_only": Plan.score("device_only", graph, tuple(graph.outputs), model),
        "edge_only": Plan.score("edge_only", graph, tuple(t.name for t in graph.inputs), model),
    }


def plan_single_cut(graph: Graph, model: LatencyModel) -> PlanReport:
    """Score every single-tensor cut and return the fastest, with the baselines.

    Ties go to the earliest cut (less work on the weak device).
    """
    baselines = baseline_plans(graph, model)
    candidates = [Plan.score(f"cut@{t}", graph, (t,), model) for t in single_tensor_cuts(graph)]
    if not candidates:
        raise PlanError(f"{graph.name}: no tensor alone separates the inputs from the outputs; use device-only or edge-only")
    best = min(candidates + list(baselines.values()), key=lambda p: p.predicted.total_ms)
    chosen = dataclasses.replace(best, name="single_cut")
    log.info("single-cut planner: %d candidates, best %s at %.2f ms", len(candidates), best.name, best.predicted.total_ms)
    return PlanReport(
        model=graph.name,
        chosen=chosen,
        baselines=baselines,
        candidates=tuple(candidates),
        conditions=model.to_json(),
    )
