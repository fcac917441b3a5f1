"""The random classifiers of the soundness fuzzer (speccert.devtools.fuzz): a small grammar drawn from
one seed, so a seed names one network exactly.

Base network (first random stream): an optional input normalisation, 1-3 blocks (Conv with random
kernel / stride / padding / dilation / groups and optional BatchNorm with random statistics, a residual
addition, a channel concatenation, max or average pooling), one activation kind for the whole network
(smooth ones, ReLU, leaky ReLU, MaxMin where the channel count is even), a Linear head. Variations
(second stream, so each seed's base network stays fixed when they change): zero padding or a global
average pool before the head, a channels-last input, a Softmax output, the .pt2 route, and every
activation swapped for a parametrised one (leaky ReLU with slopes in [-2.5, 2.5], ELU with alpha on both
sides of 1, PReLU, hardtanh, CELU, SELU, ReLU6, hardswish, hardsigmoid, SiLU).
A third stream may add one block before the head: a transposed conv, an average pool with ceil mode and
no padding counted, a dilated or ceil-mode max-pool, LayerNorm, GroupNorm, an L2 pool, the max of two
conv branches or a channel shuffle.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
}


@dataclass
class Drawn:
    """A drawn network (as written to the file), its logits (the same without a final Softmax), its
    input shape, a description of its layers and how it is written ("onnx" or "pt2")."""

    model: nn.Module
    input_shape: tuple[int, int, int]
    layers: list[str]
    logits: nn.Module
    route: str = "onnx"


class _NHWC(nn.Module):
    """A channels-last input transposed inside the graph (as TensorFlow exports do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class _MaxMin(nn.Module):
    """MaxMin over axis 1: channel i paired with i + C/2, (max, min) written back (GroupSort 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        pairs = x.reshape(n, 2, c // 2, *x.shape[2:])
        out: torch.Tensor = pairs.sort(dim=1, descending=True).values.reshape(x.shape)
        return out


def _act(name: str, channels: int) -> nn.Module:
    """The drawn activation; MaxMin needs an even channel count (ReLU in its place otherwise)."""
    if name == "maxmin":
        return _MaxMin() if channels % 2 == 0 else nn.ReLU()
    return ACTS[name]()


def _act_name(name: str, channels: int) -> str:
    return "relu" if name == "maxmin" and channels % 2 else name


class _Residual(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.body(x)
        return out


class _Concat(nn.Module):
    def __init__(self, a: nn.Module, b: nn.Module) -> None:
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


class _Normalize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _bn(c: int, rng: np.random.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    assert bn.running_mean is not None and bn.running_var is not None  # track_running_stats (default)
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.5, c)))
        bn.running_var.copy_(torch.from_numpy(rng.uniform(0.05, 2.0, c)))
        bn.weight.copy_(torch.from_numpy(rng.normal(1, 0.5, c)))
        bn.bias.copy_(torch.from_numpy(rng.normal(0, 0.3, c)))
    return bn


def draw(seed: int) -> Drawn:
    """The network of `seed` (deterministic), in eval mode, float32 like a user's file."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    c = int(rng.choice([1, 2, 3]))
    hw = int(rng.choice([6, 7, 8, 9]))
    shape = (c, hw, hw)
    layers: list[nn.Module] = []
    text: list[str] = []
    if rng.random() < 0.5:
        mean = torch.from_numpy(rng.uniform(0.2, 0.6, (c, 1, 1))).float()
        std = torch.from_numpy(rng.uniform(0.15, 0.4, (c, 1, 1))).float()
        layers.append(_Normalize(mean, std))
        text.append("normalize")
    act = str(rng.choice([*ACTS, "maxmin"]))
    for _ in range(int(rng.integers(1, 4))):
        kind = str(rng.choice(["conv", "conv", "residual", "concat", "pool"]))
        if kind == "pool" and hw >= 4:
            k = int(rng.choice([2, 3]))
            s = int(rng.choice([1, 2]))
            p = int(rng.integers(0, k // 2 + 1))
            if rng.random() < 0.5:
                layers.append(nn.MaxPool2d(k, s, p))
                text.append(f"maxpool k{k} s{s} p{p}")
            else:
                layers.append(nn.AvgPool2d(k, s, p))
                text.append(f"avgpool k{k} s{s} p{p}")
            hw = (hw + 2 * p - k) // s + 1
            continue
        if kind == "residual":
            k = int(rng.choice([1, 3]))
            body = nn.Sequential(
                nn.Conv2d(c, c, k, padding=k // 2), _act(act, c), nn.Conv2d(c, c, k, padding=k // 2)
            )
            layers.append(_Residual(body))
            text.append(f"residual(conv{k} {c}->{c}, {_act_name(act, c)}, conv{k})")
            continue
        if kind == "concat":
            c1, c2 = int(rng.integers(1, 4)), int(rng.integers(1, 4))
            layers += [_Concat(nn.Conv2d(c, c1, 3, padding=1), nn.Conv2d(c, c2, 1)), _act(act, c1 + c2)]
            text.append(f"concat(conv3 {c}->{c1}, conv1 {c}->{c2}), {_act_name(act, c1 + c2)}")
            c = c1 + c2
            continue
        k = int(rng.choice([1, 2, 3]))
        s = int(rng.choice([1, 1, 2]))
        d = int(rng.choice([1, 1, 2]))
        p = int(rng.integers(0, 3))
        if hw + 2 * p - d * (k - 1) < 1:
            p = d * (k - 1)
        cout = int(rng.choice([2, 3, 4, 6]))
        groups = c if (c > 1 and cout % c == 0 and rng.random() < 0.4) else 1
        layers.append(nn.Conv2d(c, cout, k, stride=s, padding=p, dilation=d, groups=groups))
        desc = f"conv k{k} s{s} p{p} d{d} g{groups} {c}->{cout}"
        if rng.random() < 0.4:
            layers.append(_bn(cout, rng))
            desc += " bn"
        layers.append(_act(act, cout))
        text.append(f"{desc}, {_act_name(act, cout)}")
        c = cout
        hw = (hw + 2 * p - d * (k - 1) - 1) // s + 1
    hidden = int(rng.choice([5, 8, 12]))
    classes = int(rng.choice([3, 4]))
    layers += [nn.Flatten(), nn.Linear(c * hw * hw, hidden), _act(act, hidden), nn.Linear(hidden, classes)]
    text.append(
        f"flatten, linear {c * hw * hw}->{hidden}, {_act_name(act, hidden)}, linear {hidden}->{classes}"
    )
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():  # weights of a trained net's size, not init's: margins of a few units
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                m.weight.mul_(float(rng.uniform(1.0, 2.5)))
    return _extras(_block(Drawn(model, shape, text, model), seed), seed)


class _Max2(nn.Module):
    """The elementwise max of two conv branches (an Extremum of two input-dependent tensors)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(self.a(x), self.b(x))


class _Shuffle(nn.Module):
    """ShuffleNet's channel shuffle with two groups: Reshape, Transpose, Reshape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def _block(d: Drawn, seed: int) -> Drawn:
    """A third stream (so the base network and the other variations stay what they were): one more
    block before the head, with the head's first Linear rebuilt for its output: a transposed conv, an
    average pool with ceil mode and no padding counted, a dilated or ceil-mode max-pool, LayerNorm,
    GroupNorm, an L2 pool, the max of two conv branches, or a channel shuffle."""
    rng = np.random.default_rng([seed, 2])
    if rng.random() >= 0.35:
        return d
    layers = list(d.model.children())
    head = next(i for i, m in enumerate(layers) if isinstance(m, nn.Flatten))
    c, hw = _shape_before(layers[:head], d.input_shape)
    kinds = ["convT", "maxmax"] + (["avgpool", "maxpool", "lppool"] if hw >= 3 else [])
    kinds += ["shuffle"] if c % 2 == 0 else []
    # normalisations over groups of at least two values (one value normalises to 0 whatever the input)
    kinds += ["layernorm"] if c * hw * hw >= 2 else []
    kinds += [f"groupnorm{g}" for g in sorted({2, c}) if g > 1 and c % g == 0 and c // g * hw * hw >= 2]
    kind = str(rng.choice(kinds))
    block: nn.Module
    if kind == "convT":
        k, st = int(rng.choice([2, 3])), int(rng.choice([1, 2]))
        pad, cout = int(rng.integers(0, k)), int(rng.choice([2, 3, 4]))
        out_pad = int(rng.integers(0, st))
        groups = 2 if c % 2 == 0 and cout % 2 == 0 and rng.random() < 0.3 else 1
        block = nn.ConvTranspose2d(c, cout, k, stride=st, padding=pad, output_padding=out_pad, groups=groups)
        text = f"convT k{k} s{st} p{pad} op{out_pad} g{groups} {c}->{cout}"
    elif kind == "avgpool":
        block, text = (
            nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
            "avgpool k3 s2 p1 ceil nopad",
        )
    elif kind == "maxpool":
        dilated = rng.random() < 0.5
        block = nn.MaxPool2d(2, 1, 0, dilation=2) if dilated else nn.MaxPool2d(3, 2, 0, ceil_mode=True)
        text = "maxpool k2 d2" if dilated else "maxpool k3 s2 ceil"
    elif kind == "lppool":
        block, text = nn.LPPool2d(2, 2, 2), "l2pool k2 s2"
    elif kind == "layernorm":
        block, text = nn.LayerNorm([c, hw, hw]), "layernorm"
    elif kind.startswith("groupnorm"):
        g = int(kind[len("groupnorm") :])
        block, text = nn.GroupNorm(g, c), f"groupnorm {g}"
    elif kind == "maxmax":
        block, text = _Max2(c), f"max(conv3 {c}->{c}, conv1 {c}->{c})"
    else:
        block, text = _Shuffle(), "channel shuffle"
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.LayerNorm | nn.GroupNorm):
                m.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, m.weight.shape)))
                m.bias.copy_(torch.from_numpy(rng.normal(0, 0.2, m.bias.shape)))
    layers = _before_head(d, layers, head, block, text, rng)
    model = nn.Sequential(*layers).eval()
    return Drawn(model, d.input_shape, d.layers, model, d.route)


def _before_head(
    d: Drawn, layers: list[nn.Module], head: int, block: nn.Module, text: str, rng: np.random.Generator
) -> list[nn.Module]:
    """`layers` with `block` inserted before the Flatten at `head` and the head's first Linear rebuilt
    for the block's output (weights scaled like the others); `d.layers` says so."""
    c, hw = _shape_before([*layers[:head], block], d.input_shape)
    lin = layers[head + 1]
    assert isinstance(lin, nn.Linear)
    new = nn.Linear(c * hw * hw, lin.out_features)
    with torch.no_grad():
        new.weight.mul_(float(rng.uniform(1.0, 2.5)))
    d.layers[-1] = d.layers[-1].replace(f"linear {lin.in_features}->", f"linear {new.in_features}->", 1)
    d.layers.insert(len(d.layers) - 1, text)
    return [*layers[:head], block, layers[head], new, *layers[head + 2 :]]


def _extras(d: Drawn, seed: int) -> Drawn:
    """Variations drawn from a second stream (so each seed's base network stays what it was): zero
    padding or a global average pool before the head, a channels-last input, a Softmax output, and the
    .pt2 route (torch.export) instead of ONNX."""
    rng = np.random.default_rng([seed, 1])
    layers = list(d.model.children())
    head = next(i for i, m in enumerate(layers) if isinstance(m, nn.Flatten))
    pre: nn.Module | None = None
    shape = d.input_shape
    if rng.random() < 0.25:
        p = int(rng.choice([1, 2]))
        pre, text = nn.ZeroPad2d(p), f"zeropad {p}"
    elif rng.random() < 0.3:
        pre, text = nn.AdaptiveAvgPool2d(1), "global avgpool"
    if pre is not None:
        layers = _before_head(d, layers, head, pre, text, rng)
    if rng.random() < 0.2:
        layers.insert(0, _NHWC())
        shape = (shape[1], shape[2], shape[0])
        d.layers.insert(0, "nhwc input")
    logits = nn.Sequential(*layers).eval()
    model = logits
    softmax = rng.random() < 0.2
    if softmax:
        model = nn.Sequential(*layers, nn.Softmax(dim=1)).eval()
        d.layers.append("softmax")
    route = "pt2" if rng.random() < 0.3 else "onnx"
    if rng.random() < 0.3:  # drawn last, so the variations above stay what they were for every seed
        kind = str(rng.choice(list(PARAMETRISED)))
        param = float(rng.uniform(*PARAMETRISED[kind][1]))
        layers = _swap_activations(layers, PARAMETRISED[kind][0], param)
        names = re.compile(r"\b(" + "|".join(sorted([*ACTS, "maxmin"], key=len, reverse=True)) + r")\b")
        label = f"{kind}({param:.3g})" if PARAMETRISED[kind][1][1] > 0 else kind
        d.layers = [names.sub(label, t) for t in d.layers]
        logits = nn.Sequential(*layers).eval()
        model = nn.Sequential(*layers, nn.Softmax(dim=1)).eval() if softmax else logits
    d.layers.append(f"as {route}")
    return Drawn(model, shape, d.layers, logits, route)


# Activations with a parameter that changes their constants (name -> (module from the parameter, the
# parameter's range)): slopes above 1 and negative ones, ELU's alpha on both sides of 1, clipping bounds.
PARAMETRISED: dict[str, tuple[Callable[[float], nn.Module], tuple[float, float]]] = {
    "leaky_relu": (nn.LeakyReLU, (-2.5, 2.5)),
    "elu": (nn.ELU, (0.2, 2.5)),
    "prelu": (lambda a: nn.PReLU(1, a), (-2.0, 2.0)),
    "hardtanh": (lambda a: nn.Hardtanh(-a, 2 * a), (0.2, 2.0)),
    "celu": (nn.CELU, (0.3, 2.0)),
    "selu": (lambda a: nn.SELU(), (0.0, 0.0)),
    "relu6": (lambda a: nn.ReLU6(), (0.0, 0.0)),
    "hardswish": (lambda a: nn.Hardswish(), (0.0, 0.0)),
    "hardsigmoid": (lambda a: nn.Hardsigmoid(), (0.0, 0.0)),
    "silu": (lambda a: nn.SiLU(), (0.0, 0.0)),
}
_ACT_TYPES = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.GELU, _MaxMin)


def _swap_activations(
    layers: list[nn.Module], make: Callable[[float], nn.Module], param: float
) -> list[nn.Module]:
    """`layers` with every activation module (inside residual blocks too) replaced by make(param)."""
    for m in layers:
        if isinstance(m, _Residual):
            for name, child in list(m.body.named_children()):
                if isinstance(child, _ACT_TYPES):
                    setattr(m.body, name, make(param))
    return [make(param) if isinstance(m, _ACT_TYPES) else m for m in layers]


def _shape_before(layers: list[nn.Module], shape: tuple[int, int, int]) -> tuple[int, int]:
    """Channels and (square) side of the activations after `layers` on an input of `shape`."""
    with torch.no_grad():
        out = nn.Sequential(*layers).eval()(torch.zeros(1, *shape))
    return int(out.shape[1]), int(out.shape[2])


__all__ = ["ACTS", "Drawn", "draw"]
