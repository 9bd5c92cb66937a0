"""prune_ir (pricing pruned models without torch) agrees with PruneChannels + re-tracing, tensor by tensor."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision

from cogent_compiler.frontend import from_module, trace
from cogent_compiler.passes import FoldBatchNorm, PruneChannels, prune_groups_of
from cogent_compiler.passes.prune_ir import kept_per_group, prune_ir


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg16", "googlenet"])
def test_prune_ir_matches_the_pruned_model(name):
    torch.manual_seed(0)
    extra = {"init_weights": True} if name == "googlenet" else {}
    model = getattr(torchvision.models, name)(weights=None, **extra).eval()
    graph = trace(from_module(model, (torch.rand(1, 3, 64, 64),), name=name))
    analysis = prune_groups_of(graph)
    rng = random.Random(1)
    ratios = {g.name: rng.choice([0.0, 0.2, 0.5, 0.7]) for g in analysis.groups}
    real = FoldBatchNorm()(PruneChannels(ratios)(graph))
    priced = prune_ir(FoldBatchNorm()(graph), analysis, kept_per_group(analysis, ratios))
    assert [n.name for n in priced.nodes] == [n.name for n in real.nodes]
    for name_, t in real.tensors.items():
        assert priced.tensors[name_].shape == t.shape, name_
    assert priced.total_macs == pytest.approx(real.total_macs, rel=1e-3)
    assert priced.total_param_bytes == pytest.approx(real.total_param_bytes, rel=0.02)
    assert real.total_macs < 0.8 * graph.total_macs


def test_no_pruning_is_the_same_graph(tiny_graph):
    analysis = prune_groups_of(tiny_graph)
    assert prune_ir(tiny_graph, analysis, kept_per_group(analysis, {})) is tiny_graph
