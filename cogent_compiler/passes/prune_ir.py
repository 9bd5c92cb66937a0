"""The pruned model's IR, computed on the IR alone: shapes and costs after pruning, without torch.

A planner that searches prune ratios (the RL agent, random search, Optuna)
prices thousands of candidates; pruning and re-tracing the real model takes
seconds each.  ``prune_ir`` gives the same graph in milliseconds: every
convolution or linear layer whose output channels a group shrinks
(``PruneGroup.shrinks``) keeps that group's channel count, and the channel
dimension (axis 1) of every tensor is carried through the graph --
element-wise ops, pooling and batch norm keep their input's channels,
``cat`` adds them, a flatten scales its features with them, and a layer's
input channels are whatever its input tensor now has (a depthwise
convolution's groups follow).  MACs and parameter bytes of each layer scale
with its kept input and output channels.  Tensor and node names are those
of the unpruned graph, which re-tracing the pruned model reproduces, so
cuts carry over.  ``tests/passes/test_prune_ir.py`` checks it against
``PruneChannels`` on torchvision models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from cogent_compiler.ir import Graph, Node, TensorInfo
from cogent_compiler.passes.prune_channels import kept_channels
from cogent_compiler.passes.prune_groups import PruneAnalysis

__all__ = ["kept_per_group", "prune_ir"]


def kept_per_group(analysis: PruneAnalysis, ratios: Mapping[str, float], round_to: int = 8) -> dict[str, int]:
    """Channels each group keeps under ``ratios`` (as ``PruneChannels`` rounds them)."""
    return {g.name: kept_channels(g.channels, float(ratios.get(g.name, 0.0)), round_to) for g in analysis.groups}


def _with_dim1(t: TensorInfo, c: int) -> TensorInfo:
    if len(t.shape) < 2 or t.shape[1] == c:
        return t
    return dataclasses.replace(t, shape=(t.shape[0], c, *t.shape[2:]))


def prune_ir(graph: Graph, analysis: PruneAnalysis, kept: Mapping[str, int]) -> Graph:
    """``graph`` as it is after its groups keep ``kept`` channels (group name -> channels; groups not named keep all).

    ``graph`` is the IR traced from the module ``analysis`` describes (batch
    norm folded or not).  The result has no ``source`` or ``module``: it is
    for pricing, not for lowering.
    """
    out_channels: dict[str, int] = {}  # module path -> channels it keeps
    for g in analysis.groups:
        if g.name in kept and kept[g.name] != g.channels:
            for m in g.shrinks:
                out_channels[m] = kept[g.name]
    if not out_channels:
        return graph
    dim1: dict[str, int] = {t.name: t.shape[1] for t in graph.inputs if len(t.shape) > 1}
    orig = {name: t for name, t in graph.tensors.items()}
    nodes = []
    for n in graph.nodes:
        nodes.append(_prune_node(n, dim1, orig, out_channels))
    return Graph(graph.name, graph.inputs, tuple(nodes), graph.outputs)


def _prune_node(n: Node, dim1: dict[str, int], orig: Mapping[str, TensorInfo], out_channels: Mapping[str, int]) -> Node:
    """``n`` with its output channels, MACs and parameter bytes for the pruned inputs; records its outputs' channels in ``dim1``."""
    def now(name: str) -> int | None:
        return dim1.get(name)

    first = n.inputs[0] if n.inputs else None
    in_old = orig[first].shape[1] if first is not None and len(orig[first].shape) > 1 else None
    in_new = now(first) if first is not None else None
    outs = list(n.outputs)
    macs, params, attrs = n.macs, n.param_bytes, dict(n.attrs)
    if n.op in ("conv2d", "conv1d") and "out_channels" in attrs:
        cin, cout, groups = int(attrs["in_channels"]), int(attrs["out_channels"]), int(attrs.get("groups", 1))
        cin_new = in_new if in_new is not None else cin
        depthwise = groups > 1 and groups == cin == cout
        cout_new = cin_new if depthwise else out_channels.get(str(attrs.get("module", "")), cout)
        groups_new = cin_new if depthwise else groups
        per_group_in = (cin_new // groups_new) / (cin // groups)
        scale = (cout_new / cout) * per_group_in
        macs, params = round(macs * scale), round(params * scale) if not depthwise else round(params * cout_new / cout)
        attrs.update(in_channels=cin_new, out_channels=cout_new, groups=groups_new)
        outs[0] = _with_dim1(outs[0], cout_new)
    elif n.op == "linear" and "out_features" in attrs:
        fin, fout = int(attrs["in_features"]), int(attrs["out_features"])
        last = orig[first].shape[-1] if first is not None else fin
        fin_new = fin if in_new is None or len(orig[first].shape) != 2 else in_new  # type: ignore[index]
        fin_new = fin_new if last == fin else fin
        fout_new = out_channels.get(str(attrs.get("module", "")), fout)
        macs, params = round(macs * fin_new / fin * fout_new / fout), round(params * fin_new / fin * fout_new / fout)
        attrs.update(in_features=fin_new, out_features=fout_new)
        t = outs[0]
        outs[0] = dataclasses.replace(t, shape=(*t.shape[:-1], fout_new))
    elif n.op == "cat":
        if all(len(orig[i].shape) > 1 for i in n.inputs) and int(attrs.get("dim", 1)) in (1, -3):
            total = sum(now(i) or orig[i].shape[1] for i in n.inputs)
            outs[0] = _with_dim1(outs[0], total)
    elif n.op == "reshape" and first is not None and in_new is not None and in_old:
        t = outs[0]
        if len(t.shape) == 2 and len(orig[first].shape) >= 2 and t.shape[1] % in_old == 0:
            outs[0] = dataclasses.replace(t, shape=(t.shape[0], t.shape[1] // in_old * in_new))
        elif len(t.shape) >= 2 and t.shape[1] == in_old:
            outs[0] = _with_dim1(t, in_new)
    elif in_new is not None and in_old is not None:
        # element-wise, pooling, batch norm, mean: the channels of the first input
        ratio = in_new / in_old
        outs = [_with_dim1(t, in_new) if len(t.shape) > 1 and t.shape[1] == in_old else t for t in outs]
        macs, params = round(macs * ratio), round(params * ratio)
    for old, new in zip(n.outputs, outs):
        if len(new.shape) > 1 and new.shape != old.shape:
            dim1[new.name] = new.shape[1]
    if tuple(outs) == n.outputs and macs == n.macs and params == n.param_bytes and attrs == dict(n.attrs):
        return n
    return dataclasses.replace(n, outputs=tuple(outs), macs=macs, param_bytes=params, attrs=attrs)
