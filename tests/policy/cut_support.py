"""Brute force over cuts, shared by the planner tests."""

from __future__ import annotations

import itertools

from cogent_compiler.errors import IllegalPlanError
from cogent_compiler.passes import partition_at


def all_valid_cuts(graph):
    """Every ancestor-closed head set of ``graph``, as the set of tensors it must send."""
    names = [n.name for n in graph.nodes]
    for r in range(len(names) + 1):
        for head in itertools.combinations(names, r):
            head = set(head)
            if graph.ancestors([t.name for n in graph.nodes if n.name in head for t in n.outputs]) != head:
                continue
            produced = {t.name for t in graph.inputs} | {t.name for n in graph.nodes if n.name in head for t in n.outputs}
            sent = {i for n in graph.nodes if n.name not in head for i in n.inputs if i in produced}
            sent |= {o for o in graph.outputs if o in produced}
            yield tuple(sorted(sent)) if head != set(names) else tuple(graph.outputs)


def best_total_ms(graph, model) -> float:
    """The lowest predicted total of any valid cut of ``graph`` under ``model`` (what the min-cut planner must find)."""
    best = float("inf")
    for cut in all_valid_cuts(graph):
        try:
            best = min(best, model.estimate(partition_at(graph, cut)).total_ms)
        except IllegalPlanError:
            continue
    return best
