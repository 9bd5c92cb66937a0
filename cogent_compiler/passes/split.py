"""Split a program at a partition into a head program and a tail program.

The decision (which tensors cross) is a ``Partition`` computed on the IR; this
module only applies it to the frontend's program.  For torch, head and tail
are re-exported as separate ``ExportedProgram``s; for ONNX, they are extracted
as separate ``ModelProto``s.  Either half is ``None`` when it has no node
(device-only or edge-only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cogent_compiler.errors import PassError
from cogent_compiler.ir import TensorInfo
from cogent_compiler.passes.partition import Partition

__all__ = ["SplitProgram", "split_program", "example_inputs"]


@dataclass(frozen=True)
class SplitProgram:
    """The halves of a model.

    ``head`` reads the model inputs and returns ``head_outputs``; ``tail``
    reads ``sent`` (in order) and returns ``tail_outputs``.
    """

    kind: str
    head: Any | None
    tail: Any | None
    model_inputs: tuple[TensorInfo, ...]
    head_outputs: tuple[TensorInfo, ...]
    sent: tuple[TensorInfo, ...]
    tail_outputs: tuple[TensorInfo, ...]
    model_outputs: tuple[TensorInfo, ...]


def split_program(partition: Partition) -> SplitProgram:
    """Apply ``partition`` to its graph's ``source`` program (torch or ONNX)."""
    g = partition.graph
    if g.source is None:
        raise PassError(f"{g.name}: the graph has no source program to split; trace it with cogent_compiler.trace")
    kind = _kind_of(g.source)
    if kind == "torch":
        head = None if partition.edge_only else _torch_subprogram(g.source, partition, head=True)
        tail = None if partition.device_only else _torch_subprogram(g.source, partition, head=False)
    else:
        head = None if partition.edge_only else _onnx_subprogram(g.source, partition, head=True)
        tail = None if partition.device_only else _onnx_subprogram(g.source, partition, head=False)
    return SplitProgram(
        kind=kind,
        head=head,
        tail=tail,
        model_inputs=g.inputs,
        head_outputs=partition.tensor_infos(partition.head_outputs),
        sent=partition.tensor_infos(partition.sent),
        tail_outputs=partition.tensor_infos(partition.tail_outputs),
        model_outputs=partition.tensor_infos(g.outputs),
    )


def _kind_of(program: Any) -> str:
    mod = type(program).__module__
    if mod.startswith("torch"):
        return "torch"
    if mod.startswith("onnx"):
        return "onnx"
    raise PassError(f"cannot split a program of type {type(program).__name__}; expected an ExportedProgram or ONNX ModelProto")


def example_inputs(infos: tuple[TensorInfo, ...], seed: int = 0) -> tuple[Any, ...]:
    """Random torch tensors with the given shapes and dtypes (seeded)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in infos:
        dtype = getattr(torch, t.dtype)
        if dtype.is_floating_point:
            out.append(torch.randn(t.shape, generator=gen, dtype=dtype))
        elif dtype == torch.bool:
            out.append(torch.randint(0, 2, t.shape, generator=gen).bool())
        else:
            out.append(torch.randint(0, 8, t.shape, generator=gen, dtype=dtype))
    return tuple(out)


def _torch_subprogram(ep: Any, partition: Partition, *, head: bool) -> Any:
    """Build and re-export the head or tail of ``ep`` as its own ExportedProgram."""
    import torch
    import torch.fx as fx

    gm = ep.module()
    by_name = {n.name: n for n in gm.graph.nodes}
    keep = set(partition.head_nodes if head else partition.tail_nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}

    if head:
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for n in placeholders:
            env[n] = graph.placeholder(n.name)
            env[n].meta = dict(n.meta)
        inputs = partition.graph.inputs
        outputs = partition.head_outputs
    else:
        for name in partition.sent:
            src = by_name[name]
            env[src] = graph.placeholder(name)
            env[src].meta = dict(src.meta)
        inputs = partition.tensor_infos(partition.sent)
        outputs = partition.tail_outputs

    def lookup(a: fx.Node) -> fx.Node:
        if a not in env:
            if a.op != "get_attr":
                raise PassError(f"{partition.graph.name}: split lost track of {a.name!r}; the cut is not closed")
            env[a] = graph.node_copy(a)
        return env[a]

    for n in gm.graph.nodes:
        if n.op == "call_function" and n.name in keep and n not in env:
            env[n] = graph.node_copy(n, lookup)
    graph.output(tuple(env[by_name[o]] for o in outputs))
    sub = fx.GraphModule(gm, graph)
    args = example_inputs(inputs)
    try:
        return torch.export.export(sub, args).run_decompositions({})
    except Exception as e:  # torch raises many types here; the message is what matters
        half = "head" if head else "tail"
        raise PassError(f"{partition.graph.name}: re-exporting the {half} failed: {str(e).splitlines()[0]}") from e


def _onnx_subprogram(model: Any, partition: Partition, *, head: bool) -> Any:
    """Extract the head or tail of an ONNX model as its own ModelProto."""
    import onnx
    import onnx.utils

    if head:
        ins = [t.name for t in partition.graph.inputs]
        outs = list(partition.head_outputs)
    else:
        ins = list(partition.sent)
        outs = list(partition.tail_outputs)
    try:
        sub = onnx.utils.Extractor(model).extract_model(ins, outs)
    except Exception as e:
        half = "head" if head else "tail"
        raise PassError(f"{partition.graph.name}: extracting the ONNX {half} failed: {str(e).splitlines()[0]}") from e
    onnx.checker.check_model(sub)
    return sub
