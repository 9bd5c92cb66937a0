"""``Plan``: one decision (prune ratios + cut) with its predicted latency.

A plan is data: planners produce it, passes apply it, ``plan.json`` stores it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cogent_compiler.cost.latency import Latency, LatencyModel
from cogent_compiler.errors import PlanError
from cogent_compiler.ir import Graph
from cogent_compiler.passes.partition import partition_at

__all__ = ["Plan", "PlanReport"]


@dataclass(frozen=True)
class Plan:
    """Per-group prune ratios, the cut (tensors that cross), how they cross, and the predicted latency.

    ``encodings`` names the sent tensors that cross the link in another dtype
    than their own (``{"relu_3": "float16"}``); every other tensor crosses as is.
    """

    name: str
    cut: tuple[str, ...]
    predicted: Latency
    prune_ratios: Mapping[str, float] = field(default_factory=dict)
    encodings: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def score(cls, name: str, graph: Graph, cut: tuple[str, ...], model: LatencyModel) -> Plan:
        """The plan that cuts ``graph`` at ``cut``, priced by ``model`` with the wire dtypes it chooses."""
        part = partition_at(graph, cut)
        return cls(name, tuple(cut), model.estimate(part), encodings=model.encodings(part))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cut": list(self.cut),
            "prune_ratios": dict(sorted(self.prune_ratios.items())),
            "encodings": dict(sorted(self.encodings.items())),
            "predicted": self.predicted.to_json(),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Plan:
        p = d["predicted"]
        return cls(
            name=str(d["name"]),
            cut=tuple(d["cut"]),
            predicted=Latency(float(p["device_ms"]), float(p["transfer_ms"]), float(p["edge_ms"])),
            prune_ratios={str(k): float(v) for k, v in d.get("prune_ratios", {}).items()},
            encodings={str(k): str(v) for k, v in d.get("encodings", {}).items()},
        )


@dataclass(frozen=True)
class PlanReport:
    """The chosen plan, the baselines beside it, every candidate considered, and the conditions."""

    model: str
    chosen: Plan
    baselines: Mapping[str, Plan]
    candidates: tuple[Plan, ...]
    conditions: Mapping[str, Any]

    def speedups(self) -> dict[str, float]:
        """Predicted speedup of the chosen plan over each baseline."""
        t = self.chosen.predicted.total_ms
        return {k: round(b.predicted.total_ms / t, 4) for k, b in self.baselines.items() if t > 0}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "cogent-plan/1",
            "model": self.model,
            "conditions": dict(self.conditions),
            "chosen": self.chosen.to_json(),
            "baselines": {k: v.to_json() for k, v in self.baselines.items()},
            "speedup_predicted": self.speedups(),
            "candidates": [c.to_json() for c in self.candidates],
        }

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> PlanReport:
        try:
            d = json.loads(Path(path).read_text())
            return cls(
                model=d["model"],
                chosen=Plan.from_json(d["chosen"]),
                baselines={k: Plan.from_json(v) for k, v in d["baselines"].items()},
                candidates=tuple(Plan.from_json(c) for c in d.get("candidates", ())),
                conditions=d.get("conditions", {}),
            )
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise PlanError(f"{path}: not a plan written by cogentc ({e!r}); re-run cogentc to write one") from e
