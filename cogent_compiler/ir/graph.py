"""The graph IR: a DAG of op nodes joined by named tensors.

The IR is plain Python (no torch, no tvm) so that analyses, planners and the
report can run anywhere.  A node consumes tensors by name and produces tensors;
each tensor has exactly one producer (a node, or the graph input list).
Parameters are not tensors of the graph: they are counted on the node that
owns them (``param_bytes``), because they never cross the device-edge link.

A ``Graph`` may carry ``source``: the frontend's own program (a torch
``GraphModule`` or an ONNX ``ModelProto``) whose tensor names equal the IR's, so
that transforms which need the real weights can act on it, and ``module``: the
eager ``nn.Module`` it was traced from, where there is one (structured pruning
needs it).  The IR never looks inside either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from cogent_compiler.errors import IRError

__all__ = ["DTYPE_BYTES", "TensorInfo", "Node", "Graph"]

#: Bytes per element of every dtype the IR knows.
DTYPE_BYTES: Mapping[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}


@dataclass(frozen=True)
class TensorInfo:
    """A named tensor value: its static shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 4)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TensorInfo:
        return cls(str(d["name"]), tuple(int(x) for x in d["shape"]), str(d["dtype"]))


@dataclass(frozen=True)
class Node:
    """One op.

    ``op`` is a normalised op kind (``conv2d``, ``linear``, ``relu``, ...);
    ``target`` is the frontend's own name for it (``aten.conv2d.default``,
    ``Conv``).  ``attrs`` holds what the cost model needs (kernel, stride,
    groups, ...), JSON-compatible values only.
    """

    name: str
    op: str
    target: str
    inputs: tuple[str, ...]
    outputs: tuple[TensorInfo, ...]
    macs: int = 0
    param_bytes: int = 0
    attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def output_bytes(self) -> int:
        return sum(t.nbytes for t in self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "target": self.target, "inputs": list(self.inputs),
                "outputs": [t.to_json() for t in self.outputs], "macs": self.macs, "param_bytes": self.param_bytes, "attrs": dict(self.attrs)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Node:
        return cls(str(d["name"]), str(d["op"]), str(d.get("target", "")), tuple(str(i) for i in d["inputs"]),
                   tuple(TensorInfo.from_json(t) for t in d["outputs"]), int(d.get("macs", 0)), int(d.get("param_bytes", 0)),
                   dict(d.get("attrs") or {}))


@dataclass(frozen=True)
class Graph:
    """A verified DAG of nodes in topological order."""

    name: str
    inputs: tuple[TensorInfo, ...]
    nodes: tuple[Node, ...]
    outputs: tuple[str, ...]
    source: Any = field(default=None, compare=False, repr=False)
    #: the eager ``torch.nn.Module`` the graph was traced from, where the frontend had one: what pruning acts on
    module: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.verify()

    # -- lookups -----------------------------------------------------------
    @cached_property
    def tensors(self) -> Mapping[str, TensorInfo]:
        """Every tensor by name: graph inputs and node outputs."""
        out: dict[str, TensorInfo] = {t.name: t for t in self.inputs}
        for n in self.nodes:
            for t in n.outputs:
                out[t.name] = t
        return out

    @cached_property
    def producers(self) -> Mapping[str, Node | None]:
        """Producer node of each tensor (``None`` for graph inputs)."""
        out: dict[str, Node | None] = {t.name: None for t in self.inputs}
        for n in self.nodes:
            for t in n.outputs:
                out[t.name] = n
        return out

    @cached_property
    def consumers(self) -> Mapping[str, tuple[Node, ...]]:
        """Nodes that read each tensor, in topological order."""
        out: dict[str, list[Node]] = {name: [] for name in self.tensors}
        for n in self.nodes:
            for i in dict.fromkeys(n.inputs):
                out[i].append(n)
        return {k: tuple(v) for k, v in out.items()}

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise IRError(f"graph {self.name!r} has no node {name!r}")

    # -- totals ------------------------------------------------------------
    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    @property
    def total_param_bytes(self) -> int:
        return sum(n.param_bytes for n in self.nodes)

    @property
    def input_bytes(self) -> int:
        return sum(t.nbytes for t in self.inputs)

    @property
    def output_bytes(self) -> int:
        return sum(self.tensors[o].nbytes for o in self.outputs)

    # -- structure ---------------------------------------------------------
    def ancestors(self, tensors: Iterable[str]) -> frozenset[str]:
        """Names of the nodes needed to compute ``tensors`` (inclusive of producers)."""
        seen: set[str] = set()
        stack = [self.producers[t] for t in tensors]
        while stack:
            n = stack.pop()
            if n is None or n.name in seen:
                continue
            seen.add(n.name)
            stack.extend(self.producers[i] for i in n.inputs)
        return frozenset(seen)

    def verify(self) -> None:
        """Check that the graph is a well-formed DAG in topological order.

        Raises ``IRError`` naming the first offending node or tensor.
        """
        defined: set[str] = set()
        for t in self.inputs:
            if t.name in defined:
                raise IRError(f"graph {self.name!r}: input {t.name!r} is defined twice")
            defined.add(t.name)
        names: set[str] = set()
        for n in self.nodes:
            if n.name in names:
                raise IRError(f"graph {self.name!r}: node name {n.name!r} is used twice")
            names.add(n.name)
            for i in n.inputs:
                if i not in defined:
                    raise IRError(
                        f"graph {self.name!r}: node {n.name!r} reads {i!r} before it is defined "
                        "(nodes must be in topological order)"
                    )
            for t in n.outputs:
                if t.name in defined:
                    raise IRError(f"graph {self.name!r}: tensor {t.name!r} has two producers")
                defined.add(t.name)
            if n.macs < 0 or n.param_bytes < 0:
                raise IRError(f"graph {self.name!r}: node {n.name!r} has a negative cost")
        for o in self.outputs:
            if o not in defined:
                raise IRError(f"graph {self.name!r}: output {o!r} is not produced by any node")
