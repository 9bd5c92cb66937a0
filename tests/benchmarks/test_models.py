"""The benchmark models: each builds deterministically and runs; the pruned resnet18 is really smaller."""

from __future__ import annotations

import pytest
import torch

from benchmarks.models import BENCHMARK_MODELS, INPUT_SHAPE, benchmark_graph, benchmark_model


@pytest.fixture(scope="module")
def resnet18_graphs():
    """IR graphs (batch norm folded, as compiled) of resnet18 and its pruned form."""
    return benchmark_graph("resnet18"), benchmark_graph("resnet18_pruned50")


@pytest.mark.parametrize("name", BENCHMARK_MODELS)
def test_model_builds_deterministically_and_classifies(name):
    model, x = benchmark_model(name)
    assert not any(m.training for m in model.modules()), "every module in eval mode"
    assert tuple(x.shape) == INPUT_SHAPE and x.dtype == torch.float32
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == (1, 1000) and bool(torch.isfinite(y).all())
    again, x2 = benchmark_model(name)
    assert torch.equal(x, x2)
    first, second = model.state_dict(), again.state_dict()
    assert list(first) == list(second)
    assert all(torch.equal(first[k], second[k]) for k in first), f"{name}: weights differ between two builds"


def test_a_classifier_torchvision_initialises_to_zero_gets_seeded_weights():
    from benchmarks.models import torch_model

    model = torch_model("vit_b_16")  # torchvision zeroes the ViTs' head: every output would be 0
    with torch.no_grad():
        y = model(torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
    assert float(y.abs().max()) > 0.01 and torch.equal(model.heads.head.weight, torch_model("vit_b_16").heads.head.weight)


def test_pruned_resnet18_has_half_the_channels_in_every_layer_but_the_classifier():
    original, _ = benchmark_model("resnet18")
    pruned, _ = benchmark_model("resnet18_pruned50")
    convs = {k: m for k, m in original.named_modules() if isinstance(m, torch.nn.Conv2d)}
    pruned_convs = {k: m for k, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert list(pruned_convs) == list(convs)
    for k, conv in convs.items():
        p = pruned_convs[k]
        assert p.out_channels == conv.out_channels // 2, k
        assert p.in_channels == (3 if k == "conv1" else conv.in_channels // 2), k
        assert tuple(p.weight.shape) == (p.out_channels, p.in_channels, *conv.kernel_size), k
    assert (pruned.fc.in_features, pruned.fc.out_features) == (original.fc.in_features // 2, 1000)


def test_pruned_resnet18_costs_a_quarter_of_the_macs_with_the_same_output(resnet18_graphs):
    original, pruned = resnet18_graphs
    ratio = pruned.total_macs / original.total_macs
    assert 0.20 <= ratio <= 0.30, f"pruned/original MACs = {pruned.total_macs}/{original.total_macs} = {ratio:.3f}"
    assert pruned.total_param_bytes < 0.3 * original.total_param_bytes
    (out,), (pruned_out,) = original.outputs, pruned.outputs
    assert original.tensors[out].shape == pruned.tensors[pruned_out].shape == (1, 1000)


def test_benchmark_graph_is_the_model_with_batch_norm_folded(resnet18_graphs):
    _, graph = resnet18_graphs
    model, x = benchmark_model("resnet18_pruned50")
    assert graph.name == "resnet18_pruned50" and graph.inputs[0].shape == INPUT_SHAPE
    assert not any(n.op == "batch_norm" for n in graph.nodes)
    assert any(n.op == "batch_norm" for n in benchmark_graph("resnet18_pruned50", fold_batch_norm=False).nodes)
    with torch.no_grad():
        expected = model(x)
        got = graph.source.module()(x)
    assert float((got - expected).abs().max()) <= 1e-4


def test_unknown_model_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown benchmark model 'resnet9000'; use one of resnet18, mobilenet_v2"):
        benchmark_model("resnet9000")
