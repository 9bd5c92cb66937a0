"""The space the learned policy searches: per-group prune ratios and a cut, priced fast, under sampled conditions.

``PlanSpace`` holds one model's folded IR, its prune groups and candidate
cuts, the measured (or estimated) device and edge compute models and an
accuracy oracle.  ``price`` turns (ratios, cut, conditions) into a predicted
latency with ``prune_ir`` (milliseconds, no torch) and the latency model,
and ``accuracy`` into top-1 on held-out data with ``AccuracyOracle``
(cached).  ``Conditions`` are what a plan depends on besides the model --
bandwidth, RTT, edge load, how much slower or faster the device is than its
profile, and the accuracy budget -- and ``ConditionRanges`` samples them for
training, so that one policy answers conditions it was not trained on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cogent_compiler.cost.latency import ComputeCost, Latency, LatencyModel, Link
from cogent_compiler.errors import PlanError
from cogent_compiler.ir import Graph, Node
from cogent_compiler.passes.partition import Partition, partition_at, single_tensor_cuts
from cogent_compiler.passes.prune_groups import PruneAnalysis
from cogent_compiler.passes.prune_ir import kept_per_group, prune_ir

__all__ = ["AccuracyOracle", "ConditionRanges", "Conditions", "PlanSpace", "ScaledCompute", "group_features", "GROUP_FEATURES",
           "CONDITION_FEATURES"]

log = logging.getLogger(__name__)

#: Length of ``group_features`` and of ``Conditions.features``.
GROUP_FEATURES = 10
CONDITION_FEATURES = 6


@dataclass(frozen=True)
class Conditions:
    """What a plan depends on besides the model."""

    bandwidth_mbps: float = 20.0
    rtt_ms: float = 10.0
    edge_load: float = 1.0
    #: the device's compute time relative to its profile (2.0: twice as slow)
    device_scale: float = 1.0
    #: the largest top-1 drop accepted, a fraction
    max_drop: float = 0.01

    def features(self) -> np.ndarray:
        """Log-scaled, roughly in [-1, 1] over the ranges Cogent trains on."""
        return np.array([
            math.log10(self.bandwidth_mbps) / 2 - 0.5, math.log10(1 + self.rtt_ms) / 2, math.log2(self.edge_load) / 2,
            math.log2(self.device_scale) / 2, self.max_drop * 10, 1.0,
        ], dtype=np.float32)

    def to_json(self) -> dict[str, float]:
        return {"bandwidth_mbps": self.bandwidth_mbps, "rtt_ms": self.rtt_ms, "edge_load": self.edge_load,
                "device_scale": self.device_scale, "max_drop": self.max_drop}


@dataclass(frozen=True)
class ConditionRanges:
    """Ranges conditions are drawn from in training: bandwidth log-uniform, the others uniform."""

    bandwidth_mbps: tuple[float, float] = (1.0, 100.0)
    rtt_ms: tuple[float, float] = (1.0, 20.0)
    edge_load: tuple[float, float] = (1.0, 4.0)
    device_scale: tuple[float, float] = (0.5, 2.0)
    max_drop: tuple[float, float] = (0.01, 0.01)

    def sample(self, rng: np.random.Generator) -> Conditions:
        lo, hi = self.bandwidth_mbps
        return Conditions(float(math.exp(rng.uniform(math.log(lo), math.log(hi)))), float(rng.uniform(*self.rtt_ms)),
                          float(rng.uniform(*self.edge_load)), float(rng.uniform(*self.device_scale)), float(rng.uniform(*self.max_drop)))


@dataclass(frozen=True)
class ScaledCompute:
    """A compute model whose every time is multiplied by ``scale`` (a device slower or faster than its profile)."""

    base: ComputeCost
    scale: float

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def source(self) -> str:
        return f"{self.base.source} x{self.scale:g}"

    def node_ms(self, node: Node) -> float:
        return self.base.node_ms(node) * self.scale

    def nodes_ms(self, nodes: Iterable[Node]) -> float:
        return self.base.nodes_ms(nodes) * self.scale

    def cast_ms(self, numel: int, in_bytes: int, out_bytes: int) -> float:
        return self.base.cast_ms(numel, in_bytes, out_bytes) * self.scale

    def to_json(self) -> dict[str, Any]:
        return {**self.base.to_json(), "scale": self.scale}


def group_features(graph: Graph, analysis: PruneAnalysis) -> np.ndarray:
    """AMC-style embedding per group (rows): index, op kind, in/out channels, kernel, stride, MACs, parameters, output bytes, position."""
    nodes = {n.name: n for n in graph.nodes}
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    total_macs = max(graph.total_macs, 1)
    total_params = max(graph.total_param_bytes, 1)
    rows = []
    for i, g in enumerate(analysis.groups):
        members = [nodes[n] for n in g.nodes if n in nodes]
        first = min(members, key=lambda n: order[n.name]) if members else None
        attrs = first.attrs if first is not None else {}
        kernel = attrs.get("kernel") or [1]
        stride = attrs.get("stride") or [1]
        rows.append([
            i / max(len(analysis.groups) - 1, 1),
            1.0 if first is not None and first.op == "linear" else 0.0,
            math.log2(1 + float(attrs.get("in_channels", attrs.get("in_features", 0)))) / 12,
            math.log2(1 + g.channels) / 12,
            float(kernel[0]) / 7,
            float(stride[0]) / 2,
            sum(n.macs for n in members) / total_macs,
            sum(n.param_bytes for n in members) / total_params,
            math.log2(1 + sum(n.output_bytes for n in members)) / 24,
            (order[first.name] / max(len(graph.nodes) - 1, 1)) if first is not None else 0.0,
        ])
    return np.asarray(rows, dtype=np.float32).reshape(len(analysis.groups), GROUP_FEATURES)


class AccuracyOracle:
    """Top-1 of the model pruned by given ratios, on held-out data, after a short fine-tune; cached by ratios rounded to ``grid``.

    ``evaluations`` counts the distinct plans measured (the search budget the
    baselines are compared at); ``seconds`` the time spent.
    """

    def __init__(self, graph: Graph, data: Any, *, finetune_steps: int = 20, val_samples: int = 300, grid: float = 0.05) -> None:
        if graph.module is None:
            raise PlanError(f"{graph.name}: measuring accuracy needs the model as an nn.Module (a factory, the Python API or a trusted pickle)")
        self.graph, self.data, self.finetune_steps, self.grid = graph, data, finetune_steps, grid
        self.x_val, self.y_val = data.x_val[:val_samples], data.y_val[:val_samples]
        self.cache: dict[tuple[tuple[str, float], ...], float] = {}
        self.evaluations = 0
        self.seconds = 0.0
        self.baseline = self(dict())

    def key(self, ratios: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
        return tuple(sorted((k, round(round(v / self.grid) * self.grid, 4)) for k, v in ratios.items() if round(v / self.grid) > 0))

    def __call__(self, ratios: Mapping[str, float]) -> float:
        from cogent_compiler.accuracy.train import evaluate, finetune
        from cogent_compiler.passes.prune_channels import PruneChannels

        key = self.key(ratios)
        if key in self.cache:
            return self.cache[key]
        t0 = time.perf_counter()
        pruned = PruneChannels(dict(key))(self.graph) if key else self.graph
        module = pruned.module
        # ratios too small to remove a channel (kept_channels rounds) leave the model itself: it is not fine-tuned, in place
        # least of all -- the graph's module is the user's, shared by every later plan and the compile's own check
        if module is not self.graph.module and self.finetune_steps:
            finetune(module, self.data, steps=self.finetune_steps)
        acc = float(evaluate(module, self.x_val, self.y_val))
        self.cache[key] = acc
        self.evaluations += 1
        self.seconds += time.perf_counter() - t0
        return acc


@dataclass
class PlanSpace:
    """One model's plans: prune ratios per group (bounded by ``max_ratio``) and a cut among ``cuts``."""

    graph: Graph
    analysis: PruneAnalysis
    device: ComputeCost
    edge: ComputeCost
    accuracy: AccuracyOracle | None = None
    max_ratio: float = 0.7
    transfer_dtype: str = "auto"
    cuts: tuple[tuple[str, ...], ...] = field(default=())
    features: np.ndarray = field(default_factory=lambda: np.zeros((0, GROUP_FEATURES), np.float32))

    def __post_init__(self) -> None:
        if not self.cuts:
            singles = single_tensor_cuts(self.graph)
            edge_only = tuple(t.name for t in self.graph.inputs)
            device_only = tuple(self.graph.outputs)
            cuts = [edge_only] + [(t,) for t in singles if (t,) not in (edge_only, device_only)] + [device_only]
            self.cuts = tuple(dict.fromkeys(cuts))
        if not len(self.features):
            self.features = group_features(self.graph, self.analysis)

    @property
    def groups(self) -> tuple[str, ...]:
        """Groups the policy sets a ratio for: all of them when accuracy can be measured, none otherwise (no data, no pruning)."""
        return tuple(g.name for g in self.analysis.groups) if self.accuracy is not None else ()

    def model(self, c: Conditions) -> LatencyModel:
        device = self.device if c.device_scale == 1.0 else ScaledCompute(self.device, c.device_scale)
        return LatencyModel(device, self.edge, Link(c.bandwidth_mbps * 1e6, c.rtt_ms / 1e3), edge_load=c.edge_load,
                            transfer_dtype=self.transfer_dtype)

    def pruned(self, ratios: Mapping[str, float]) -> Graph:
        return prune_ir(self.graph, self.analysis, kept_per_group(self.analysis, ratios))

    @functools.cached_property
    def _partitions(self) -> dict[tuple[str, ...], Partition]:
        """Each candidate cut's partition of the unpruned graph (pruning changes shapes, never which node is on which side)."""
        return {cut: partition_at(self.graph, cut) for cut in self.cuts}

    def partition(self, graph: Graph, cut: Sequence[str]) -> Partition:
        """``cut``'s partition of ``graph``, this space's graph or a pruning of it: a candidate's is not computed again."""
        known = self._partitions.get(tuple(cut))
        return dataclasses.replace(known, graph=graph) if known is not None else partition_at(graph, tuple(cut))

    def price(self, ratios: Mapping[str, float], cut: Sequence[str], c: Conditions) -> Latency:
        return self.model(c).estimate(self.partition(self.pruned(ratios), cut))

    def best_cut(self, ratios: Mapping[str, float], c: Conditions) -> tuple[tuple[str, ...], Latency]:
        """The fastest candidate cut for ``ratios`` under ``c`` (what the baselines pair their ratios with).

        Device-only is priced first; a cut whose transfer alone takes longer
        than the fastest plan priced so far is not priced (its total can only
        be larger): the compute estimates are most of the time an answer takes.
        """
        model, graph = self.model(c), self.pruned(ratios)
        parts = [self.partition(graph, cut) for cut in self.cuts]
        best, priced = math.inf, {}
        for i in sorted(range(len(parts)), key=lambda i: not parts[i].device_only):  # device-only first: it sends nothing
            if model.transfer_ms(parts[i]) <= best:
                priced[i] = model.estimate(parts[i])
                best = min(best, priced[i].total_ms)
        first = min(priced, key=lambda i: (priced[i].total_ms, i))  # ties: the earlier candidate, as pricing them in order gives
        return self.cuts[first], priced[first]

    def repair(self, ratios: Mapping[str, float], c: Conditions, attempts: int, *, stretch: bool = False) -> dict[str, float]:
        """``ratios`` scaled into the accuracy budget as the compile scales them (``bisect_scale``, ``attempts`` checks); {} if none fits.

        ``stretch`` scales a plan that fits *up* as well, as far as the
        budget and ``max_ratio`` allow: the plan's shape pushed to the edge.
        Each ratio stops at ``max_ratio``; the bisection's ceiling is the scale
        where the largest reaches it, or, when it is there already (a scale
        that changes nothing), where the smallest does.
        """
        from cogent_compiler.accuracy.budget import bisect_scale, scale_ratios, stretch_ceiling

        top = stretch_ceiling(ratios, self.max_ratio) if stretch else 1.0
        scale = bisect_scale(lambda k: self.feasible(scale_ratios(ratios, k, self.max_ratio), c)[0], attempts, top)
        return scale_ratios(ratios, scale, self.max_ratio) if scale else {}

    def feasible(self, ratios: Mapping[str, float], c: Conditions) -> tuple[bool, float | None]:
        """(within the accuracy budget, top-1); no ratios is always feasible."""
        from cogent_compiler.accuracy.budget import within_budget

        if not any(v > 0 for v in ratios.values()):
            return True, self.accuracy.baseline if self.accuracy is not None else None
        if self.accuracy is None:
            return False, None
        acc = self.accuracy(ratios)
        return within_budget(self.accuracy.baseline - acc, c.max_drop), acc
