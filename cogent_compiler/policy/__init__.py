"""Plans and the planners that make them."""

from __future__ import annotations

from cogent_compiler.policy.plan import Plan, PlanReport
from cogent_compiler.policy.single_cut import baseline_plans, plan_single_cut

#: The default planner of the Python API.
plan = plan_single_cut

__all__ = ["Plan", "PlanReport", "baseline_plans", "plan", "plan_single_cut"]
