"""The model zoo's architectures (plain torch; every model maps pixel-space [n, 1, 28, 28] to 10 logits).

Input normalisation, where a model uses it, is a layer of the model (``Normalize``), so the exported
function, and so every certified radius, is in pixel space ([0, 1] per pixel).

- ``mlp``: Flatten, Linear 784→256, ReLU, Linear 256→128, ReLU, Linear 128→10.
- ``cnn`` (the zoo's standard CNN): Normalize, Conv 1→16 k4 s2 p1 (28→14), ReLU, Conv 16→32 k4 s2 p1
  (14→7), ReLU, Flatten, Linear 1568→100, ReLU, Linear 100→10.
- ``resnet``: Normalize, Conv 1→16 k3 s2 p1 + BN + ReLU (28→14); residual block 16→16 (identity
  shortcut); residual block 16→32 stride 2 (14→7) with a 1×1 stride-2 conv + BN shortcut; global
  average pooling; Linear 32→10. Each block: conv3×3-BN-ReLU-conv3×3-BN, add shortcut, ReLU.
- ``smooth_cnn``: ``cnn`` with Softplus (β = 1: slope ≤ 1, curvature ≤ 1/4) instead of ReLU, for the
  second-order certificate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# Fashion-MNIST training-set pixel mean and standard deviation (computed by fashion_data on the
# 60,000 training images: 0.2860406, 0.35302424).
MEAN = 0.2860
STD = 0.3530


class Normalize(nn.Module):
    """y = (x − mean) / std, elementwise with scalar constants (exports as ONNX Sub + Div)."""

    def __init__(self, mean: float = MEAN, std: float = STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def _cnn(act: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        act(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        act(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        act(),
        nn.Linear(100, 10),
    )


def cnn() -> nn.Module:
    return _cnn(nn.ReLU)


def smooth_cnn() -> nn.Module:
    return _cnn(nn.Softplus)


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); shortcut is identity or 1×1 conv + BN."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu(h + self.shortcut(x))


def resnet() -> nn.Module:
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        BasicBlock(16, 16, 1),
        BasicBlock(16, 32, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "mlp": mlp,
    "cnn": cnn,
    "resnet": resnet,
    "smooth_cnn": smooth_cnn,
}
