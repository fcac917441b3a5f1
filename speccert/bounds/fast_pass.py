"""The float32 pass of certify(): margins from a float32 forward pass where its proven error settles them.

A point is settled in float32 when, with A the rigorous float32 allowance of its margins
(speccert.bounds.float32_error: A >= |computed - exact| of every f_i - f_j),

- its prediction is decided: top-1 logit minus runner-up > 2 A (so it is the exact argmax), and
- it is misclassified (its radius is 0 in any precision), or its margin m = min_j f_y - f_j satisfies
  2 A <= tol (m - A): the safe margin m - A is then >= (1 - tol) times the exact margin, so no radius
  (margin / a constant, per class) is more than a relative `tol` below the one from the exact margin,
  which the float64 pass's radius never exceeds.

Every other point is recomputed in float64 (speccert.bounds.float_error's allowance). Because the
worst-case float32 bound (gamma_n with n the reduction length, D_v the Lipschitz bounds) is 0.5% to
130% of the median margin on the zoo and corpus (10^4 on a sigmoid net with L = 4e7) while the
observed error is ~1e-7 of it, the default tolerance 1e-6 (radii as the float64 pass gives them)
settles only misclassified points; `pays_off` then switches certify to float64.
"""

from __future__ import annotations

import numpy as np
import torch

from speccert.bounds.certificate import safe_margins
from speccert.bounds.float32_error import Float32ErrorModel, Float32NotCovered
from speccert.bounds.float_error import ErrorModel, ieee_float32
from speccert.bounds.lipschitz import LipschitzBound
from speccert.ir import Graph

Tensor = torch.Tensor
MAX_REDO_SHARE = 0.6
PROBE_POINTS = 8  # the first batch: enough to see that a tolerance settles nothing, cheap if so


def margins64(folded: Graph, errors: ErrorModel, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(float64 logits, safe margins) at the points x, computed in float64."""
    with torch.no_grad():
        acts = folded.activations(x.to(torch.float64))
    logits = acts[folded.output]
    return logits, safe_margins(logits, y, errors.bound(acts))


def settled(logits: Tensor, y: Tensor, allowance: Tensor, tolerance: float) -> Tensor:
    """Boolean [B]: points whose float32 logits (allowance A) settle prediction and radii (module doc)."""
    a = allowance
    if logits.shape[1] >= 2:
        top = logits.topk(2, dim=1).values
        decided = top[:, 0] - top[:, 1] > 2 * a
    else:
        decided = torch.isfinite(a)
    fy = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    m = fy - others.amax(1)
    pred = logits.argmax(1)
    return decided & torch.isfinite(a) & ((pred != y) | (2 * a <= tolerance * (m - a)))


class FastPass:
    """The float32 pass with its fallback; `margins` per batch, `pays_off` after each batch."""

    def __init__(
        self, graph32: Graph, model: Float32ErrorModel, folded: Graph, errors: ErrorModel, tolerance: float
    ) -> None:
        self.graph32, self.model, self.folded, self.errors = graph32, model, folded, errors
        self.tolerance = tolerance
        self.points = self.redone = 0

    @classmethod
    def create(
        cls,
        bound: LipschitzBound,
        folded: Graph,
        errors: ErrorModel,
        dtype: np.dtype,
        tolerance: float,
        dev: torch.device,
        notes: list[str],
    ) -> FastPass | None:
        """The fast pass, or None where it cannot be used (tolerance 0, integer data, a device that may
        substitute TF32/bf16 for float32, an op without a float32 rule: noted)."""
        if tolerance <= 0 or not np.issubdtype(dtype, np.floating) or not ieee_float32(dev):
            return None
        uppers = {n.name: n.upper for n in bound.layers}
        try:
            model = Float32ErrorModel(bound.folded, uppers, input_rounded=dtype != np.float32)
        except Float32NotCovered as why:
            notes.append(f"float32 pass not used: {why}")
            return None
        return cls(bound.folded.to(dev, torch.float32), model, folded, errors, tolerance)

    def margins(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, int]:
        """(logits, safe margins, points redone in float64) at the points x (any float dtype)."""
        with torch.no_grad(), torch.backends.nnpack.flags(enabled=False):
            acts = self.graph32.activations(x.to(torch.float32))
            logits = acts[self.graph32.output].to(torch.float64)
            allowance = self.model.allowance(acts)
        del acts
        m = safe_margins(logits, y, allowance)
        redo = ~settled(logits, y, allowance, self.tolerance)
        self.points += x.shape[0]
        count = int(redo.sum())
        if count:
            idx = redo.nonzero()[:, 0]
            l64, m64 = margins64(self.folded, self.errors, x[idx], y[idx])
            logits, m = logits.index_copy(0, idx, l64), m.index_copy(0, idx, m64)
            self.redone += count
        return logits, m, count

    def pays_off(self) -> bool:
        """Whether to keep the float32 pass: at most MAX_REDO_SHARE of the points seen so far were
        redone (a float32 pass costs 0.1-0.3 of a float64 one on the CPU, so it saves time below a
        share of 0.7-0.9; a fixed share keeps the choice, and the figures, independent of timing)."""
        return self.redone <= MAX_REDO_SHARE * self.points


def bound_over_margin(
    bound: LipschitzBound, x: np.ndarray, y: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Per point correctly classified in float32: the proven float32 allowance over the float32 margin
    min_j f_y - f_j (what `float32_tolerance` is compared with; a benchmark figure, on the CPU).
    Raises Float32NotCovered for graphs without a float32 rule."""
    uppers = {n.name: n.upper for n in bound.layers}
    model = Float32ErrorModel(bound.folded, uppers, input_rounded=x.dtype != np.float32)
    graph32 = bound.folded.to("cpu", torch.float32)
    out: list[np.ndarray] = []
    for i in range(0, len(x), batch_size):
        with torch.no_grad(), torch.backends.nnpack.flags(enabled=False):
            acts = graph32.activations(torch.from_numpy(x[i : i + batch_size]).to(torch.float32))
            logits = acts[graph32.output].to(torch.float64)
            allowance = model.allowance(acts)
        yb = torch.from_numpy(y[i : i + batch_size]).long()
        m = safe_margins(logits, yb, torch.zeros_like(allowance)).amin(1)
        out.append((allowance / m)[m > 0].numpy())
    return np.concatenate(out) if out else np.zeros(0)
