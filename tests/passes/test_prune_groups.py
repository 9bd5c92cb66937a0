"""Prune groups from torch-pruning's DependencyGraph: coupled layers, names, channels, IR nodes, and what is left out."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cogent_compiler.cli import main
from cogent_compiler.errors import PassError
from cogent_compiler.frontend import from_module, load_model, trace
from cogent_compiler.passes import PruneChannels, prune_groups_of
from cogent_compiler.passes.prune_groups import CRITERION


def _graph(model: nn.Module, size: int = 32, name: str = "m"):
    return trace(from_module(model.eval(), (torch.rand(1, 3, size, size),), name=name))


def test_resnet_residual_adds_couple_their_layers():
    torch.manual_seed(0)
    graph = _graph(torchvision.models.resnet18(weights=None), name="resnet18")
    analysis = prune_groups_of(graph)
    assert analysis.output_layer == "fc" and not analysis.left_out
    names = [g.name for g in analysis.groups]
    assert len(names) == len(set(names)) and "fc" not in names
    stem = analysis.group("conv1")  # the stem's output is added to every block output of layer1
    assert stem.channels == 64 and stem.criterion == CRITERION
    assert {"conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.1.conv2", "layer1.1.conv1", "layer2.0.conv1"} <= set(stem.members)
    inner = analysis.group("layer1.0.conv1")  # a block's first conv is coupled only to its own bn and the next conv
    assert set(inner.members) == {"layer1.0.conv1", "layer1.0.bn1", "layer1.0.conv2"}
    by_node = {n.name: n for n in graph.nodes}
    assert {by_node[n].attrs["module"] for n in inner.nodes} == {"layer1.0.conv1", "layer1.0.conv2"}
    # groups come from the input to the output
    assert names[0] == "conv1"


def test_mobilenet_depthwise_convs_lose_the_channels_they_are_fed():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None)
    analysis = prune_groups_of(_graph(model, name="mobilenet_v2"))
    # the 1x1 expansion and the 3x3 depthwise conv after it lose the same channels: one group (rooted at the depthwise conv)
    expand = analysis.group("features.2.conv.1.0")
    assert {"features.2.conv.0.0", "features.2.conv.0.1", "features.2.conv.1.0", "features.2.conv.1.1", "features.2.conv.2"} <= set(expand.members)
    assert model.features[2].conv[1][0].groups == expand.channels == 96
    assert analysis.output_layer == "classifier.1"


def test_a_layer_torch_pruning_mishandles_leaves_its_group_whole_with_a_warning(caplog):
    class RawConv(nn.Module):
        """A convolution written with F.conv2d and a bare parameter: torch-pruning cannot resize it correctly."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(c, c, 3, 3) * 0.1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight, padding=1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.raw, self.c2, self.fc = nn.Conv2d(3, 16, 3, padding=1), RawConv(16), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.c2(torch.relu(self.raw(self.c1(x)))).mean((2, 3)))

    torch.manual_seed(0)
    graph = _graph(Net(), size=8)
    analysis = prune_groups_of(graph)
    assert "raw" in analysis.group("c1").members
    with caplog.at_level(logging.WARNING):
        pruned = PruneChannels({"c1": 0.5, "c2": 0.5})(graph)
    assert "prune group c1 left whole" in caplog.text and "raw" in caplog.text
    assert pruned.module.c1.out_channels == 16 and pruned.module.c2.out_channels == 8  # the other group was pruned
    assert pruned.module(torch.rand(1, 3, 8, 8)).shape == (1, 10)


def test_a_model_without_an_eager_module_cannot_be_pruned(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()
    x = torch.rand(1, 3, 8, 8)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    graph = trace(load_model(tmp_path / "m.pt2"))
    with pytest.raises(PassError, match="pruning needs the model as a PyTorch nn.Module; load it as package.module:factory"):
        prune_groups_of(graph)


def test_cogentc_inspect_groups(capsys):
    assert main(["inspect", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--groups", "-q"]) == 0
    out = capsys.readouterr().out
    assert "prune groups; output layer kept whole:" in out and "criterion" in out.splitlines()[0]
    assert main(["inspect", "tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--groups", "--json", "-q"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["groups"] and all(g["channels"] > 0 and g["members"] and g["nodes"] for g in doc["groups"])
