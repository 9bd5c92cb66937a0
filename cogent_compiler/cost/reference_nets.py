"""Small reference networks: what a whole compiled half costs beyond the sum of its kernels.

A profile times each kernel on its own, repeated, so its weights and inputs
sit in the caches.  Inside a model each kernel runs once per inference after
others: its weights come from memory and its input from wherever the previous
kernel left it.  Measured on this machine (one thread), resnet18 took 7 %
and mobilenet_v2 27 % longer as a whole than the sum of their kernels timed
alone.

So ``cogentc profile`` also measures a few synthetic networks, built from the
blocks CNNs are made of at the resolutions they run at, none of them a real
model: plain 3x3 chains at 224 and 56 pixels, inverted-residual stacks at 112,
56 and 7 (the last with a classifier head), bottleneck and basic residual
stacks at 14, inception-style blocks with concatenations at 28, fully
connected layers, and a small vision transformer (8x8 patches of a 64x64
image, a class token, two pre-norm encoder blocks of 192 features).  Each sample (op ``graph``) records the
whole call, the sum of its kernels timed alone, its number of kernels, its
parameter bytes, the bytes its kernels write and its nodes;
``predictor.fit_profile`` fits the whole call against the predictor's own
prediction of those nodes and the other counts (``graph`` fit), and the
predictor applies that fit to every half it predicts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["REFERENCE_NETS", "reference_net", "vision_transformer"]

#: name -> input (channels, size); the networks themselves are built by ``reference_net``.
REFERENCE_NETS: dict[str, tuple[int, int]] = {
    "plain-224": (3, 224),
    "chain3x3-56": (32, 56),
    "inverted-112": (16, 112),
    "inverted-56": (24, 56),
    "bottleneck-14": (256, 14),
    "inception-28": (192, 28),
    "fc": (2048, 1),
    "basic-14": (256, 14),
    "inverted-7": (160, 7),
    "encoder-65": (3, 64),
}


def reference_net(name: str) -> tuple[Any, tuple[Any, ...]]:
    """``(nn.Module in eval mode, example inputs)`` of the reference network ``name``; weights seeded."""
    import torch
    from torch import nn

    if name not in REFERENCE_NETS:
        raise ValueError(f"no reference network {name!r}; networks: {', '.join(REFERENCE_NETS)}")
    torch.manual_seed(0)
    channels, size = REFERENCE_NETS[name]

    def conv(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1, relu: bool = True) -> nn.Module:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=g)]
        return nn.Sequential(*layers, nn.ReLU()) if relu else layers[0]

    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, s: int) -> None:
            super().__init__()
            mid = cin * 6
            self.body = nn.Sequential(conv(cin, mid, 1), conv(mid, mid, 3, s, mid), conv(mid, cout, 1, relu=False))
            self.residual = s == 1 and cin == cout

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.residual else y

    class Bottleneck(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(conv(c, c // 4, 1), conv(c // 4, c // 4, 3), conv(c // 4, c, 1, relu=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.body(x))

    class Basic(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.body = nn.Sequential(conv(c, c, 3), conv(c, c, 3, relu=False))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.body(x))

    class Inception(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.a = conv(c, 64, 1)
            self.b = nn.Sequential(conv(c, 96, 1), conv(96, 128, 3))
            self.c = nn.Sequential(conv(c, 16, 1), conv(16, 32, 3))
            self.d = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv(c, 32, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.b(x), self.c(x), self.d(x)], 1)

    net: nn.Module
    if name == "encoder-65":
        return vision_transformer(192, heads=3, depth=2, image=size, patch=8, classes=1000), (torch.randn(1, channels, size, size),)
    if name == "plain-224":
        net = nn.Sequential(conv(3, 32, 3, 2), conv(32, 32), conv(32, 64, 3, 2), conv(64, 64), nn.MaxPool2d(2, 2), conv(64, 128))
    elif name == "inverted-112":
        net = nn.Sequential(Inverted(16, 16, 1), Inverted(16, 24, 2), Inverted(24, 24, 1), Inverted(24, 32, 2))
    elif name == "chain3x3-56":
        net = nn.Sequential(conv(32, 64), conv(64, 64), conv(64, 128, s=2), conv(128, 128), conv(128, 256, s=2), conv(256, 256),
                            conv(256, 512, s=2), conv(512, 512), nn.AdaptiveAvgPool2d(1))
    elif name == "inverted-56":
        net = nn.Sequential(Inverted(24, 24, 1), Inverted(24, 32, 2), Inverted(32, 32, 1), Inverted(32, 64, 2), Inverted(64, 64, 1),
                            Inverted(64, 96, 1), Inverted(96, 160, 2), Inverted(160, 160, 1))
    elif name == "bottleneck-14":
        net = nn.Sequential(*(Bottleneck(256) for _ in range(3)), conv(256, 512, 3, 2), *(Bottleneck(512) for _ in range(2)))
    elif name == "inception-28":
        net = nn.Sequential(Inception(192), Inception(256), nn.MaxPool2d(3, 2, 1), Inception(256))
    elif name == "basic-14":
        net = nn.Sequential(Basic(256), Basic(256), conv(256, 512, 3, 2), Basic(512))
    elif name == "inverted-7":
        net = nn.Sequential(Inverted(160, 160, 1), Inverted(160, 160, 1), conv(160, 320, 1, relu=False), conv(320, 1280, 1),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000))
    else:  # fc
        net = nn.Sequential(nn.Flatten(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 1000))
    return net.eval(), (torch.randn(1, channels, size, size),)


def vision_transformer(dim: int, *, heads: int, depth: int, image: int, patch: int, classes: int) -> Any:
    """A ViT in eval mode (seeded): ``patch``-pixel patches, a class token, ``depth`` pre-norm blocks (attention, a GELU MLP of 4x ``dim``)."""
    import torch
    from torch import nn

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patch = nn.Conv2d(3, dim, patch, patch)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
            block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            tokens = self.patch(x).flatten(2).transpose(1, 2)
            tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
            return self.head(self.norm(self.blocks(tokens))[:, 0])

    torch.manual_seed(0)
    return ViT().eval()
