from __future__ import annotations

import torch
import torchvision

from cogent_compiler.frontend import from_module, trace
from cogent_compiler.passes import FoldBatchNorm, PassContext, PassManager


def _randomise_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def test_folds_every_conv_bn_pair_and_keeps_the_function():
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(1, 3, 64, 64)
    graph = trace(from_module(model, (x,), name="resnet18"))
    assert sum(n.op == "batch_norm" for n in graph.nodes) == 20
    result = PassManager([FoldBatchNorm()]).run(graph, PassContext())
    assert result.modified
    folded = result.graph
    assert sum(n.op == "batch_norm" for n in folded.nodes) == 0
    assert sum(n.op == "conv2d" for n in folded.nodes) == 20
    # the folded convs now carry a bias: parameters shrink by the BN's 4 vectors, gain 1 bias
    assert folded.total_macs == graph.total_macs
    with torch.no_grad():
        err = float((folded.source.module()(x) - model(x)).abs().max())
    assert err <= 1e-4


def test_nothing_to_fold_is_not_modified(tiny_graph):
    once = FoldBatchNorm().run(tiny_graph, PassContext())
    assert once.modified
    twice = FoldBatchNorm().run(once.graph, PassContext())
    assert not twice.modified and twice.graph is once.graph
