"""ResNet-18 (He et al. 2016) in torchvision's module layout, built without torchvision, and its IR graph.

`resnet18_module()` has the exact parameter names and shapes of `torchvision.models.resnet18`, so a
torchvision state_dict loads into it (`load_state_dict(torch.load(path, weights_only=True))`). Its
default initialisation mirrors torchvision's (Kaiming-normal fan_out convs, BatchNorm weight 1 bias 0,
running mean 0 / var 1). This machine has no network, so the zoo's pretrained weights cannot be
downloaded here: pass a state_dict file to use trained weights.
`resnet18_graph(module)` translates it into the speccert IR (224x224 input by default).
"""

from __future__ import annotations

import torch
from torch import nn

from speccert.ir import Graph, Node
from speccert.ir.ops import Activation, Add, BatchNorm, Conv, GlobalAvgPool, Linear, MaxPool, Reshape


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + idt)


class ResNet18(nn.Module):
    """torchvision's ResNet-18; `width` scales every layer's channels (64, 128, 256, 512) x width."""

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        widths = tuple(max(1, round(c * width)) for c in (64, 128, 256, 512))
        cin = widths[0]
        self.conv1 = nn.Conv2d(3, cin, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(BasicBlock(cin, w, stride), BasicBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18_module(seed: int = 0, weights: str | None = None, width: float = 1.0) -> ResNet18:
    torch.manual_seed(seed)
    m = ResNet18(width=width)
    if weights is not None:
        m.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return m.eval()


def _conv(c: nn.Conv2d) -> Conv:
    s, p, d = c.stride, c.padding, c.dilation
    assert isinstance(p, tuple)
    return Conv(
        c.weight.detach(),
        None if c.bias is None else c.bias.detach(),
        tuple(s),
        tuple((q, q) for q in p),
        tuple(d),
        c.groups,
    )


def _bn(b: nn.BatchNorm2d) -> BatchNorm:
    assert b.running_mean is not None and b.running_var is not None
    return BatchNorm(
        b.running_mean.detach(), b.running_var.detach(), b.weight.detach(), b.bias.detach(), b.eps
    )


def resnet18_graph(module: ResNet18 | None = None, size: int = 224) -> Graph:
    """The IR of `module` (a fresh seeded ResNet-18 by default) on a 3 x size x size input."""
    m = module if module is not None else resnet18_module()
    nodes = [
        Node("conv1", _conv(m.conv1), ("input",)),
        Node("bn1", _bn(m.bn1), ("conv1",)),
        Node("relu", Activation("relu"), ("bn1",)),
        Node("maxpool", MaxPool((3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)), ("relu",)),
    ]
    x = "maxpool"
    for li in range(1, 5):
        for bi, blk in enumerate(getattr(m, f"layer{li}")):
            p = f"layer{li}.{bi}"
            nodes += [
                Node(f"{p}.conv1", _conv(blk.conv1), (x,)),
                Node(f"{p}.bn1", _bn(blk.bn1), (f"{p}.conv1",)),
                Node(f"{p}.relu1", Activation("relu"), (f"{p}.bn1",)),
                Node(f"{p}.conv2", _conv(blk.conv2), (f"{p}.relu1",)),
                Node(f"{p}.bn2", _bn(blk.bn2), (f"{p}.conv2",)),
            ]
            idt = x
            if blk.downsample is not None:
                nodes += [
                    Node(f"{p}.downsample.0", _conv(blk.downsample[0]), (x,)),
                    Node(f"{p}.downsample.1", _bn(blk.downsample[1]), (f"{p}.downsample.0",)),
                ]
                idt = f"{p}.downsample.1"
            nodes += [
                Node(f"{p}.add", Add(), (f"{p}.bn2", idt)),
                Node(f"{p}.relu2", Activation("relu"), (f"{p}.add",)),
            ]
            x = f"{p}.relu2"
    nodes += [
        Node("avgpool", GlobalAvgPool(), (x,)),
        Node("flatten", Reshape((m.fc.in_features,)), ("avgpool",)),
        Node("fc", Linear(m.fc.weight.detach(), m.fc.bias.detach()), ("flatten",)),
    ]
    return Graph((3, size, size), nodes)
