"""A first latency model from user-supplied speeds and link figures.

It is an *estimate*: compute time is MACs divided by a throughput the user
states (``--device-gmacs``) plus a fixed cost per op, and transfer time is
bytes over bandwidth (up and down separately) plus one round trip plus the
runtime's per-message overhead.  Edge compute is multiplied by ``edge_load``,
the slowdown of a shared, busy edge (1.0: idle).  A measured profile replaces
the compute part (``predictor.ProfileComputeModel``, any ``ComputeCost``) and
a measured link profile (``cost.link``, ``cogentc profile --peer``) the
network part; every number this model produces is labelled ``predicted``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cogent_compiler.errors import CogentError
from cogent_compiler.ir import Node, TensorInfo
from cogent_compiler.passes.partition import Partition

__all__ = ["ComputeCost", "ComputeModel", "Link", "Latency", "LatencyModel", "DEFAULT_GMACS", "TRANSFER_DTYPES"]

#: Default throughputs (GMAC/s) per target kind when the user gives none: rough
#: figures for a Cortex-A72-class board, a desktop core and a datacenter GPU.
DEFAULT_GMACS: Mapping[str, float] = {"arm": 2.0, "llvm": 10.0, "cuda": 500.0}

#: How float32 tensors may cross the link: ``auto`` (float16 where that is
#: faster, casts included), always ``float16``, or always ``float32`` (exact).
#: Other dtypes (a uint8 image input, integer ids) always cross as they are.
TRANSFER_DTYPES = ("auto", "float32", "float16")


class ComputeCost(Protocol):
    """What ``LatencyModel`` needs of a compute model: ``ComputeModel`` or ``ProfileComputeModel``.

    ``nodes_ms`` gets the nodes of one half together (so a model may account
    for fusion between them); ``node_ms`` one node as a kernel of its own.
    """

    @property
    def name(self) -> str: ...

    @property
    def source(self) -> str: ...

    def node_ms(self, node: Node) -> float: ...

    def nodes_ms(self, nodes: Iterable[Node]) -> float: ...

    def cast_ms(self, numel: int, in_bytes: int, out_bytes: int) -> float:
        """Time to convert a tensor of ``numel`` elements between dtypes (the runtime's transfer encoding)."""
        ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ComputeModel:
    """Time of an op: ``macs / (gmacs_per_s * 1e9)`` plus ``op_overhead_us``."""

    name: str
    gmacs_per_s: float
    op_overhead_us: float = 10.0
    source: str = "flags"

    def __post_init__(self) -> None:
        if self.gmacs_per_s <= 0:
            raise CogentError(f"{self.name}: throughput must be positive, got {self.gmacs_per_s} GMAC/s")

    def node_ms(self, node: Node) -> float:
        return node.macs / (self.gmacs_per_s * 1e6) + self.op_overhead_us / 1e3

    def nodes_ms(self, nodes: Iterable[Node]) -> float:
        return sum(self.node_ms(n) for n in nodes)

    def cast_ms(self, numel: int, in_bytes: int, out_bytes: int) -> float:
        """One element converted counts as one MAC (an estimate, like the rest of this model)."""
        return numel / (self.gmacs_per_s * 1e6) + self.op_overhead_us / 1e3

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "gmacs_per_s": self.gmacs_per_s, "op_overhead_us": self.op_overhead_us, "source": self.source}


@dataclass(frozen=True)
class Link:
    """A network link between device and edge.

    ``bandwidth_bps`` is the uplink (device to edge) in bit/s and
    ``bandwidth_down_bps`` the downlink (``None``: the same as the uplink);
    ``rtt_s`` the network round trip and ``per_message_s`` what one
    request/response costs the runtime beyond it (framing, socket calls, the
    edge's dispatch).  ``source`` says where the figures come from.
    """

    bandwidth_bps: float
    rtt_s: float
    per_message_s: float = 0.0
    bandwidth_down_bps: float | None = None
    source: str = "flags"

    def __post_init__(self) -> None:
        down = self.down_bps
        if self.bandwidth_bps <= 0 or down <= 0 or self.rtt_s < 0 or self.per_message_s < 0:
            raise CogentError(
                f"link needs positive bandwidths and a non-negative RTT and per-message overhead, got up {self.bandwidth_bps} bit/s, "
                f"down {down} bit/s, RTT {self.rtt_s} s, per message {self.per_message_s} s"
            )

    @property
    def down_bps(self) -> float:
        """The downlink bandwidth (edge to device) in bit/s."""
        return self.bandwidth_bps if self.bandwidth_down_bps is None else self.bandwidth_down_bps

    def up_ms(self, nbytes: int) -> float:
        """Time to send ``nbytes`` from device to edge, without the round trip."""
        return nbytes * 8 / self.bandwidth_bps * 1e3

    def down_ms(self, nbytes: int) -> float:
        """Time to send ``nbytes`` from edge to device, without the round trip."""
        return nbytes * 8 / self.down_bps * 1e3

    def transfer_ms(self, up_bytes: int, down_bytes: int) -> float:
        """One request/response: both payloads over the link, one round trip and the per-message overhead."""
        return self.up_ms(up_bytes) + self.down_ms(down_bytes) + (self.rtt_s + self.per_message_s) * 1e3

    def to_json(self) -> dict[str, Any]:
        return {"bandwidth_mbps": self.bandwidth_bps / 1e6, "bandwidth_down_mbps": self.down_bps / 1e6, "rtt_ms": self.rtt_s * 1e3,
                "per_message_ms": self.per_message_s * 1e3, "source": self.source}


@dataclass(frozen=True)
class Latency:
    """Predicted end-to-end latency of one inference, split by where it is spent."""

    device_ms: float
    transfer_ms: float
    edge_ms: float

    @property
    def total_ms(self) -> float:
        return self.device_ms + self.transfer_ms + self.edge_ms

    def to_json(self) -> dict[str, float]:
        return {"device_ms": self.device_ms, "transfer_ms": self.transfer_ms, "edge_ms": self.edge_ms, "total_ms": self.total_ms}


@dataclass(frozen=True)
class LatencyModel:
    """Device compute, edge compute times ``edge_load``, and the link: what every planner scores a partition with.

    ``edge_load`` is the edge's slowdown factor (1.0: as fast as its compute
    model says; 2.0: a busy edge, twice as slow), from ``--edge-load`` or a
    link profile's measured ``edge_load_factor``.
    """

    device: ComputeCost
    edge: ComputeCost
    link: Link
    edge_load: float = 1.0
    #: how float32 tensors cross the link: one of ``TRANSFER_DTYPES``
    transfer_dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.edge_load > 0:
            raise CogentError(f"edge load must be a positive slowdown factor such as 1.0 or 2.5, got {self.edge_load}")
        if self.transfer_dtype not in TRANSFER_DTYPES:
            raise CogentError(f"transfer dtype {self.transfer_dtype!r} is unknown; use one of {', '.join(TRANSFER_DTYPES)}")

    def _float16_ms(self, info: TensorInfo) -> float:
        """Sending ``info`` (float32) as float16: the device's cast, half the bytes, the edge's cast back."""
        half = info.numel * 2
        return (self.device.cast_ms(info.numel, info.nbytes, half) + self.link.up_ms(half)
                + self.edge.cast_ms(info.numel, half, info.nbytes) * self.edge_load)

    def wire_dtype(self, info: TensorInfo) -> str:
        """The dtype ``info`` crosses the link in: float16 for a float32 tensor when ``transfer_dtype`` allows and it pays."""
        if info.dtype != "float32" or self.transfer_dtype == "float32":
            return info.dtype
        if self.transfer_dtype == "float16" or self._float16_ms(info) < self.link.up_ms(info.nbytes):
            return "float16"
        return info.dtype

    def send_ms(self, info: TensorInfo) -> float:
        """Time to send ``info`` from device to edge in its wire dtype, casts included (no round trip)."""
        if self.wire_dtype(info) != info.dtype:
            return self._float16_ms(info)
        return self.link.up_ms(info.nbytes)

    def encodings(self, partition: Partition) -> dict[str, str]:
        """The sent tensors that cross in another dtype than their own: name -> wire dtype."""
        g = partition.graph
        out = {}
        for name in partition.sent:
            wire = self.wire_dtype(g.tensors[name])
            if wire != g.tensors[name].dtype:
                out[name] = wire
        return out

    def device_node_ms(self, node: Node) -> float:
        """One node as its own kernel on the device."""
        return self.device.node_ms(node)

    def edge_node_ms(self, node: Node) -> float:
        """One node as its own kernel on the edge, slowed by ``edge_load``."""
        return self.edge.node_ms(node) * self.edge_load

    def estimate(self, partition: Partition) -> Latency:
        g = partition.graph
        device_ms = self.device.nodes_ms(g.node(n) for n in partition.head_nodes)
        if partition.device_only:
            return Latency(device_ms, 0.0, 0.0)
        edge_ms = self.edge.nodes_ms(g.node(n) for n in partition.tail_nodes) * self.edge_load
        return Latency(device_ms, self.transfer_ms(partition), edge_ms)

    def transfer_ms(self, partition: Partition) -> float:
        """The link's share of ``estimate``: the sent tensors in their wire dtypes, the returned ones, one round trip.

        Cheap beside the compute (no half is priced), so a planner can rule a
        cut out when this alone exceeds the best plan it has (``PlanSpace.best_cut``).
        """
        if partition.device_only:
            return 0.0
        g = partition.graph
        return sum(self.send_ms(g.tensors[n]) for n in partition.sent) + self.link.transfer_ms(0, partition.returned_bytes)

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device.to_json(), "edge": self.edge.to_json(), "link": self.link.to_json(), "edge_load": self.edge_load,
                "transfer_dtype": self.transfer_dtype}
