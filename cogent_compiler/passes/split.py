"""Split a program at a partition into a head program and a tail program.

The decision (which tensors cross) is a ``Partition`` computed on the IR; this
module only applies it to the frontend's program.  For torch, head and tail
are re-exported as separate ``ExportedProgram``s; for ONNX, they are extracted
as separate ``ModelProto``s with onnx-graphsurgeon.  Any valid cut works:
several tensors may cross, model inputs may be among them (the tail reads them
raw) and the head may return model outputs beside the sent tensors.  Either
half is ``None`` when it has no node (device-only or edge-only).
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
        gm = g.source.module()  # unlifting is slow on big programs: once for both halves
        head = None if partition.edge_only else _torch_subprogram(gm, partition, head=True)
        tail = None if partition.device_only else _torch_subprogram(gm, partition, head=False)
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


def _torch_subprogram(gm: Any, partition: Partition, *, head: bool) -> Any:
    """Build and re-export the head or tail of ``gm`` (the source's ``module()``) as its own ExportedProgram.

    A boundary tensor may be an element of a tuple-valued op (``f"{node}.{i}"``
    in the IR, see ``frontend.torch_trace``): the head then returns
    ``node[i]`` and, in the tail, the ``getitem`` nodes that pick element ``i``
    read the placeholder instead.
    """
    import operator

    import torch
    import torch.fx as fx

    ir = partition.graph
    by_name = {n.name: n for n in gm.graph.nodes}
    keep = set(partition.head_nodes if head else partition.tail_nodes)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}

    def element(name: str) -> tuple[fx.Node, int] | None:
        """``(tuple-valued FX node, index)`` when tensor ``name`` is an element of a node's tuple output."""
        p = ir.producers[name]
        if p is None or name == p.name:
            return None
        return by_name[p.name], int(name[len(p.name) + 1 :])

    if head:
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                env[n] = graph.placeholder(n.name)
                env[n].meta = dict(n.meta)
        inputs = ir.inputs
        outputs = partition.head_outputs
    else:
        picks = {(n.args[0], n.args[1]): n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.getitem}
        for name in partition.sent:
            elem = element(name)
            src = by_name[name] if elem is None else picks.get(elem)
            # FX names are Python identifiers: ``node.0`` becomes ``node_0``
            ph = graph.placeholder(name if elem is None else name.replace(".", "_"))
            if src is not None:
                ph.meta = dict(src.meta)
                env[src] = ph
        inputs = partition.tensor_infos(partition.sent)
        outputs = partition.tail_outputs

    def lookup(a: fx.Node) -> fx.Node:
        if a not in env:
            if a.op != "get_attr":
                half = "head" if head else "tail"
                raise PassError(
                    f"{ir.name}: the {half} reads {a.name!r}, which is neither in it nor in the cut; the cut is not closed"
                )
            env[a] = graph.node_copy(a)
        return env[a]

    for n in gm.graph.nodes:
        if n.op == "call_function" and n.name in keep and n not in env:
            env[n] = graph.node_copy(n, lookup)

    def value(name: str) -> fx.Node:
        elem = element(name)
        if elem is None:
            return lookup(by_name[name])
        return graph.call_function(operator.getitem, (lookup(elem[0]), elem[1]))

    graph.output(tuple(value(o) for o in outputs))
    sub = fx.GraphModule(gm, graph)
    args = example_inputs(inputs)
    try:
        return torch.export.export(sub, args).run_decompositions({})
    except Exception as e:  # torch raises many types here; the message is what matters
        half = "head" if head else "tail"
        raise PassError(f"{ir.name}: re-exporting the {half} failed: {str(e).splitlines()[0]}") from e


def _onnx_subprogram(model: Any, partition: Partition, *, head: bool) -> Any:
    """Extract the head or tail of an ONNX model as its own ModelProto, with onnx-graphsurgeon.

    The half's graph inputs are the model inputs (head) or the sent tensors in
    order (tail), its outputs ``head_outputs`` or ``tail_outputs``;
    graphsurgeon's ``cleanup`` cuts the producers of the new inputs and drops
    every node the new outputs do not need.  Types and shapes of the boundary
    come from the IR, so they are static even where the model's value_info
    was not.  Constants and initializers a half reads go with it.
    """
    import numpy as np
    import onnx
    import onnx_graphsurgeon as gs

    g = partition.graph
    half = "head" if head else "tail"
    ins = g.inputs if head else partition.tensor_infos(partition.sent)
    outs = partition.tensor_infos(partition.head_outputs if head else partition.tail_outputs)
    try:
        graph = gs.import_onnx(model)  # a fresh copy each time: cleanup edits the graph in place
        tensors = graph.tensors()

        def variable(info: TensorInfo) -> Any:
            return tensors[info.name].to_variable(dtype=np.dtype(info.dtype), shape=list(info.shape))

        graph.inputs = [variable(t) for t in ins]
        graph.outputs = [variable(t) for t in outs]
        graph.cleanup(remove_unused_graph_inputs=False)
        # graphsurgeon pulls in whatever the outputs need; a half that computes another half's value
        # means the partition and the model disagree, which must not pass silently
        names = set(partition.head_nodes if head else partition.tail_nodes)
        own = {t.name for n in g.nodes if n.name in names for t in n.outputs}
        foreign = [t.name for n in graph.nodes if n.op != "Constant" for t in n.outputs if t.name and t.name not in own]
        if foreign:
            raise PassError(
                f"{g.name}: the ONNX {half} would also compute {foreign[:3]}, which the partition gives to the other "
                "half; the cut is not closed in the ONNX model"
            )
        graph.name = f"{graph.name or g.name}_{half}"
        sub = gs.export_onnx(graph)
        sub.ir_version = model.ir_version
        onnx.checker.check_model(sub)
    except PassError:
        raise
    except Exception as e:  # graphsurgeon and the checker raise many types; the message is what matters
        raise PassError(f"{g.name}: extracting the ONNX {half} failed: {str(e).splitlines()[0]}") from e
    return sub
