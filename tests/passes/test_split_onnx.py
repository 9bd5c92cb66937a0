"""ONNX models split like torch ones: halves extracted with onnx-graphsurgeon, head∘tail equals the whole model.

The models are exported with ``torch.onnx.export`` and loaded like a user's
``.onnx`` file.  The halves run in onnxruntime and are compared with
onnxruntime on the whole model; one head and tail are also lowered with TVM's
ONNX frontend and run with the TVM runtime.
"""

from __future__ import annotations

import dataclasses

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import tiny_models
from benchmarks.models import benchmark_model
from cogent_compiler.backends import resolve_target
from cogent_compiler.backends.tvm_backend import compile_program
from cogent_compiler.errors import PassError
from cogent_compiler.frontend import load_model, trace
from cogent_compiler.ir import Graph
from cogent_compiler.passes import frontier_cut, frontier_cuts, partition_at, split_program
from split_support import candidate_cuts, min_cut_sweep, onnx_session, run_onnx_split

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    """name -> (Graph of the exported ONNX model, its input by name, onnxruntime's outputs on the whole model)."""
    folder = tmp_path_factory.mktemp("onnx")
    out: dict[str, tuple[Graph, dict[str, np.ndarray], list[np.ndarray]]] = {}
    built = {
        "skip_unet": (tiny_models.skip_unet(), torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))),
        "resnet18": benchmark_model("resnet18", (1, 3, 64, 64)),
        "googlenet": benchmark_model("googlenet", (1, 3, 64, 64)),
    }
    for name, (model, x) in built.items():
        path = folder / f"{name}.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=True, verbose=False)
        graph = trace(load_model(path))
        feeds = {graph.inputs[0].name: x.numpy()}
        out[name] = (graph, feeds, onnx_session(graph.source).run(None, feeds))
    return out


def _max_error(got, expected) -> float:
    return max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))


def _names(values) -> list[str]:
    return [v.name for v in values]


def test_halves_are_onnx_models_whose_interface_is_the_boundary(onnx_models):
    graph, _, _ = onnx_models["skip_unet"]
    image, logits = graph.outputs
    position = next(i for i, n in enumerate(graph.nodes) if logits in _names(n.outputs)) + 1
    partition = partition_at(graph, frontier_cut(graph, position))
    split = split_program(partition)
    assert isinstance(split.head, onnx.ModelProto) and isinstance(split.tail, onnx.ModelProto)
    assert _names(split.head.graph.input) == ["x"]
    assert _names(split.head.graph.output) == list(partition.head_outputs)
    assert logits in partition.head_outputs and logits not in partition.sent
    assert _names(split.tail.graph.input) == list(partition.sent) and partition.sent[0] == "x"
    assert _names(split.tail.graph.output) == [image]
    # each op runs in one half only (constants may be copied into both)
    head_values = {o for n in split.head.graph.node if n.op_type != "Constant" for o in n.output}
    tail_values = {o for n in split.tail.graph.node if n.op_type != "Constant" for o in n.output}
    assert not head_values & tail_values
    assert len(head_values) + len(tail_values) == sum(len(n.outputs) for n in graph.nodes)


@pytest.mark.parametrize("name", ["skip_unet", "resnet18", "googlenet"])
def test_candidate_cuts_compose_in_onnxruntime(onnx_models, name):
    graph, feeds, expected = onnx_models[name]
    if name == "skip_unet":
        cuts = list(frontier_cuts(graph)) + [c for c in min_cut_sweep(graph) if c not in frontier_cuts(graph)]
    else:
        cuts = list(candidate_cuts(graph, frontiers=12))
    assert sum(len(c) > 1 for c in cuts) >= 3, cuts
    for cut in cuts:
        split = split_program(partition_at(graph, cut))
        err = _max_error(run_onnx_split(split, feeds), expected)
        assert err <= TOLERANCE, f"{name} cut at {cut}: max abs error {err}"


def _tvm_half(folder: Path, program, args: list[np.ndarray]) -> list[np.ndarray]:
    """Lower ``program`` (ONNX) with TVM for this CPU and run it once on ``args``."""
    import tvm

    compiled = compile_program(program, "onnx", resolve_target("llvm"), folder, name=folder.name)
    dev = tvm.cpu(0)
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(folder / compiled.library)), dev)
    params = []
    if compiled.params is not None:
        with np.load(folder / compiled.params) as z:
            params = [z[f"p{i}"] for i in range(len(z.files))]
    result = vm["main"](*(tvm.runtime.tensor(a, dev) for a in (*args, *params)))
    return [result.numpy()] if hasattr(result, "numpy") else [r.numpy() for r in result]


@pytest.mark.parametrize("name", ["skip_unet", "googlenet"])
def test_onnx_halves_lowered_with_tvm_compose_to_onnxruntime(onnx_models, name, tmp_path):
    """skip_unet: the input crosses and the head returns an output; googlenet: three tensors out of an inception block."""
    graph, feeds, expected = onnx_models[name]
    if name == "skip_unet":
        logits = graph.outputs[1]
        cut = frontier_cut(graph, next(i for i, n in enumerate(graph.nodes) if logits in _names(n.outputs)) + 1)
    else:
        cut = next(c for c in frontier_cuts(graph, max(1, len(graph.nodes) // 12)) if len(c) >= 3)
    split = split_program(partition_at(graph, cut))
    values = dict(feeds)
    head = _tvm_half(tmp_path / "head", split.head, [values[t.name] for t in split.model_inputs])
    values.update(zip(_names(split.head_outputs), head, strict=True))
    tail = _tvm_half(tmp_path / "tail", split.tail, [values[t.name] for t in split.sent])
    values.update(zip(_names(split.tail_outputs), tail, strict=True))
    err = _max_error([values[o] for o in graph.outputs], expected)
    assert err <= TOLERANCE, f"{name} cut at {cut}: max abs error {err}"


def test_a_tail_that_would_recompute_head_values_is_refused(onnx_models):
    """The partition is the contract: a sent tensor missing from it is an error, not a silently bigger tail."""
    graph, _, _ = onnx_models["skip_unet"]
    partition = partition_at(graph, frontier_cut(graph, len(graph.nodes) // 2))
    broken = dataclasses.replace(partition, sent=partition.sent[:-1])
    with pytest.raises(PassError, match="the ONNX tail would also compute"):
        split_program(broken)
