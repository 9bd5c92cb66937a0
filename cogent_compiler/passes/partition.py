"""Cuts and partitions of a graph, computed on the IR alone.

A *cut* is a set of tensors.  The *head* is every node needed to compute the
cut's tensors; the *tail* is every other node the model's outputs need.  A cut
is valid when the tail can run from the cut's tensors alone: every value a
tail node reads that the head produces (or that is a model input) is in the
cut.  The cut may contain model inputs (they are sent raw; an empty head is
edge-only) and model outputs (the head computes and returns them; a tail with
nothing left to do is device-only).  Several tensors may cross: every
topological prefix of the nodes gives such a cut (``frontier_cut``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cogent_compiler.errors import IllegalPlanError
from cogent_compiler.ir import Graph, Node, TensorInfo

__all__ = ["Partition", "frontier_cut", "frontier_cuts", "partition_at", "single_tensor_cuts"]


@dataclass(frozen=True)
class Partition:
    """The two halves a cut makes, as names of the graph's nodes and tensors.

    ``sent`` are the cut's tensors in a stable order (the graph's topological
    order, inputs first): what the device sends and the tail reads.  A model
    output in the cut that no tail node reads is not sent: the head computes
    and returns it.
    ``head_outputs`` are what the head returns: the sent tensors it produces,
    then model outputs it produces that are not sent.  ``tail_outputs`` are the
    model outputs the tail produces.
    """

    graph: Graph
    head_nodes: tuple[str, ...]
    tail_nodes: tuple[str, ...]
    sent: tuple[str, ...]
    head_outputs: tuple[str, ...]
    tail_outputs: tuple[str, ...]

    @property
    def device_only(self) -> bool:
        return not self.tail_nodes

    @property
    def edge_only(self) -> bool:
        return not self.head_nodes

    def tensor_infos(self, names: Iterable[str]) -> tuple[TensorInfo, ...]:
        return tuple(self.graph.tensors[n] for n in names)

    @property
    def head_macs(self) -> int:
        return sum(self.graph.node(n).macs for n in self.head_nodes)

    @property
    def tail_macs(self) -> int:
        return sum(self.graph.node(n).macs for n in self.tail_nodes)

    @property
    def sent_bytes(self) -> int:
        """Bytes the device sends; zero when nothing runs on the edge."""
        if self.device_only:
            return 0
        return sum(self.graph.tensors[n].nbytes for n in self.sent)

    @property
    def returned_bytes(self) -> int:
        """Bytes of model outputs the edge sends back."""
        return sum(self.graph.tensors[n].nbytes for n in self.tail_outputs)


def _order(graph: Graph) -> dict[str, int]:
    """Position of every tensor in topological order (inputs first)."""
    return {name: i for i, name in enumerate(graph.tensors)}


def partition_at(graph: Graph, cut: Iterable[str]) -> Partition:
    """Split ``graph`` at ``cut`` (a set of tensor names).

    Raises ``IllegalPlanError`` naming the tensor when the cut names an unknown
    tensor, or when some tail node needs a head value that is not in the cut.
    """
    cut_set = set(cut)
    if not cut_set:
        raise IllegalPlanError(f"{graph.name}: the cut is empty; name at least one tensor (a model input means edge-only)")
    for t in sorted(cut_set):
        if t not in graph.tensors:
            raise IllegalPlanError(f"{graph.name}: cut tensor {t!r} is not a tensor of the graph; see `cogentc inspect`")
    head = graph.ancestors(cut_set)
    needed = graph.ancestors(graph.outputs) - head
    tail = [n for n in graph.nodes if n.name in needed]
    head_values = {t.name for t in graph.inputs} | {
        t.name for n in graph.nodes if n.name in head for t in n.outputs
    }
    for n in tail:
        for i in n.inputs:
            if i in head_values and i not in cut_set:
                raise IllegalPlanError(
                    f"{graph.name}: tail node {n.name!r} reads {i!r}, which the head computes but the cut "
                    f"does not send; add {i!r} to the cut"
                )
    pos = _order(graph)
    # a model output in the cut is the head's to return; it crosses only if the tail reads it
    tail_reads = {i for n in tail for i in n.inputs}
    outputs = set(graph.outputs)
    sent = tuple(sorted((t for t in cut_set if t not in outputs or t in tail_reads), key=pos.__getitem__))
    head_set = set(head)
    head_outputs = [t for t in sent if graph.producers[t] is not None and graph.producers[t].name in head_set]  # type: ignore[union-attr]
    for o in graph.outputs:
        p = graph.producers[o]
        if p is not None and p.name in head_set and o not in head_outputs:
            head_outputs.append(o)
    tail_outputs = tuple(o for o in graph.outputs if o not in head_values)
    return Partition(
        graph=graph,
        head_nodes=tuple(n.name for n in graph.nodes if n.name in head_set),
        tail_nodes=tuple(n.name for n in tail),
        sent=sent if tail else (),
        head_outputs=tuple(head_outputs),
        tail_outputs=tail_outputs,
    )


def _is_splittable_tensor(graph: Graph, name: str) -> bool:
    """A tensor a frontend can cut at: a graph input or the sole output of its node."""
    p: Node | None = graph.producers[name]
    return p is None or (len(p.outputs) == 1 and p.outputs[0].name == name)


def single_tensor_cuts(graph: Graph) -> tuple[str, ...]:
    """Every tensor that, alone, separates the model's inputs from its outputs.

    Returned in topological order.  For a single-input model the input itself
    is first (edge-only) and, for a single-output model, the output is last
    (device-only).
    """
    cuts: list[str] = []
    input_names = {t.name for t in graph.inputs}
    for name in graph.tensors:
        if not _is_splittable_tensor(graph, name):
            continue
        head = graph.ancestors([name])
        if name in input_names and len(graph.inputs) > 1:
            continue
        ok = True
        for n in graph.nodes:
            if n.name in head:
                continue
            for i in n.inputs:
                p = graph.producers[i]
                from_head = p is None or p.name in head
                if from_head and i != name:
                    ok = False
                    break
            if not ok:
                break
        # model outputs computed on the device other than the cut would also cross
        if ok and any(
            o != name and graph.producers[o] is not None and graph.producers[o].name in head  # type: ignore[union-attr]
            for o in graph.outputs
        ):
            ok = False
        if ok:
            cuts.append(name)
    return tuple(cuts)


def frontier_cut(graph: Graph, position: int) -> tuple[str, ...]:
    """The cut between the first ``position`` nodes (topological order) and the rest.

    Every prefix of the node order is a valid cut: the tensors it sends are the
    values live at that point -- model inputs and tensors the prefix produces
    that some later node reads -- so a frontier crosses every long skip that
    spans it.  Model outputs the prefix produces are in the cut too: the head
    computes and returns them (they are sent only if a later node reads them).
    ``position`` 0 is edge-only (the model inputs the nodes read), ``len(nodes)``
    device-only (the model outputs).  The result is in topological order,
    inputs first.  Raises ``IllegalPlanError`` for a position outside
    ``0..len(graph.nodes)``.
    """
    if not 0 <= position <= len(graph.nodes):
        raise IllegalPlanError(
            f"{graph.name}: frontier position {position} is outside 0..{len(graph.nodes)} (the number of nodes)"
        )
    done = {t.name for t in graph.inputs}
    for n in graph.nodes[:position]:
        done.update(t.name for t in n.outputs)
    later = {i for n in graph.nodes[position:] for i in n.inputs}
    outputs = set(graph.outputs)
    return tuple(t for t in graph.tensors if t in done and (t in later or t in outputs))


def frontier_cuts(graph: Graph, every: int = 1) -> tuple[tuple[str, ...], ...]:
    """The distinct ``frontier_cut``s at positions ``0, every, 2*every, ...`` and ``len(nodes)``.

    A cut equal to the previous one is left out, so the result runs from
    edge-only to device-only without repeats.  ``every`` must be positive.
    """
    if every < 1:
        raise IllegalPlanError(f"{graph.name}: frontier step must be a positive number of nodes, got {every}")
    positions = [*range(0, len(graph.nodes), every), len(graph.nodes)]
    cuts: list[tuple[str, ...]] = []
    for p in positions:
        cut = frontier_cut(graph, p)
        if not cuts or cuts[-1] != cut:
            cuts.append(cut)
    return tuple(cuts)
