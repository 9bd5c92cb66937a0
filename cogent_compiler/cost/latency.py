"""A first latency model from user-supplied speeds and link figures.

It is an *estimate*: compute time is MACs divided by a throughput the user
states (``--device-gmacs``) plus a fixed cost per op, and transfer time is
bytes over bandwidth plus one round trip.  A measured profile replaces the
compute part (``predictor.ProfileComputeModel``, any ``ComputeCost``); every
number this model produces is labelled ``predicted``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cogent_compiler.errors import CogentError
from cogent_compiler.ir import Node
from cogent_compiler.passes.partition import Partition

__all__ = ["ComputeCost", "ComputeModel", "Link", "Latency", "LatencyModel", "DEFAULT_GMACS"]

#: Default throughputs (GMAC/s) per target kind when the user gives none: rough
#: figures for a Cortex-A72-class board, a desktop core and a datacenter GPU.
DEFAULT_GMACS: Mapping[str, float] = {"arm": 2.0, "llvm": 10.0, "cuda": 500.0}


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

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "gmacs_per_s": self.gmacs_per_s, "op_overhead_us": self.op_overhead_us, "source": self.source}


@dataclass(frozen=True)
class Link:
    """A network link: bandwidth (bit/s, both ways) and round-trip time (s)."""

    bandwidth_bps: float
    rtt_s: float

    def __post_init__(self) -> None:
        if self.bandwidth_bps <= 0 or self.rtt_s < 0:
            raise CogentError(f"link needs a positive bandwidth and a non-negative RTT, got {self.bandwidth_bps} bit/s, {self.rtt_s} s")

    def transfer_ms(self, up_bytes: int, down_bytes: int) -> float:
        """One request/response: both payloads over the link plus one round trip."""
        return (up_bytes + down_bytes) * 8 / self.bandwidth_bps * 1e3 + self.rtt_s * 1e3

    def to_json(self) -> dict[str, Any]:
        return {"bandwidth_mbps": self.bandwidth_bps / 1e6, "rtt_ms": self.rtt_s * 1e3}


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
    device: ComputeCost
    edge: ComputeCost
    link: Link

    def estimate(self, partition: Partition) -> Latency:
        g = partition.graph
        device_ms = self.device.nodes_ms(g.node(n) for n in partition.head_nodes)
        if partition.device_only:
            return Latency(device_ms, 0.0, 0.0)
        edge_ms = self.edge.nodes_ms(g.node(n) for n in partition.tail_nodes)
        transfer_ms = self.link.transfer_ms(partition.sent_bytes, partition.returned_bytes)
        return Latency(device_ms, transfer_ms, edge_ms)

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device.to_json(), "edge": self.edge.to_json(), "link": self.link.to_json()}
