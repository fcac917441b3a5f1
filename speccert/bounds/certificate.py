"""What every certificate kind provides, the registry of kinds, and the floating-point safety rules.

A certificate kind turns the logits of a batch (and anything it precomputed from the `LipschitzBound`)
into radii r[b, j]: no perturbation of L2 norm < r[b, j] makes f_j >= f_y (y the label). The radius of a
point under a kind is min_j r[b, j]; the reported radius of the point is the best (largest) of the kinds.

Floating point: logits are computed in float64 on the folded graph (the certified function). Each margin
m_j = f_y - f_j is lowered by a bound on the float64 error of the forward pass at that point
(speccert.bounds.float_error: per-node rounding errors times the Lipschitz bound from the node to the
logits). Each radius is then multiplied by (1 - RADIUS_SLACK) and rounded down, which absorbs the
rounding of the few float64 operations of the radius formula (denominators are rounded up where they are
built). The reported radius therefore never exceeds the exact radius of the certificate.

Each kind is one module of speccert.bounds.certificates holding one `@register_certificate` class; this
module loads that package itself (`Registry.load_package`), so a new kind is one new file there. The
registry lists kinds by their `order` class attribute (then name), whatever the import order: that is
the order in which they are tried and reported (`kinds`, `wins`; the first best kind wins a tie).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from speccert.bounds.lipschitz import LipschitzBound
from speccert.ir import Graph
from speccert.registry import Registry

Tensor = torch.Tensor

RADIUS_SLACK = 1e-7
GRADIENT_SLACK = 1e-7


class NotApplicable(Exception):  # noqa: N818 - a signal between certify() and certificate kinds
    """Raised by a certificate kind's constructor when it cannot be used for this model (with why)."""


@dataclass(frozen=True)
class CertContext:
    """What certificate kinds may use: the bound, the folded float64 graph on the device, the device."""

    bound: LipschitzBound
    graph: Graph
    device: torch.device
    crc_steps: int = 0  # > 0: the second-order certificate's dual refinement (speccert.bounds.crc)
    crown_steps: int = 0  # > 0: the crown certificate's optimised lower slopes (speccert.bounds.crown)


@dataclass
class Batch:
    """One batch: inputs (float64, on device), labels, logits (float64) and safe margins.

    margins[b, j] = f_y - f_j lowered by the float64 allowance (+inf at j = y).
    """

    x: Tensor
    y: Tensor
    logits: Tensor
    margins: Tensor


class Certificate:
    """Base class: `radii(batch)` -> [B, C] tensor of per-class radii (inf at j = y), before slack."""

    name: str = "?"
    order: int = 1000  # place among the kinds: the registry lists kinds by (order, name)
    needs_grad: bool = False
    opt_in: bool = False  # expensive kinds run only when asked for by name (certify(certificates=...))

    def __init__(self, ctx: CertContext) -> None:
        self.ctx = ctx

    def radii(self, batch: Batch) -> Tensor:
        raise NotImplementedError


class _Kinds(Registry[str, type[Certificate]]):
    """The registry of certificate kinds, listed by (`order`, name) rather than registration order."""

    def _sorted(self) -> list[tuple[str, type[Certificate]]]:
        return sorted(super().items(), key=lambda kv: (kv[1].order, kv[0]))

    def items(self) -> list[tuple[str, type[Certificate]]]:
        return self._sorted()

    def keys(self) -> list[str]:
        return [k for k, _ in self._sorted()]

    def values(self) -> list[type[Certificate]]:
        return [v for _, v in self._sorted()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())


CERTIFICATES: Registry[str, type[Certificate]] = _Kinds("certificate")
"""Certificate kinds by name, in the order they are tried (filled by `register_certificate`)."""

CERTIFICATES_PACKAGE = "speccert.bounds.certificates"


def register_certificate(name: str) -> Callable[[type[Certificate]], type[Certificate]]:
    def deco(cls: type[Certificate]) -> type[Certificate]:
        cls.name = name
        CERTIFICATES.add(name, cls)
        return cls

    return deco


def safe_margins(logits: Tensor, y: Tensor, allowance: Tensor) -> Tensor:
    """m[b, j] = f_y - f_j - allowance[b] (inf at j = y): never above the exact margin when `allowance`
    bounds the float64 error of f_y - f_j (speccert.bounds.float_error)."""
    fy = logits.gather(1, y[:, None])
    m = fy - logits - allowance[:, None]
    return m.scatter(1, y[:, None], float("inf"))


def finish_radius(r: Tensor) -> Tensor:
    """Clamp at 0 and shrink by the relative slack: the reported radius is below the exact one."""
    r = torch.nan_to_num(r, nan=0.0, posinf=float("inf"))
    shrunk = (r.clamp_min(0.0) * (1.0 - RADIUS_SLACK)).nextafter(torch.zeros_like(r))
    return torch.where(torch.isinf(r), r, shrunk)  # a margin that no perturbation can close stays inf


# Last, once every name the kinds import from here exists: each module of the package registers its kind.
CERTIFICATES.load_package(CERTIFICATES_PACKAGE)
