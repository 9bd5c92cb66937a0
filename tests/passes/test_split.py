"""head∘tail equals the model for every single-tensor cut of real torchvision networks."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cogent_compiler.errors import IllegalPlanError
from cogent_compiler.frontend import from_module, trace
from cogent_compiler.passes import partition_at, single_tensor_cuts, split_program

MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(weights=None),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
    "vgg16": lambda: torchvision.models.vgg16(weights=None),
    "alexnet": lambda: torchvision.models.alexnet(weights=None),
    "googlenet": lambda: torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False),
}


def run_split(split, x):
    """Run head then tail eagerly, returning the model's outputs in order."""
    values = {t.name: v for t, v in zip(split.model_inputs, (x,))}
    if split.head is not None:
        outs = split.head.module()(x)
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        values.update({t.name: v for t, v in zip(split.head_outputs, outs)})
    if split.tail is not None:
        outs = split.tail.module()(*(values[t.name] for t in split.sent))
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        values.update({t.name: v for t, v in zip(split.tail_outputs, outs)})
    return [values[t.name] for t in split.model_outputs]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_single_cuts_compose_to_the_model(name):
    """At most 16 single cuts per model, spread evenly, and the last: re-exporting both halves costs ~2.5 s per cut (mobilenet_v2 has 73)."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(1, 3, 64, 64)
    graph = trace(from_module(model, (x,), name=name))
    with torch.no_grad():
        expected = model(x)
    cuts = single_tensor_cuts(graph)
    assert cuts[0] == "x" and cuts[-1] == graph.outputs[0]
    assert len(cuts) >= 8, cuts
    step = -(-len(cuts) // 16)
    for cut in sorted(set(cuts[::step]) | {cuts[-1]}, key=cuts.index):
        split = split_program(partition_at(graph, (cut,)))
        assert (split.head is None) == (cut == "x")
        assert (split.tail is None) == (cut == graph.outputs[0])
        with torch.no_grad():
            (got,) = run_split(split, x)
        err = float((got - expected).abs().max())
        assert err <= 1e-4, f"{name} cut at {cut}: max abs error {err}"


def test_halves_are_exported_programs_with_the_boundary_as_interface(tiny_model, tiny_graph):
    model, x = tiny_model
    cuts = single_tensor_cuts(tiny_graph)
    mid = cuts[len(cuts) // 2]
    split = split_program(partition_at(tiny_graph, (mid,)))
    assert isinstance(split.head, torch.export.ExportedProgram)
    assert isinstance(split.tail, torch.export.ExportedProgram)
    assert [t.name for t in split.sent] == [mid]
    assert tuple(split.head_outputs[0].shape) == tiny_graph.tensors[mid].shape
    (tail_in,) = split.tail.graph_signature.user_inputs
    assert tail_in == mid


def test_residual_inside_block_is_not_a_single_cut(tiny_graph):
    cuts = set(single_tensor_cuts(tiny_graph))
    # the stem's relu feeds both the residual add and the block: it is a cut, but the block's
    # inner conv is not (the skip tensor would cross too)
    inner = [n for n in tiny_graph.nodes if n.op == "conv2d"][1]
    assert inner.name not in cuts
    with pytest.raises(IllegalPlanError, match="add .* to the cut"):
        partition_at(tiny_graph, (inner.name,))


def test_two_tensor_cut_across_a_skip_connection(tiny_model, tiny_graph):
    model, x = tiny_model
    add = next(n for n in tiny_graph.nodes if n.op == "add")
    skip, branch = add.inputs
    split = split_program(partition_at(tiny_graph, (skip, branch)))
    assert {t.name for t in split.sent} == {skip, branch}
    with torch.no_grad():
        (got,) = run_split(split, x)
        err = float((got - model(x)).abs().max())
    assert err <= 1e-5


def test_unknown_cut_tensor_is_rejected(tiny_graph):
    with pytest.raises(IllegalPlanError, match="'nope' is not a tensor"):
        partition_at(tiny_graph, ("nope",))
    with pytest.raises(IllegalPlanError, match="empty"):
        partition_at(tiny_graph, ())
