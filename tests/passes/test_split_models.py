"""head∘tail equals the model at cuts where several tensors cross.

The cuts are frontiers (every tensor live at a point of the topological order,
so they cross long skips and may hold the model input) and the cuts the
min-cut planner picks across a sweep of device speeds and bandwidths.  The
halves are the re-exported torch programs, run eagerly one after the other.
Every single-tensor cut of the smaller torchvision models is in
``test_split.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tiny_models
from benchmarks.models import benchmark_model
from cogent_compiler.errors import IllegalPlanError, PassError
from cogent_compiler.frontend import from_module, trace
from cogent_compiler.ir import Graph
from cogent_compiler.passes import frontier_cut, frontier_cuts, partition_at, split_program
from split_support import candidate_cuts, min_cut_sweep, run_torch_split

#: torchvision models and the input they are split at (inception_v3 needs 75x75 at least; 299x299 as trained)
TORCHVISION = {
    "resnet18": (1, 3, 64, 64),
    "resnet50": (1, 3, 64, 64),
    "googlenet": (1, 3, 64, 64),
    "mobilenet_v2": (1, 3, 64, 64),
    "inception_v3": (1, 3, 299, 299),
}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def unet():
    model = tiny_models.skip_unet()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    return model, x, trace(from_module(model, (x,), name="skip_unet"))


def _max_error(got, expected) -> float:
    return max(float((g - e).abs().max()) for g, e in zip(got, expected, strict=True))


def _assert_composes(graph: Graph, expected, x, cut) -> None:
    split = split_program(partition_at(graph, cut))
    err = _max_error(run_torch_split(split, x), expected)
    assert err <= TOLERANCE, f"{graph.name} cut at {cut}: max abs error {err}"


def _live_prefix(graph: Graph, position: int) -> set[str]:
    """Nodes of the first ``position`` that some model output needs."""
    needed = graph.ancestors(graph.outputs)
    return {n.name for n in graph.nodes[:position] if n.name in needed}


# -- frontier cuts on the IR ----------------------------------------------------------------------


def test_frontier_ends_are_edge_only_and_device_only(unet):
    _, _, graph = unet
    first, last = frontier_cut(graph, 0), frontier_cut(graph, len(graph.nodes))
    assert first == ("x",) and partition_at(graph, first).edge_only
    assert set(last) == set(graph.outputs) and partition_at(graph, last).device_only
    cuts = frontier_cuts(graph)
    assert cuts[0] == first and cuts[-1] == last
    assert len(set(cuts)) == len(cuts)


def test_every_frontier_is_a_valid_cut_whose_head_is_the_prefix(unet):
    _, _, graph = unet
    for position in range(len(graph.nodes) + 1):
        partition = partition_at(graph, frontier_cut(graph, position))
        assert set(partition.head_nodes) == _live_prefix(graph, position), position


def test_frontier_position_outside_the_graph_is_rejected(unet):
    _, _, graph = unet
    with pytest.raises(IllegalPlanError, match="frontier position 99 is outside 0..21"):
        frontier_cut(graph, 99)
    with pytest.raises(IllegalPlanError, match="positive"):
        frontier_cuts(graph, every=0)


def test_a_model_output_in_the_cut_is_returned_by_the_head_not_sent(unet):
    _, _, graph = unet
    image, logits = graph.outputs
    position = next(i for i, n in enumerate(graph.nodes) if n.outputs[0].name == logits) + 1
    cut = frontier_cut(graph, position)
    partition = partition_at(graph, cut)
    assert logits in cut and "x" in cut
    assert logits in partition.head_outputs and logits not in partition.sent
    assert partition.tail_outputs == (image,)
    assert partition.sent[0] == "x" and len(partition.sent) >= 4  # the input and three encoder/decoder tensors


# -- head∘tail == model ---------------------------------------------------------------------------


def test_every_frontier_and_min_cut_of_a_unet_composes(unet):
    model, x, graph = unet
    with torch.no_grad():
        expected = model(x)
    cuts = list(frontier_cuts(graph)) + [c for c in min_cut_sweep(graph) if c not in frontier_cuts(graph)]
    partitions = [partition_at(graph, c) for c in cuts]
    # the cases that matter are all among them
    assert any("x" in p.sent and p.head_nodes for p in partitions), "no cut sends the model input beside head tensors"
    assert any(p.tail_nodes and set(p.head_outputs) & set(graph.outputs) for p in partitions), "no head returns an output"
    assert max(len(p.sent) for p in partitions) >= 4
    for cut in cuts:
        _assert_composes(graph, expected, x, cut)


def test_a_cut_at_an_element_of_a_tuple_composes(tiny_model, tiny_graph):
    """Unfolded batch norm returns a tuple; a frontier between it and its ``getitem`` sends element 0."""
    model, x = tiny_model
    bn = next(n for n in tiny_graph.nodes if n.op == "batch_norm")
    cut = frontier_cut(tiny_graph, tiny_graph.nodes.index(bn) + 1)
    assert cut == (f"{bn.name}.0",)
    with torch.no_grad():
        expected = (model(x),)
    _assert_composes(tiny_graph, expected, x, cut)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_candidate_cuts_of_torchvision_models_compose(name):
    model, x = benchmark_model(name, TORCHVISION[name])
    graph = trace(from_module(model, (x,), name=name))  # batch norm unfolded: the split is checked against eager
    with torch.no_grad():
        expected = (model(x),)
    cuts = candidate_cuts(graph, frontiers=8)
    assert sum(len(c) > 1 for c in cuts) >= 3, cuts
    for cut in cuts:
        _assert_composes(graph, expected, x, cut)


def test_a_tail_missing_a_sent_tensor_is_refused(unet):
    _, _, graph = unet
    partition = partition_at(graph, frontier_cut(graph, len(graph.nodes) // 2))
    broken = dataclasses.replace(partition, sent=partition.sent[:-1])
    with pytest.raises(PassError, match="the tail reads .*, which is neither in it nor in the cut"):
        split_program(broken)
