"""Fold inference-mode batch norm into the convolution that feeds it.

``bn(conv(x, W, b))`` with frozen statistics equals ``conv(x, W', b')`` where
``W' = W * s`` and ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``
per output channel.  Folding before lowering removes a whole memory pass per
layer and lets the backend fuse the bias and activation into the convolution.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, ClassVar

from cogent_compiler.ir import Graph
from cogent_compiler.passes.base import Pass, PassContext, PassResult

__all__ = ["FoldBatchNorm", "fold_batch_norm_program"]


@dataclass(frozen=True)
class FoldBatchNorm(Pass):
    """Fold every ``conv2d -> batch_norm(eval)`` pair whose conv has no other user.

    Acts on torch programs; an ONNX graph is returned unchanged (TVM's ONNX
    importer folds constants itself).  The result is re-traced, so costs and
    names come from the folded program.
    """

    name: ClassVar[str] = "fold-batch-norm"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if graph.source is None or not type(graph.source).__module__.startswith("torch"):
            return PassResult(graph, False)
        if not any(n.op == "batch_norm" for n in graph.nodes):
            return PassResult(graph, False)
        from cogent_compiler.frontend import LoadedModel, trace

        program, folded = fold_batch_norm_program(graph.source, graph.inputs)
        if folded == 0:
            return PassResult(graph, False)
        # the eager module (batch norm unfolded) still computes the same function: it stays the graph's
        return PassResult(trace(LoadedModel(graph.name, "torch", program, f"{graph.name} (batch norm folded)", graph.module)), True)


def _attr(gm: Any, node: Any) -> Any:
    if node is None:
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def fold_batch_norm_program(ep: Any, inputs: Any) -> tuple[Any, int]:
    """Return ``(new ExportedProgram, number of batch norms folded)``."""
    import torch

    from cogent_compiler.passes.split import example_inputs

    aten = torch.ops.aten
    bn_ops = {aten._native_batch_norm_legit_no_training.default}
    gm = ep.module()
    graph = gm.graph
    folded = 0
    for bn in list(graph.nodes):
        if bn.op != "call_function" or bn.target not in bn_ops:
            continue
        conv = bn.args[0]
        if conv.op != "call_function" or conv.target is not aten.conv2d.default or len(conv.users) != 1:
            continue
        users = list(bn.users)
        if not all(u.target is operator.getitem and u.args[1] == 0 for u in users):
            continue
        w_node = conv.args[1]
        b_node = conv.args[2] if len(conv.args) > 2 else None
        gamma_n, beta_n, mean_n, var_n = bn.args[1:5]
        eps = float(bn.args[6])
        if any(a is not None and getattr(a, "op", None) != "get_attr" for a in (w_node, b_node, gamma_n, beta_n, mean_n, var_n)):
            continue
        with torch.no_grad():
            w = _attr(gm, w_node)
            mean, var = _attr(gm, mean_n), _attr(gm, var_n)
            gamma = _attr(gm, gamma_n) if gamma_n is not None else torch.ones_like(mean)
            beta = _attr(gm, beta_n) if beta_n is not None else torch.zeros_like(mean)
            b = _attr(gm, b_node) if b_node is not None else torch.zeros_like(mean)
            scale = gamma / torch.sqrt(var + eps)
            new_w = (w * scale.reshape(-1, *([1] * (w.dim() - 1)))).contiguous()
            new_b = (b - mean) * scale + beta
        # the folded weights live beside the convolution's own, so the IR keeps naming its layer (prune groups use it)
        owner_path = str(w_node.target).rpartition(".")[0]
        owner = gm.get_submodule(owner_path) if owner_path else gm
        stem = f"cogent_folded_{folded}"
        owner.register_parameter(f"{stem}_weight", torch.nn.Parameter(new_w, requires_grad=False))
        owner.register_parameter(f"{stem}_bias", torch.nn.Parameter(new_b, requires_grad=False))
        prefix = f"{owner_path}." if owner_path else ""
        with graph.inserting_before(conv):
            nw = graph.get_attr(f"{prefix}{stem}_weight")
            nb = graph.get_attr(f"{prefix}{stem}_bias")
        args = list(conv.args)
        while len(args) < 3:
            args.append(None)
        args[1], args[2] = nw, nb
        conv.args = tuple(args)
        for u in users:
            u.replace_all_uses_with(conv)
            graph.erase_node(u)
        graph.erase_node(bn)
        folded += 1
    if folded == 0:
        return ep, 0
    graph.eliminate_dead_code()
    _drop_unused_attributes(gm)
    gm.recompile()
    args = example_inputs(tuple(inputs))
    return torch.export.export(gm, args).run_decompositions({}), folded


def _drop_unused_attributes(gm: Any) -> None:
    """Delete parameters and buffers no get_attr node reads, so re-export does not carry them."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        delattr(owner, attr)
