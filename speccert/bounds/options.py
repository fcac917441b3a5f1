"""`CertifyOptions`: every setting of a certify run, in one frozen object passed unchanged by the
`certify` command, the CI gate, fine-tuning's evaluator and `bench` (one default per setting, here).

    >>> opts = CertifyOptions(method="fft", second_order=True)
    >>> opts.replace(device="cuda").device
    'cuda'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from speccert.errors import UsageError
from speccert.limits import check_refine_above, check_seed
from speccert.norms.method import EXACT_MAX_DIM, REFINE_ABOVE

RADIUS_SEARCHES = ("full", "eps")  # how the per-point kinds search (speccert.bounds.certificates._eps_search)
CROWN_STEPS = 0  # crown's optimised margin slopes: off (<= 2 % gain, up to 3.8x the cost; docs/certify.md)


@dataclass(frozen=True)
class CertifyOptions:
    """How to certify (what to certify, the model, data and eps, are arguments of `certify`).

    method: norm method for every layer (speccert.norms; "auto" = the tightest proven bound).
    device: where the certificates run ("cpu", "cuda", "cuda:1").
    exact_max_dim: largest Gram side the `exact` method certifies for zero-padded convs.
    refine_above: `auto` refines a layer whose upper / lower bound ratio is above this (inf: never).
    second_order: also use the curvature certificate (smooth networks), refined by `crc_steps` CRC
        gradient steps per test when > 0.
    crown_steps: Adam steps on the crown certificate's lower ReLU slopes per radius test (0 = the
        adaptive slopes only; speccert.bounds.crown).
    lower_bound: measure an empirical lower bound on L from `lower_points` data points.
    batch_size: samples per forward pass. seed: of the attack and of the lower-bound search.
    audit: attack this many certified points with PGD-L2 (`audit_steps`, `audit_restarts`).
    certificates: the certificate kinds to run (names in speccert.bounds.certificate.CERTIFICATES, or
        "all"); None = every kind that is not opt-in (the local certificate is opt-in).
    radius_search: how the per-point kinds (local, crown) look for each point's radius: "full" (the
        largest radius their search proves) or "eps" (only the requested eps values are tested, largest
        first after a probe at the smallest; a point's radius is then the best proven by those tests,
        a lower bound: speccert.bounds.certificates._eps_search).
    float32_tolerance: relative radius loss the float32 pass may cost (speccert.bounds.fast_pass); points
        it cannot settle within it are recomputed in float64. 0 = float64 only.
    """

    method: str = "auto"
    device: str = "cpu"
    exact_max_dim: int = EXACT_MAX_DIM
    refine_above: float = REFINE_ABOVE
    second_order: bool = False
    crc_steps: int = 0
    crown_steps: int = CROWN_STEPS
    lower_bound: bool = True
    lower_points: int = 64
    batch_size: int = 256
    seed: int = 0
    audit: int = 0
    audit_steps: int = 40
    audit_restarts: int = 4
    certificates: tuple[str, ...] | None = None
    float32_tolerance: float = 1e-6
    radius_search: str = "full"

    def replace(self, **changes: Any) -> CertifyOptions:
        """A copy with `changes` (field names of this class; anything else is a TypeError)."""
        if "device" in changes:
            changes["device"] = str(changes["device"])
        if changes.get("certificates") is not None:
            changes["certificates"] = tuple(changes["certificates"])
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Raise UsageError (one line, naming the CLI option) for an out-of-range setting."""
        if self.batch_size <= 0:
            raise UsageError(f"batch size must be positive, got {self.batch_size}")
        if self.audit < 0:
            raise UsageError(f"--audit must be >= 0, got {self.audit}")
        if self.lower_points < 1:
            raise UsageError(f"--lower-points must be >= 1, got {self.lower_points}")
        if not 0.0 <= self.float32_tolerance < 1.0:
            raise UsageError(f"--float32-tolerance must be in [0, 1), got {self.float32_tolerance}")
        check_refine_above(self.refine_above)
        check_seed(self.seed)
        twice = sorted({k for k in self.certificates or () if (self.certificates or ()).count(k) > 1})
        if twice:
            raise UsageError(f"--certificate lists {', '.join(twice)} more than once")
        if self.crown_steps < 0:
            raise UsageError(f"--crown-steps must be >= 0, got {self.crown_steps}")
        if self.radius_search not in RADIUS_SEARCHES:
            raise UsageError(
                f"--radius-search must be one of {', '.join(RADIUS_SEARCHES)}, got {self.radius_search!r}"
            )
        if self.crc_steps < 0 or (self.crc_steps > 0 and not self.second_order):
            raise UsageError(f"--crc-steps must be >= 0 and needs --second-order, got {self.crc_steps}")

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def options_from(options: CertifyOptions | None, overrides: dict[str, Any], caller: str) -> CertifyOptions:
    """`options` (default CertifyOptions()) with keyword overrides; an unknown keyword is the TypeError
    Python gives for a function's unexpected keyword argument."""
    unknown = sorted(set(overrides) - set(CertifyOptions.fields()))
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    return (options or CertifyOptions()).replace(**overrides)
