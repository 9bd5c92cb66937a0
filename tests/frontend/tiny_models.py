"""Small models the frontend tests load through every accepted format.

Importable as ``tiny_models`` once this folder is on ``sys.path`` (the tests
prepend it), so that ``tiny_models:tiny_cnn`` works as a factory spec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NOT_CALLABLE", "SkipUNet", "TinyCNN", "broken_factory", "not_a_module", "skip_unet", "tiny_cnn", "tiny_vit"]

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


class SkipUNet(nn.Module):
    """A two-level U-Net with long skips and two outputs, for splitting at cuts where many tensors cross.

    The encoder's features skip to the decoder (``cat``) and the input itself
    is added to the last layer, so a cut in the decoder sends the model input
    and encoder tensors beside the decoder's own.  A classifier on the
    bottleneck is a second output: a cut after it leaves that output to the
    head.  Returns ``(image, logits)``.
    """

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(3, 8, 3, padding=1)
        self.enc2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bottleneck = nn.Conv2d(16, 32, 3, padding=1)
        self.classifier = nn.Linear(32, classes)
        self.dec2 = nn.Conv2d(32 + 16, 16, 3, padding=1)
        self.dec1 = nn.Conv2d(16 + 8, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e1 = torch.relu(self.enc1(x))
        e2 = torch.relu(self.enc2(F.max_pool2d(e1, 2)))
        b = torch.relu(self.bottleneck(F.max_pool2d(e2, 2)))
        logits = self.classifier(torch.flatten(F.adaptive_avg_pool2d(b, 1), 1))
        d2 = torch.relu(self.dec2(torch.cat([F.interpolate(b, scale_factor=2.0), e2], 1)))
        d1 = torch.relu(self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1)))
        return self.head(d1) + x, logits


def tiny_vit() -> nn.Module:
    """A two-block vision transformer (8x8 patches of a 1x3x32x32 input, a class token, 64 features, 4 heads), seeded, in eval mode."""
    from cogent_compiler.cost.reference_nets import vision_transformer

    return vision_transformer(64, heads=4, depth=2, image=32, patch=8, classes=10)


def skip_unet() -> nn.Module:
    """``SkipUNet`` with seeded weights, in eval mode."""
    torch.manual_seed(0)
    return SkipUNet().eval()


class SmallCNN(nn.Module):
    """A classifier wide enough to prune (32 channels; groups of 8 or fewer are never pruned)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def small_cnn() -> nn.Module:
    """``tiny_models:small_cnn``: seeded, so every call gives the same weights."""
    torch.manual_seed(0)
    return SmallCNN().eval()


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
