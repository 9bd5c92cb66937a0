"""The models the benchmarks measure and the tests compile, built the same way everywhere.

``BENCHMARK_MODELS`` are torchvision architectures with seeded random weights
(no downloads) plus one structurally pruned network:

- ``resnet18``, ``mobilenet_v2``, ``vgg16``, ``googlenet``: ``weights=None``
  after ``torch.manual_seed(0)``; googlenet without its auxiliary heads and
  with torchvision's own initialisation (``aux_logits=False,
  init_weights=True``).  Batch-norm running statistics are then set to seeded,
  non-trivial values, so that folding them is exercised rather than a no-op.
- ``resnet18_pruned50``: that resnet18 with half of the channels of every
  prunable group physically removed by torch-pruning's DepGraph (L1 magnitude
  importance, the classifier left alone so it still has 1000 outputs): about a
  quarter of the MACs.  Any ``<torchvision name>_pruned<percent>`` is built the
  same way.

``torch_model`` also takes any other torchvision classification model name
(``benchmarks/backends.py`` measures resnet50 too); ``inception_v3`` is built
without its auxiliary head and with PyTorch's default initialisation (its own
makes the logits explode), and needs inputs of at least 75x75 (299x299 as
trained).  A layer torchvision initialises to zero (the ViTs' classifier)
gets seeded small weights (normal, std 0.02): a zero classifier makes every
output 0 and every output comparison pass whatever the backend computed.
``benchmark_graph`` gives
the model the way the benchmarks compile it: exported, traced to Cogent's IR
and batch norm folded; ``graph.source`` is the ``ExportedProgram`` that
``compile_program(graph.source, "torch", ...)`` takes.

Import as ``benchmarks.models`` (the repository root on ``sys.path``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from cogent_compiler.ir import Graph

__all__ = [
    "BENCHMARK_MODELS",
    "INPUT_SHAPE",
    "benchmark_graph",
    "benchmark_model",
    "example_input",
    "prune_channels",
    "torch_model",
]

BENCHMARK_MODELS = ("resnet18", "mobilenet_v2", "vgg16", "googlenet", "resnet18_pruned50")
INPUT_SHAPE = (1, 3, 224, 224)

_WEIGHT_SEED = 0
_INPUT_SEED = 1
_BN_STATS_SEED = 3
#: constructor options beyond ``weights=None``
_OPTIONS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    # torchvision's own initialisation (truncated normal, std 0.1) makes inception_v3's logits ~1e13
    "inception_v3": {"aux_logits": False, "init_weights": False},
}
_PRUNED = re.compile(r"(?P<base>\w+?)_pruned(?P<percent>\d{1,2})")


def example_input(shape: tuple[int, ...] = INPUT_SHAPE) -> torch.Tensor:
    """A seeded standard-normal float32 input of ``shape`` (the same tensor on every call)."""
    import torch

    return torch.randn(*shape, generator=torch.Generator().manual_seed(_INPUT_SEED))


def torch_model(name: str) -> torch.nn.Module:
    """The model ``name`` in eval mode, with deterministic weights (see the module doc).

    ``name`` is a torchvision classification model (``resnet18``, ``resnet50``,
    ...) or ``<such a name>_pruned<percent>``.  Raises ``ValueError`` for
    anything else.
    """
    import torch
    import torchvision

    match = _PRUNED.fullmatch(name)
    if match:
        base = torch_model(match["base"])
        return prune_channels(base, int(match["percent"]) / 100, example_input())
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(
            f"unknown benchmark model {name!r}; use one of {', '.join(BENCHMARK_MODELS)}, another torchvision "
            "classification model, or <model>_pruned<percent>"
        )
    torch.manual_seed(_WEIGHT_SEED)
    model = torchvision.models.get_model(name, weights=None, **_OPTIONS.get(name, {})).eval()
    g = torch.Generator().manual_seed(_BN_STATS_SEED)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            elif isinstance(m, torch.nn.Linear) and not m.weight.any():
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.02)
    return model


def prune_channels(model: torch.nn.Module, ratio: float, example: torch.Tensor) -> torch.nn.Module:
    """Remove ``ratio`` of the channels of every prunable group of ``model``, in place; return it.

    torch-pruning's DepGraph finds the groups of layers whose channels must go
    together (a residual stage is one group); within each group the channels
    whose weights have the smallest L1 norm, averaged over the group's layers,
    go.  The last ``nn.Linear`` (the classifier) is
    not pruned, so the output keeps its size.  ``example`` is only used to
    trace the model (any valid input).  The result is in eval mode.
    """
    import torch
    import torch_pruning as tp

    if not 0 < ratio < 1:
        raise ValueError(f"pruning ratio must be in (0, 1), got {ratio}")
    model.eval()
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1:]
    # BasePruner is what MetaPruner/MagnitudePruner alias in torch-pruning 1.6
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=classifier,
    )
    pruner.step()
    return model.eval()


def benchmark_model(name: str, shape: tuple[int, ...] = INPUT_SHAPE) -> tuple[torch.nn.Module, torch.Tensor]:
    """``(model in eval mode, example input of shape)`` for ``name`` (see ``torch_model``)."""
    return torch_model(name), example_input(shape)


def benchmark_graph(name: str, shape: tuple[int, ...] = INPUT_SHAPE, *, fold_batch_norm: bool = True) -> Graph:
    """``name`` exported at ``shape``, traced to Cogent's IR and (by default) batch norm folded.

    ``graph.source`` is the ``ExportedProgram`` (after the folding) that
    ``compile_program`` lowers; ``graph.total_macs`` is the IR's cost.
    """
    from cogent_compiler.frontend import from_module, trace
    from cogent_compiler.passes import FoldBatchNorm

    model, x = benchmark_model(name, shape)
    graph = trace(from_module(model, (x,), name=name))
    return FoldBatchNorm()(graph) if fold_batch_norm else graph
