"""Prune groups: the layers that must lose the same channels, found by torch-pruning's DependencyGraph.

Removing output channel ``k`` of a convolution also removes channel ``k`` of
the batch norm after it and input channel ``k`` of every layer that reads it;
across a residual add or a concatenation, every layer feeding the add loses
the same channels; a depthwise convolution loses the channels it is fed.
torch-pruning (DepGraph, Fang et al. 2023) traces the eager model and groups
these couplings; each group here is one such set, named after its root layer
(the convolution or linear layer whose output channels it prunes), with its
members, its channel count and the importance criterion that ranks its
channels (the L2 norm of each channel's weights over the whole group).

The model's output layer (the last convolution or linear layer to run, the
classifier) is never pruned: its channels are the classes.  Layers with
parameters that torch-pruning cannot place in a group are left out, each
named in a warning; a model torch-pruning cannot trace at all has no groups,
with a warning that says why -- never a crash.

This is an analysis on the eager ``nn.Module`` (``Graph.module``); the IR
nodes of each group's layers are found by their module path
(``Node.attrs["module"]``, recorded by the torch frontend).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cogent_compiler.errors import PassError
from cogent_compiler.ir import Graph

if TYPE_CHECKING:
    import torch

__all__ = ["CRITERION", "PruneAnalysis", "PruneGroup", "example_inputs", "find_prune_groups", "prune_groups_of", "require_module"]

log = logging.getLogger(__name__)

#: How channels are ranked within a group (torch-pruning's ``GroupMagnitudeImportance(p=2)``).
CRITERION = "group L2 magnitude"


@dataclass(frozen=True)
class PruneGroup:
    """Coupled layers that lose the same channels.

    ``name`` is the root layer's module path; ``members`` every layer with
    parameters that loses channels with it (output channels, or input channels
    for the layers that read them); ``channels`` how many the group has;
    ``nodes`` the IR nodes (convolutions, linear layers) among the members;
    ``shrinks`` the members whose *output* channels go (the others lose
    input channels: they read the group's tensors).
    """

    name: str
    members: tuple[str, ...]
    channels: int
    criterion: str = CRITERION
    nodes: tuple[str, ...] = ()
    shrinks: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "channels": self.channels, "criterion": self.criterion, "members": list(self.members),
                "nodes": list(self.nodes), "shrinks": list(self.shrinks)}


@dataclass(frozen=True)
class PruneAnalysis:
    """A model's prune groups, the output layer kept whole, and the layers left out (with why)."""

    groups: tuple[PruneGroup, ...]
    output_layer: str | None = None
    left_out: dict[str, str] = field(default_factory=dict)

    def group(self, name: str) -> PruneGroup:
        for g in self.groups:
            if g.name == name:
                return g
        known = ", ".join(g.name for g in self.groups[:8]) + (" ..." if len(self.groups) > 8 else "")
        raise PassError(f"no prune group {name!r}; the groups are named after their root layer: {known} (see `cogentc inspect --groups`)")

    def to_json(self) -> dict[str, Any]:
        return {"groups": [g.to_json() for g in self.groups], "output_layer": self.output_layer, "left_out": dict(self.left_out)}


def example_inputs(graph: Graph) -> tuple[torch.Tensor, ...]:
    """Seeded inputs of the graph's shapes and dtypes (uint8 pixels as integers 0..255)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    out = []
    for t in graph.inputs:
        dtype = getattr(torch, t.dtype)
        if dtype.is_floating_point:
            out.append(torch.rand(t.shape, generator=gen, dtype=dtype))
        else:
            out.append(torch.randint(0, 256 if t.dtype == "uint8" else 2, t.shape, generator=gen, dtype=dtype))
    return tuple(out)


def _layers(module: torch.nn.Module, inputs: Sequence[torch.Tensor]) -> tuple[list[str], set[str]]:
    """(convolution and linear layers in the order they run, every leaf module that runs)."""
    import torch

    names = {m: n for n, m in module.named_modules()}
    order: list[str] = []
    ran: set[str] = set()

    def hook(m: torch.nn.Module, *_: Any) -> None:
        ran.add(names[m])
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear)):
            order.append(names[m])

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return order, ran


def find_prune_groups(module: torch.nn.Module, inputs: Sequence[torch.Tensor], graph: Graph | None = None) -> tuple[PruneAnalysis, Any]:
    """Group ``module``'s coupled layers; return the analysis and torch-pruning's ``DependencyGraph`` (``None`` if it failed).

    ``module`` is left unchanged (in eval mode).  Groups come in the order
    their root layers run (input to output).  With ``graph`` (the IR traced
    from the same module) each group lists its IR nodes.
    """
    import torch
    import torch_pruning as tp

    module.eval()
    try:
        order, ran = _layers(module, inputs)
    except Exception as e:
        raise PassError(f"the model does not run on inputs of its own shapes ({type(e).__name__}: {e})") from e
    output_layer = order[-1] if order else None
    names = {m: n for n, m in module.named_modules()}
    try:
        dg = tp.DependencyGraph().build_dependency(module, example_inputs=tuple(inputs) if len(inputs) > 1 else inputs[0], verbose=False)
        ignored = [m for m, n in names.items() if n == output_layer]
        raw = list(dg.get_all_groups(ignored_layers=ignored, root_module_types=[torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear]))
    except Exception as e:  # torch-pruning raises many kinds; the model stays usable, unpruned
        log.warning("no prune groups: torch-pruning could not trace the model (%s: %s); it is partitioned unpruned",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return PruneAnalysis((), output_layer, {}), None
    by_module: dict[str, list[str]] = {}
    if graph is not None:
        for n in graph.nodes:
            if "module" in n.attrs:
                by_module.setdefault(str(n.attrs["module"]), []).append(n.name)
    groups = []
    covered: set[str] = set()
    run_index = {n: i for i, n in enumerate(order)}
    raw.sort(key=lambda g: run_index.get(names.get(g[0].dep.target.module, ""), len(order)))  # from input to output
    owner = {id(p): n for m, n in names.items() for p in m.parameters(recurse=False)}  # unwrapped parameters belong to a module too
    for g in raw:
        root = g[0].dep.target.module
        members = list(dict.fromkeys(_member(d.target.module, names, owner) for d, _ in g))
        members = [m for m in members if m]
        shrinks = [m for m in dict.fromkeys(_member(d.target.module, names, owner) for d, _ in g
                                            if getattr(d.handler, "__name__", "") == "prune_out_channels") if m]
        covered.update(members)
        nodes = tuple(n for m in members for n in by_module.get(m, ()))
        groups.append(PruneGroup(names[root], tuple(members), len(g[0].idxs), nodes=nodes, shrinks=tuple(shrinks)))
    left_out = {}
    for m, n in names.items():
        if n in ran and n not in covered and n != output_layer and any(True for _ in m.parameters(recurse=False)):
            left_out[n] = f"{type(m).__name__}: torch-pruning places it in no group"
    if left_out:
        log.warning("left out of pruning (%d layers torch-pruning cannot handle): %s", len(left_out), ", ".join(sorted(left_out)))
    return PruneAnalysis(tuple(groups), output_layer, left_out), dg


def _member(target: Any, names: dict[Any, str], owner: dict[int, str]) -> str | None:
    """The module path of a dependency target with parameters: a layer, or the module owning a bare parameter."""
    import torch

    if isinstance(target, torch.nn.Parameter):
        return owner.get(id(target))
    if isinstance(target, torch.nn.Module) and target in names and any(True for _ in target.parameters(recurse=False)):
        return names[target]
    return None


def require_module(graph: Graph) -> Any:
    """``graph``'s eager module; ``PassError`` if it has none (loaded from .pt2, TorchScript or ONNX)."""
    if graph.module is None:
        raise PassError(
            f"{graph.name}: pruning needs the model as a PyTorch nn.Module; load it as package.module:factory, through the Python "
            "API (from_module) or as a trusted pickle (--trust-pickle) -- a .pt2, TorchScript or ONNX file is partitioned unpruned"
        )
    return graph.module


def prune_groups_of(graph: Graph) -> PruneAnalysis:
    """The prune groups of ``graph``'s eager module; ``PassError`` if the graph has none (``require_module``)."""
    return find_prune_groups(require_module(graph), example_inputs(graph), graph)[0]
