"""Small models the frontend tests load through every accepted format.

Importable as ``tiny_models`` once this folder is on ``sys.path`` (the tests
prepend it), so that ``tiny_models:tiny_cnn`` works as a factory spec.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NOT_CALLABLE", "TinyCNN", "broken_factory", "not_a_module", "tiny_cnn"]

#: A module attribute that is not callable, for the bad-factory tests.
NOT_CALLABLE = 42


class TinyCNN(nn.Module):
    """conv-bn-relu stem, a residual block, max-pool, global pool and a linear head."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.stem(x)))
        y = y + self.conv_b(torch.relu(self.conv_a(y)))
        y = self.gap(self.pool(y))
        return self.fc(torch.flatten(y, 1))


def tiny_cnn() -> nn.Module:
    """The factory the tests load as ``tiny_models:tiny_cnn``; seeded so every call gives the same weights."""
    torch.manual_seed(0)
    return TinyCNN().eval()


def not_a_module() -> dict[str, int]:
    """A factory that returns the wrong kind of thing."""
    return {"a": 1}


def broken_factory() -> nn.Module:
    """A factory that fails."""
    raise RuntimeError("weights missing\nsecond line of detail")
