"""Plans and the planners that make them."""

from __future__ import annotations

from cogent_compiler.policy.mincut import min_cut_tensors, plan_min_cut
from cogent_compiler.policy.plan import Plan, PlanReport
from cogent_compiler.policy.single_cut import baseline_plans, plan_single_cut

#: The default planner of the Python API.
plan = plan_single_cut

__all__ = ["Plan", "PlanReport", "baseline_plans", "min_cut_tensors", "plan", "plan_min_cut", "plan_single_cut"]
