"""Small CNNs for scikit-learn's digits (1x32x32): what the pruning and policy benchmarks train and compress.

``vgg_digits``: three stages of two 3x3 convolutions with batch norm and max
pooling, a linear head; ``resnet_digits``: a stem and three stages of two
basic residual blocks (the later ones downsample with a 1x1 shortcut);
``mobile_digits``: MobileNetV2-style inverted residual blocks (1x1 expand,
3x3 depthwise, 1x1 project) -- the three couplings structured pruning must
respect (plain chains, residual adds, depthwise convolutions).
"""

from __future__ import annotations

from typing import Any


def vgg_digits() -> Any:
    from torch import nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
                         *block(64, 128), *block(128, 128), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128 * 16, 10))


def resnet_digits() -> Any:
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.short(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
            self.stages = nn.Sequential(Basic(32, 32, 1), Basic(32, 32, 1), Basic(32, 64, 2), Basic(64, 64, 1),
                                        Basic(64, 128, 2), Basic(128, 128, 1))
            self.head = nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stages(self.stem(x)).mean((2, 3)))

    return Net()


def mobile_digits() -> Any:
    import torch
    from torch import nn

    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
            super().__init__()
            mid = cin * expand
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
            )
            self.residual = stride == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.residual else y

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
        Inverted(32, 32, 1), Inverted(32, 48, 2), Inverted(48, 48, 1), Inverted(48, 96, 2), Inverted(96, 96, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10),
    )


MODELS = {"vgg_digits": vgg_digits, "resnet_digits": resnet_digits, "mobile_digits": mobile_digits}


def resnet18_digits() -> Any:
    """torchvision's ResNet-18, 10 classes: the torchvision architecture the end-to-end policy run trains on digits (3x128x128)."""
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=10)


#: the trained models ``benchmarks/e2e.py --policy`` compiles: (architecture, input shape, training steps)
TRAINED = {"vgg_digits": (vgg_digits, (1, 1, 32, 32), 1000), "resnet18_digits": (resnet18_digits, (1, 3, 128, 128), 400)}


def trained(name: str, seed: int = 0) -> Any:
    """``TRAINED[name]`` trained on digits (Adam, seeded), its weights cached as a state dict in ``~/.cache/cogent/digits-models``.

    The cache holds tensors only and is read with ``torch.load(weights_only=True)``: no code runs.
    """
    import os
    from pathlib import Path

    import torch

    from cogent_compiler.accuracy import finetune, load_data

    make, shape, steps = TRAINED[name]
    root = Path(os.environ.get("COGENT_DIGITS_MODELS", Path.home() / ".cache" / "cogent" / "digits-models"))
    path = root / f"{name}-{'x'.join(map(str, shape))}-{steps}-seed{seed}.pt"
    torch.manual_seed(seed)
    model = make()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        finetune(model, load_data("digits", shape, 10, seed=seed), steps=steps, lr=2e-3, seed=seed)
        root.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def vgg_digits_trained() -> Any:
    """Factory for ``cogentc benchmarks.digits_models:vgg_digits_trained --input-shape 1,1,32,32``."""
    return trained("vgg_digits")


def resnet18_digits_trained() -> Any:
    """Factory for ``cogentc benchmarks.digits_models:resnet18_digits_trained --input-shape 1,3,128,128``."""
    return trained("resnet18_digits")
