"""Elementwise activations: the forward function and the constants the certifier needs.

Constants are sound upper bounds, rounded up:
- `lipschitz`: sup |f'(x)|, the slope bound used by the first-order certificate;
- `curvature`: sup |f''(x)| (a Lipschitz constant of f'), or None where f' jumps (not smooth).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from speccert.registry import Registry

Tensor = torch.Tensor


@dataclass(frozen=True)
class ActivationSpec:
    name: str
    fn: Callable[[Tensor, float], Tensor]
    lipschitz: Callable[[float], float]
    curvature: Callable[[float], float | None]


ACTIVATIONS: Registry[str, ActivationSpec] = Registry("activation")


def _add(
    name: str,
    fn: Callable[[Tensor, float], Tensor],
    lip: Callable[[float], float],
    curv: Callable[[float], float | None],
) -> None:
    ACTIVATIONS.add(name, ActivationSpec(name, fn, lip, curv))


_add("identity", lambda x, a: x, lambda a: 1.0, lambda a: 0.0)
_add("relu", lambda x, a: F.relu(x), lambda a: 1.0, lambda a: None)
_add("leaky_relu", lambda x, a: F.leaky_relu(x, a), lambda a: max(1.0, abs(a)), lambda a: None)
# elu: f'(x) = alpha*e^x for x<0, 1 for x>0; f' is continuous (then 1-Lipschitz) only at alpha = 1.
_add("elu", lambda x, a: F.elu(x, a), lambda a: max(1.0, abs(a)), lambda a: abs(a) if a == 1.0 else None)
# sigmoid: f' <= 1/4; |f''| <= 1/(6*sqrt(3)) ~ 0.096225
_add("sigmoid", lambda x, a: torch.sigmoid(x), lambda a: 0.25, lambda a: 0.0962251)
# tanh: f' <= 1; |f''| <= 4/(3*sqrt(3)) ~ 0.769800
_add("tanh", lambda x, a: torch.tanh(x), lambda a: 1.0, lambda a: 0.7698004)
# softplus (beta=1): f' = sigmoid <= 1; f'' = sigmoid' <= 1/4
_add("softplus", lambda x, a: F.softplus(x), lambda a: 1.0, lambda a: 0.25)
# gelu (exact erf form): f' = Phi + x phi peaks at x = sqrt(2): 1.128904...; |f''| = |phi (2 - x^2)| <= 2 phi(0) = 0.797885
_add("gelu", lambda x, a: F.gelu(x), lambda a: 1.128905, lambda a: 0.797885)
# silu: f' peaks near x = 2.3994 at 1.099839...; |f''| <= 1/2 (at 0)
_add("silu", lambda x, a: F.silu(x), lambda a: 1.099840, lambda a: 0.5)

# clip (alpha = w >= 0): clamp(x, 0, w); ReLU6 is clip(6), and Clip(x, a, b) = a + clip(x - a; b - a)
# (importers write the shifts as Affine nodes). f' is 0 or 1: slope 1; f' jumps at 0 and w: no curvature.
_add("clip", lambda x, a: torch.clamp(x, 0.0, a), lambda a: 1.0, lambda a: None)
# hardswish: x * clip(x + 3; 6) / 6. f' = 0 (x < -3), (2x + 3)/6 on (-3, 3), 1 (x > 3), so
# sup|f'| = 9/6 = 1.5 (at x -> 3-); f' jumps at -3 (0 to -1/2) and 3 (3/2 to 1): no curvature.
_add("hardswish", lambda x, a: F.hardswish(x), lambda a: 1.5, lambda a: None)
# abs: |f'| = 1 away from 0, f' jumps at 0.
_add("abs", lambda x, a: torch.abs(x), lambda a: 1.0, lambda a: None)
# gelu_tanh: 0.5 x (1 + tanh(c (x + k x^3))), c = sqrt(2/pi), k = 0.044715 (torch approximate='tanh').
# Proof of both constants (tests/test_activation_constants.py redoes it): on [-12, 12] sampled with
# step h = 1e-5 in float64, max|f'| = 1.1289931 (x = 1.4185) and max|f''| = 0.7978846 (x = 0, where
# f''(0) = c exactly); between samples |f'| can exceed the sampled max by at most (h/2) sup|f''|
# <= 0.5e-5 * 0.8 = 4e-6, and |f''| by (h/2) sup|f'''| <= 0.5e-5 * 0.78 = 4e-6. For |x| > 12,
# |u| = c |x + k x^3| > 71, so f' is within 1e-59 of 0 or 1 and |f''| < 1e-56. Hence sup|f'| < 1.128998
# and sup|f''| < 0.797889; we store 1.129 and 0.79789.
_add("gelu_tanh", lambda x, a: F.gelu(x, approximate="tanh"), lambda a: 1.129, lambda a: 0.79789)


def activation_lipschitz(name: str, alpha: float = 0.0) -> float:
    return ACTIVATIONS.get(name).lipschitz(alpha)


def activation_curvature(name: str, alpha: float = 0.0) -> float | None:
    return ACTIVATIONS.get(name).curvature(alpha)
