"""PruneChannels: channels removed physically, rounded for the backend, and the pruned model compiles and runs like any other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from cogent_compiler.driver import CompileOptions, compile
from cogent_compiler.errors import IllegalPlanError
from cogent_compiler.frontend import from_module, trace
from cogent_compiler.passes import FoldBatchNorm, PruneChannels, kept_channels, prune_groups_of, single_tensor_cuts
from edge_support import infer_bundle


@pytest.mark.parametrize("channels,ratio,kept", [(64, 0.5, 32), (64, 0.3, 48), (96, 0.7, 32), (64, 0.95, 8), (8, 0.5, 8), (6, 0.9, 6),
                                                 (100, 0.0, 100), (100, 0.5, 48)])
def test_kept_channels_are_a_multiple_of_eight(channels, ratio, kept):
    assert kept_channels(channels, ratio) == kept


def test_bad_ratios_are_refused(tiny_graph):
    with pytest.raises(IllegalPlanError, match=r"prune ratio 1.0 for group 'stem' is outside \[0, 1\)"):
        PruneChannels({"stem": 1.0})(tiny_graph)
    with pytest.raises(IllegalPlanError, match="1 prune ratios name no group of this model: nope"):
        PruneChannels({"nope": 0.5})(tiny_graph)
    assert PruneChannels({})(tiny_graph) is tiny_graph


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Batch norms with non-trivial statistics, so that folding and pruning them is really checked."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "vgg16", "googlenet"])
def test_pruned_model_splits_lowers_and_runs_like_any_other(name, tmp_path):
    torch.manual_seed(0)
    extra = {"init_weights": True} if name == "googlenet" else {}
    model = _randomise_bn(getattr(torchvision.models, name)(weights=None, **extra)).eval()
    x = torch.rand(1, 3, 64, 64)
    graph = trace(from_module(model, (x,), name=name))
    analysis = prune_groups_of(graph)
    pruned = PruneChannels({g.name: 0.5 for g in analysis.groups})(graph)

    # physically smaller: fewer MACs and parameters, every pruned width a multiple of 8, the classes kept
    assert pruned.total_macs < 0.45 * graph.total_macs and pruned.total_param_bytes < 0.5 * graph.total_param_bytes
    convs = [(n, m) for n, m in pruned.module.named_modules() if isinstance(m, nn.Conv2d)]
    originals = dict(model.named_modules())
    for n, m in convs:
        assert m.out_channels % 8 == 0 or m.out_channels == originals[n].out_channels, (n, m.out_channels)
    assert sum(m.out_channels for _, m in convs) < 0.6 * sum(originals[n].out_channels for n, _ in convs)
    with torch.no_grad():
        expected = pruned.module(x).numpy()
    assert expected.shape == (1, 1000)

    # and it compiles and runs as two halves like any model: cut in the middle, TVM both sides, float32 on the wire
    cuts = single_tensor_cuts(FoldBatchNorm()(pruned))
    cut = cuts[len(cuts) // 2]
    options = CompileOptions(cut=(cut,), backend="tvm", use_tunedb=False, transfer_dtype="float32")
    result = compile(pruned, tmp_path / "out", options, progress=lambda *_: None)
    assert result.device.module is not None and result.edge.module is not None
    (outputs,) = infer_bundle(result.out_dir, [[x.numpy()]])
    got = next(iter(outputs.values()))
    scale = max(1.0, float(np.abs(expected).max()))
    assert float(np.abs(got - expected).max()) <= 1e-4 * scale


def test_a_vision_transformer_loses_mlp_and_embedding_channels_and_runs_as_two_halves(tmp_path):
    from tiny_models import tiny_vit

    model, x = tiny_vit(), torch.randn(1, 3, 32, 32)
    graph = trace(from_module(model, (x,), name="vit"))
    analysis = prune_groups_of(graph)
    assert analysis.output_layer == "head" and not analysis.left_out
    groups = {g.name: g for g in analysis.groups}
    # each block's MLP hidden features; the residual stream couples the patch embedding, attention, norms and head
    assert groups["blocks.layers.0.linear1"].channels == 256 and set(groups["blocks.layers.0.linear1"].members) == {
        "blocks.layers.0.linear1", "blocks.layers.0.linear2"}
    (stream,) = [g for g in analysis.groups if "patch" in g.members]
    assert stream.channels == 64 and {"blocks.layers.0.self_attn", "blocks.layers.1.norm2", "norm", "head"} <= set(stream.members)
    pruned = PruneChannels({g: 0.5 for g in groups})(graph)
    assert pruned.total_macs < 0.3 * graph.total_macs
    attn = pruned.module.blocks.layers[0].self_attn
    assert pruned.module.patch.out_channels == attn.embed_dim == 32 and attn.in_proj_weight.shape == (96, 32)
    with torch.no_grad():
        expected = pruned.module(x).numpy()
    assert expected.shape == (1, 10)

    cuts = single_tensor_cuts(FoldBatchNorm()(pruned))
    options = CompileOptions(cut=(cuts[len(cuts) // 2],), backend="tvm", use_tunedb=False, transfer_dtype="float32")
    result = compile(pruned, tmp_path / "out", options, progress=lambda *_: None)
    assert result.device.module is not None and result.edge.module is not None
    (outputs,) = infer_bundle(result.out_dir, [[x.numpy()]])
    assert float(np.abs(next(iter(outputs.values())) - expected).max()) <= 1e-4
