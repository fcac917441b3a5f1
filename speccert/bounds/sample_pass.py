"""The per-sample pass of certify(): every certificate kind on every sample, in batches.

Margins come from a float64 forward pass of the folded graph, lowered by the rounding allowance of
speccert.bounds.float_error; for float32 data and first-order certificates on an IEEE float32 device, a
float32 pass with the float32 allowance, redone in float64 where that allowance is not negligible.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from speccert.bounds.certificate import (
    CERTIFICATES,
    Batch,
    CertContext,
    Certificate,
    NotApplicable,
    finish_radius,
    safe_margins,
)
from speccert.bounds.float_error import FLOAT32_UNIT, ErrorModel, ieee_float32
from speccert.bounds.lipschitz import LipschitzBound
from speccert.bounds.options import CertifyOptions
from speccert.data import Dataset
from speccert.errors import UsageError
from speccert.ir import Graph

Tensor = torch.Tensor
Progress = Callable[[str, int, int], None]
FAST_TOLERANCE = 1e-4


@dataclass
class Samples:
    """Per-sample results of the certify pass (numpy arrays of length n) and its seconds."""

    preds: np.ndarray
    margins: np.ndarray
    per_kind: dict[str, np.ndarray]
    names: list[str]
    seconds: float = 0.0

    @property
    def radius(self) -> np.ndarray:
        """Best radius over the certificate kinds (0 where misclassified)."""
        stacked = (
            np.stack([self.per_kind[k] for k in self.names]) if self.names else np.zeros((1, len(self.preds)))
        )
        return np.asarray(stacked.max(0))

    def kind(self) -> np.ndarray:
        stacked = (
            np.stack([self.per_kind[k] for k in self.names]) if self.names else np.zeros((1, len(self.preds)))
        )
        best = np.asarray(self.names, dtype=object)[stacked.argmax(0)] if self.names else "none"
        return np.where(self.radius > 0, best, "none")


def check_kinds(names: Sequence[str] | None) -> None:
    """Raise UsageError (one line) unless `names` is None or names registered kinds ("all" = every one)."""
    if names is None:
        return
    known = CERTIFICATES.keys()
    out = list(known) if "all" in names else list(names)
    unknown = [n for n in out if n not in known]
    if unknown or not out:
        raise UsageError(
            f"unknown certificate {', '.join(unknown) or '(none)'}; choose from {', '.join(known)} or all"
        )


def _certificates(ctx: CertContext, opts: CertifyOptions, notes: list[str]) -> list[Certificate]:
    """The kinds to run: `opts.certificates` (or "all"), else every kind that is not opt-in, second
    order only with `opts.second_order`."""
    chosen = opts.certificates
    out: list[Certificate] = []
    for name, cls in CERTIFICATES.items():
        if chosen is not None:
            if name not in chosen and "all" not in chosen:
                continue
        elif getattr(cls, "opt_in", False) or (name == "second_order" and not opts.second_order):
            continue
        try:
            out.append(cls(ctx))
        except NotApplicable as why:
            notes.append(f"{name} certificate not used: {why}")
    return out


def certify_samples(
    bound: LipschitzBound,
    folded: Graph,
    ds: Dataset,
    opts: CertifyOptions,
    dev: torch.device,
    notes: list[str],
    progress: Progress | None,
) -> Samples:
    """Every certificate kind on every sample, in batches; float32 fast path where it is sound."""
    certs = _certificates(CertContext(bound, folded, dev, opts.crc_steps), opts, notes)
    uppers = {n.name: n.upper for n in bound.layers}
    errors = ErrorModel(bound.folded, uppers)
    # float32 data and first-order certificates only: a float32 pass with a float32 error allowance,
    # float64 again only where that allowance is not negligible (see _fast_margins).
    fast = ds.x.dtype == np.float32 and not any(c.needs_grad for c in certs) and ieee_float32(dev)
    fast32 = (
        (bound.folded.to(dev, torch.float32), ErrorModel(bound.folded, uppers, unit=FLOAT32_UNIT))
        if fast
        else None
    )
    n = len(ds)
    out = Samples(
        np.zeros(n, dtype=np.int64),
        np.zeros(n, dtype=np.float64),
        {c.name: np.zeros(n, dtype=np.float64) for c in certs},
        [c.name for c in certs],
    )
    t0 = time.perf_counter()
    for start in range(0, n, opts.batch_size):
        if progress is not None:
            progress("certify", start, n)
        xnp = ds.x[start : start + opts.batch_size]
        yb = torch.from_numpy(ds.y[start : start + opts.batch_size]).to(dev)
        if fast32 is not None:
            xb = torch.from_numpy(xnp).to(device=dev)
            logits, m, redone = _fast_margins(fast32[0], fast32[1], folded, errors, xb, yb)
            if redone > 0.5:  # the float32 allowance is not negligible for this model: float64 from now on
                fast32 = None
        else:
            xb = torch.from_numpy(xnp).to(device=dev, dtype=torch.float64)
            logits, m = _margins64(folded, errors, xb, yb)
        _record(out, certs, Batch(xb, yb, logits, m), slice(start, start + xb.shape[0]))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    out.seconds = time.perf_counter() - t0
    if progress is not None:
        progress("certify", n, n)
    return out


def _record(out: Samples, certs: list[Certificate], batch: Batch, sl: slice) -> None:
    pred = batch.logits.argmax(1)
    correct = pred == batch.y
    out.preds[sl] = pred.cpu().numpy()
    out.margins[sl] = batch.margins.amin(1).cpu().numpy()
    for c in certs:
        r = finish_radius(c.radii(batch).amin(1))
        out.per_kind[c.name][sl] = torch.where(correct, r, torch.zeros_like(r)).cpu().numpy()


def _margins64(folded: Graph, errors: ErrorModel, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(float64 logits, safe margins) at float64 points x."""
    with torch.no_grad():
        acts = folded.activations(x.to(torch.float64))
    logits = acts[folded.output]
    return logits, safe_margins(logits, y, errors.bound(acts))


def _fast_margins(
    folded32: Graph, errors32: ErrorModel, folded: Graph, errors: ErrorModel, x: Tensor, y: Tensor
) -> tuple[Tensor, Tensor, float]:
    """(logits, safe margins, fraction recomputed in float64) from a float32 forward pass (float32 points x), its error allowed for with the
    float32 unit roundoff (the float32 copy of the weights included). Where the allowance exceeds
    FAST_TOLERANCE times |raw margin| (near-ties, tiny margins) the point is recomputed in float64, so
    the fast path costs at most a relative FAST_TOLERANCE of margin, and never soundness."""
    with torch.no_grad(), torch.backends.nnpack.flags(enabled=False):
        acts = folded32.activations(x)
    logits = acts[folded32.output].to(torch.float64)
    allowance = errors32.bound(acts)
    del acts
    m = safe_margins(logits, y, allowance)
    raw = m.amin(1) + allowance
    redo = allowance > FAST_TOLERANCE * raw.abs()
    if bool(redo.any()):
        idx = redo.nonzero()[:, 0]
        l64, m64 = _margins64(folded, errors, x[idx], y[idx])
        logits, m = logits.index_copy(0, idx, l64), m.index_copy(0, idx, m64)
    return logits, m, float(redo.double().mean())
