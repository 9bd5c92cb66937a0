"""What the split tests share: candidate cuts of a graph and running a split's halves one after the other.

Importable as ``split_support`` (``tests/passes/conftest.py`` puts this folder on ``sys.path``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from cogent_compiler.cost.latency import ComputeModel, LatencyModel, Link
from cogent_compiler.ir import Graph, TensorInfo
from cogent_compiler.passes import SplitProgram, frontier_cuts
from cogent_compiler.policy.mincut import min_cut_tensors

__all__ = ["candidate_cuts", "min_cut_sweep", "onnx_session", "run_onnx_split", "run_torch_split"]

#: device GMAC/s x edge GMAC/s x uplink bit/s x per-op overhead (us): where the min cut lands inside a network (at
#: faster links everything goes to the edge, at slower ones or faster devices everything stays on the device)
SWEEP = ((2.0,), (20.0, 500.0), (1e5, 3e5, 1e6, 3e6, 1e7), (0.0, 10.0))


def min_cut_sweep(graph: Graph) -> tuple[tuple[str, ...], ...]:
    """The distinct non-empty cuts the min-cut planner picks across ``SWEEP``, in the order first met."""
    cuts: dict[tuple[str, ...], None] = {}
    for device, edge, bandwidth, overhead in itertools.product(*SWEEP):
        model = LatencyModel(ComputeModel("device", device, overhead), ComputeModel("edge", edge, overhead), Link(bandwidth, 0.005))
        cut = min_cut_tensors(graph, model)
        if cut:
            cuts.setdefault(cut)
    return tuple(cuts)


def candidate_cuts(graph: Graph, frontiers: int = 12, min_cuts: int = 3) -> tuple[tuple[str, ...], ...]:
    """About ``frontiers`` evenly spaced frontier cuts (edge-only to device-only), then the first ``min_cuts`` other
    cuts of several tensors from the min-cut sweep (its single-tensor cuts are among ``single_tensor_cuts``, which
    ``test_split`` runs)."""
    every = max(1, len(graph.nodes) // frontiers)
    cuts: dict[frozenset[str], tuple[str, ...]] = {frozenset(c): c for c in frontier_cuts(graph, every)}
    extra = [c for c in min_cut_sweep(graph) if len(c) > 1 and frozenset(c) not in cuts]
    cuts.update((frozenset(c), c) for c in extra[:min_cuts])
    return tuple(cuts.values())


def _assemble(split: SplitProgram, values: dict[str, Any], run_head: Any, run_tail: Any) -> list[Any]:
    """Fill ``values`` (model inputs by name) with the head's, then the tail's outputs; the model's outputs in order."""
    if split.head is not None:
        values.update(zip((t.name for t in split.head_outputs), run_head(split.model_inputs, values), strict=True))
    if split.tail is not None:
        values.update(zip((t.name for t in split.tail_outputs), run_tail(split.sent, values), strict=True))
    return [values[t.name] for t in split.model_outputs]


def run_torch_split(split: SplitProgram, *inputs: Any) -> list[Any]:
    """Run the torch head, then the tail on what the head sent; the model's outputs in order."""
    import torch

    def call(program: Any) -> Any:
        def run(infos: Sequence[TensorInfo], values: Mapping[str, Any]) -> list[Any]:
            with torch.no_grad():
                out = program.module()(*(values[t.name] for t in infos))
            return list(out) if isinstance(out, (tuple, list)) else [out]

        return run

    values = {t.name: v for t, v in zip(split.model_inputs, inputs, strict=True)}
    return _assemble(split, values, call(split.head), call(split.tail))


def onnx_session(model: Any) -> Any:
    """A one-thread CPU onnxruntime session of a ``ModelProto``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_onnx_split(split: SplitProgram, inputs: Mapping[str, Any]) -> list[Any]:
    """Run the ONNX head, then the tail, in onnxruntime, feeding each half by its boundary tensors' names."""

    def call(model: Any) -> Any:
        def run(infos: Sequence[TensorInfo], values: Mapping[str, Any]) -> list[Any]:
            return onnx_session(model).run(None, {t.name: values[t.name] for t in infos})

        return run

    return _assemble(split, dict(inputs), call(split.head), call(split.tail))
