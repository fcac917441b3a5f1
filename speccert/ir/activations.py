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


def activation_lipschitz(name: str, alpha: float = 0.0) -> float:
    return ACTIVATIONS.get(name).lipschitz(alpha)


def activation_curvature(name: str, alpha: float = 0.0) -> float | None:
    return ACTIVATIONS.get(name).curvature(alpha)
