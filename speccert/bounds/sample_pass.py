"""The per-sample pass of certify(): every certificate kind on every sample, in batches.

Margins come from a float64 forward pass of the folded graph, lowered by the rounding allowance of
speccert.bounds.float_error. With `float32_tolerance` > 0, first-order certificates and an IEEE float32
device, a float32 pass is tried first (speccert.bounds.fast_pass) with the rigorous float32 allowance of
speccert.bounds.float32_error; points it cannot settle within the tolerance are redone in float64.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from speccert.bounds.certificate import (
    CERTIFICATES,
    Batch,
    CertContext,
    Certificate,
    NotApplicable,
    finish_radius,
)
from speccert.bounds.certificates._eps_search import settled
from speccert.bounds.certificates._per_point import PerPointCertificate
from speccert.bounds.fast_pass import PROBE_POINTS, FastPass, margins64
from speccert.bounds.float_error import ErrorModel
from speccert.bounds.lipschitz import LipschitzBound
from speccert.bounds.options import CertifyOptions
from speccert.data import Dataset
from speccert.errors import UsageError
from speccert.ir import Graph

Tensor = torch.Tensor
Progress = Callable[[str, int, int], None]


@dataclass
class Samples:
    """Per-sample results of the certify pass (numpy arrays of length n) and its seconds."""

    preds: np.ndarray
    margins: np.ndarray
    per_kind: dict[str, np.ndarray]
    names: list[str]
    seconds: float = 0.0
    float64_points: int = 0  # points whose margins came from the float64 pass
    # eps mode: per per-point kind, the points it did not test because the kinds before it already certify
    # them at the largest eps (their radius of that kind is 0: not evaluated, not "no certificate")
    untested: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def float64_share(self) -> float:
        """Share of the points certified from float64 margins (1.0 when the float32 pass is off)."""
        return self.float64_points / len(self.preds) if len(self.preds) else 0.0

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
    eps: Sequence[float] = (),
) -> Samples:
    """Every certificate kind on every sample, in batches; the float32 pass where it settles points.
    `eps`: the radii certified accuracy is asked at (the per-point kinds test only these with
    `opts.radius_search` "eps")."""
    certs = _certificates(CertContext(bound, folded, dev, opts.crc_steps, opts.crown_steps), opts, notes)
    uppers = {n.name: n.upper for n in bound.layers}
    errors = ErrorModel(bound.folded, uppers)
    fast = FastPass.create(bound, folded, errors, ds.x.dtype, opts.float32_tolerance, dev, notes)
    if fast is not None and any(c.needs_grad for c in certs):
        fast = None  # gradients (second order) are taken in float64
    n = len(ds)
    out = Samples(
        np.zeros(n, dtype=np.int64),
        np.zeros(n, dtype=np.float64),
        {c.name: np.zeros(n, dtype=np.float64) for c in certs},
        [c.name for c in certs],
    )
    t0 = time.perf_counter()
    start = 0
    while start < n:
        if progress is not None:
            progress("certify", start, n)
        # A short first batch probes whether the float32 pass settles points for this model and tolerance.
        size = min(opts.batch_size, PROBE_POINTS) if fast is not None and start == 0 else opts.batch_size
        xnp = ds.x[start : start + size]
        yb = torch.from_numpy(ds.y[start : start + size]).to(dev)
        if fast is not None:
            xb = torch.from_numpy(xnp).to(device=dev)
            logits, m, redone = fast.margins(xb, yb)
            out.float64_points += redone
            if not fast.pays_off():
                fast = None  # the float64 redo costs more than the float32 pass saves: float64 from now on
        else:
            xb = torch.from_numpy(xnp).to(device=dev, dtype=torch.float64)
            logits, m = margins64(folded, errors, xb, yb)
            out.float64_points += xb.shape[0]
        decide = tuple(eps) if opts.radius_search == "eps" else None
        sl = slice(start, start + xb.shape[0])
        tick = None if progress is None else _points_done(progress, sl.start, n)
        _record(out, certs, Batch(xb, yb, logits, m), sl, decide, tick)
        start += xb.shape[0]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    out.seconds = time.perf_counter() - t0
    if progress is not None:
        progress("certify", n, n)
    return out


def _points_done(progress: Progress, start: int, n: int) -> Callable[[str, int], None]:
    """tick(kind, done): a per-point kind's progress within the batch starting at point `start` of `n`."""
    return lambda kind, done: progress(kind, start + done, n)


def _kind_tick(tick: Callable[[str, int], None] | None, kind: str) -> Callable[[int], None] | None:
    return None if tick is None else lambda done: tick(kind, done)


def _record(
    out: Samples,
    certs: list[Certificate],
    batch: Batch,
    sl: slice,
    eps: tuple[float, ...] | None,
    tick: Callable[[str, int], None] | None = None,
) -> None:
    """Radii of every kind on one batch. With `eps` (eps mode) the per-point kinds run last, each told
    the best radius of the kinds before it (`known`), and decide only the eps that are still open; in
    full mode every kind reports its own radius (nothing known). `tick(kind, done)`: a per-point kind's
    points done in this batch, after each of its chunks."""
    pred = batch.logits.argmax(1)
    correct = pred == batch.y
    out.preds[sl] = pred.cpu().numpy()
    out.margins[sl] = batch.margins.amin(1).cpu().numpy()
    known = torch.zeros(batch.margins.shape[0], dtype=torch.float64, device=batch.margins.device)
    for c in sorted(certs, key=lambda c: isinstance(c, PerPointCertificate)):  # stable: order kept
        if not isinstance(c, PerPointCertificate):
            rad = c.radii(batch)
        elif eps is None:
            rad = c.radii(batch, _kind_tick(tick, c.name))
        else:
            rad = c.decide(batch, eps, known, _kind_tick(tick, c.name))
            skipped = settled(batch.margins, known, eps)  # the correct points decide_eps leaves out
            out.untested.setdefault(c.name, np.zeros(len(out.preds), dtype=bool))[sl] = skipped.cpu().numpy()
        r = finish_radius(rad.amin(1))
        r = torch.where(correct, r, torch.zeros_like(r))
        known = torch.maximum(known, r.to(known.dtype))
        out.per_kind[c.name][sl] = r.cpu().numpy()
