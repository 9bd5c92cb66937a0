"""``PruneChannels``: remove channels per prune group, physically, as a plan's ratios say.

Each group (``passes.prune_groups``) named in ``ratios`` loses that fraction
of its channels -- the ones of least importance (``prune_groups.CRITERION``)
-- from every member at once, so the layers really shrink: a 64-channel
convolution pruned by 50 % becomes a 32-channel one, and every layer that
reads it takes 32 inputs.  The number of channels kept is rounded to a
multiple of ``round_to`` (8 by default: vector widths and TVM's tiles run a
multiple of 8 fastest), never below ``round_to``, and a group with no more than
``round_to`` channels is left whole.

The pass acts on the graph's eager module (a pruned deep copy; the original is
untouched), then exports and traces the pruned model again: the result is an
ordinary graph (with its pruned ``module``) that the planner, the split, TVM
and the bundle take like any other.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cogent_compiler.errors import IllegalPlanError
from cogent_compiler.ir import Graph
from cogent_compiler.passes.base import Pass, PassContext, PassResult
from cogent_compiler.passes.prune_groups import example_inputs, find_prune_groups, require_module

__all__ = ["PruneChannels", "kept_channels"]

log = logging.getLogger(__name__)


def kept_channels(channels: int, ratio: float, round_to: int = 8) -> int:
    """Channels a group of ``channels`` keeps when pruned by ``ratio``: a multiple of ``round_to``, at least ``round_to``."""
    if ratio <= 0 or channels <= round_to:
        return channels
    keep = round(channels * (1.0 - ratio) / round_to) * round_to
    return min(channels, max(round_to, keep))


@dataclass(frozen=True)
class PruneChannels(Pass):
    """Remove channels of each prune group by its ratio (group name -> fraction in [0, 1)); groups not named keep all."""

    name: ClassVar[str] = "prune-channels"
    ratios: Mapping[str, float] = field(default_factory=dict)
    round_to: int = 8

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        for group, r in self.ratios.items():
            if not 0.0 <= r < 1.0:
                raise IllegalPlanError(f"prune ratio {r} for group {group!r} is outside [0, 1); give the fraction of channels to remove, e.g. 0.3")
        if self.round_to < 1:
            raise IllegalPlanError(f"round_to must be a positive channel count, got {self.round_to}")
        if not any(r > 0 for r in self.ratios.values()):
            return PassResult(graph, modified=False)
        pruned, removed = prune_module(require_module(graph), example_inputs(graph), self.ratios, self.round_to)
        if ctx.progress is not None:
            ctx.progress(f"pruned {sum(removed.values())} channels in {sum(1 for v in removed.values() if v)} groups")
        if not any(removed.values()):
            return PassResult(graph, modified=False)
        return PassResult(retrace(graph, pruned), modified=True)


def prune_module(module: Any, inputs: tuple[Any, ...], ratios: Mapping[str, float], round_to: int = 8) -> tuple[Any, dict[str, int]]:
    """A pruned deep copy of ``module`` and the channels removed per group.

    After each group the model must still run and give outputs of the same
    shapes; a group whose pruning breaks it (a layer torch-pruning mishandles)
    is left whole, with a warning naming it and its layers, and the rest are
    pruned afresh without it.  Raises ``IllegalPlanError`` naming a group of
    ``ratios`` the model does not have.
    """
    import torch

    with torch.no_grad():
        expected = _shapes(module.eval()(*inputs))
    broken: set[str] = set()
    while True:
        model = copy.deepcopy(module).eval()
        analysis, dg = find_prune_groups(model, inputs)
        unknown = sorted(set(ratios) - {g.name for g in analysis.groups})
        if unknown:
            raise IllegalPlanError(f"{len(unknown)} prune ratios name no group of this model: {', '.join(unknown[:5])}; "
                                   "see `cogentc inspect MODEL --groups`")
        if dg is None:
            return model, {}
        failed = _prune_groups(model, dg, analysis, inputs, expected, ratios, round_to, broken)
        if failed is None:
            return model, {name: n for name, n in _removed(analysis, ratios, round_to).items() if name not in broken}
        name, why = failed
        members = ", ".join(analysis.group(name).members)
        log.warning("prune group %s left whole: removing its channels breaks the model (%s); its layers: %s", name, why, members)
        broken.add(name)


def _shapes(out: Any) -> list[tuple[int, ...]]:
    import torch

    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, (list, tuple)):
        return [s for o in out for s in _shapes(o)]
    return []


def _removed(analysis: Any, ratios: Mapping[str, float], round_to: int) -> dict[str, int]:
    return {g.name: g.channels - kept_channels(g.channels, float(ratios.get(g.name, 0.0)), round_to) for g in analysis.groups}


def _prune_groups(model: Any, dg: Any, analysis: Any, inputs: tuple[Any, ...], expected: list[tuple[int, ...]],
                  ratios: Mapping[str, float], round_to: int, skip: set[str]) -> tuple[str, str] | None:
    """Prune ``model`` group by group, checking it after each; the first group that breaks it and why, or ``None``."""
    import torch
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    ignored = [m for m, n in names.items() if n == analysis.output_layer]
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear]):
        name = names[group[0].dep.target.module]
        n = len(group[0].idxs)
        drop = n - kept_channels(n, float(ratios.get(name, 0.0)), round_to)
        if drop <= 0 or name in skip:
            continue
        idxs = torch.argsort(importance(group))[:drop].tolist()
        root = group[0].dep
        # the group was found before earlier groups were pruned; ask again for this root with the chosen channels
        fresh = dg.get_pruning_group(root.target.module, root.handler, idxs)
        try:
            if not dg.check_pruning_group(fresh):
                return name, "torch-pruning refuses it"
            fresh.prune()
            with torch.no_grad():
                got = _shapes(model(*inputs))
        except Exception as e:  # whatever torch-pruning or the model raise, the group is the culprit
            return name, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if got != expected:
            return name, f"the outputs became {got}, not {expected}"
        log.debug("group %s: %d -> %d channels", name, n, n - drop)
    return None


def retrace(graph: Graph, module: Any) -> Graph:
    """``module`` (graph's model, transformed) exported and traced again, under the graph's name."""
    from cogent_compiler.frontend import from_module, trace

    new = trace(from_module(module, example_inputs(graph), name=graph.name))
    return dataclasses.replace(new, name=graph.name)
