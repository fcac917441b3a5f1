"""`layer_norms` and the `auto` strategy: the tightest proven upper bound plus a Lanczos lower
bound for every linear node of `fold_linear(graph)`.

auto, per layer: an exact closed form if there is one; else the dense SVD if the matrix is small; else the
Cholesky-certified explicit Gram matrix (`exact`) if its smaller side is <= 2048; else
the minimum of every applicable cheap upper-bound method (fft, lmt, nonnegative, fantastic4 where fft does
not apply; gram when nothing else applies), and Lanczos (random start, float32 iteration, float64 check)
for the lower bound.
A method that would need more memory than the limit is skipped with a note (never an OOM crash).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from speccert.errors import UnsupportedModelError, UsageError
from speccert.ir import Graph, fold_linear
from speccert.norms.layer import LinearLayer, linear_part
from speccert.norms.method import NormContext, load_methods
from speccert.norms.result import Estimate, LowerBound, NormResult, UpperBound

AUTO = "auto"
# Cheap proven upper bounds tried (all, min taken) by auto when no exact method applies.
AUTO_UPPER = ("fantastic4", "lmt", "fft", "nonnegative")  # fft runs first where it applies
# Last resorts for a proven upper bound, in order.
FALLBACK_UPPER = ("closed_form", "dense", "fft", "fantastic4", "lmt", "nonnegative", "gram")

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LayerNorm:
    """The bracket for one linear node: `lower.value <= ||A||_2 <= upper.value` (A its linear part).

    `upper` is always a proven bound; `lower` is proven when present; `estimate` is a heuristic
    (e.g. Miyato's), never a bound. `others` holds every result computed, keyed "method/kind";
    `notes` says why a method was skipped or fell back.
    """

    name: str
    op: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    upper: UpperBound
    lower: LowerBound | None = None
    others: dict[str, NormResult] = field(default_factory=dict)
    seconds: float = 0.0
    estimate: Estimate | None = None
    notes: tuple[str, ...] = ()

    @property
    def method(self) -> str:
        return self.upper.method

    @property
    def kind(self) -> str:
        return self.upper.kind

    @property
    def iterations(self) -> int:
        return max(self.upper.iterations, self.lower.iterations if self.lower else 0)

    @property
    def gap(self) -> float | None:
        """upper / lower - 1 (None without a positive lower bound)."""
        if self.lower is None or self.lower.value <= 0:
            return None
        return self.upper.value / self.lower.value - 1.0

    def to_dict(self) -> dict[str, object]:
        def res(r: NormResult | None) -> dict[str, object] | None:
            if r is None:
                return None
            return {
                "value": r.value,
                "kind": r.kind,
                "method": r.method,
                "iterations": r.iterations,
                "seconds": r.seconds,
                "note": r.note,
            }

        return {
            "name": self.name,
            "op": self.op,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "upper": res(self.upper),
            "lower": res(self.lower),
            "estimate": res(self.estimate),
            "gap": self.gap,
            "seconds": self.seconds,
            "notes": list(self.notes),
            "others": {k: res(v) for k, v in self.others.items()},
        }


def linear_layers(graph: Graph) -> list[LinearLayer]:
    """The linear nodes of `fold_linear(graph)` as bias-free operators, in graph order."""
    g = fold_linear(graph)
    return [
        LinearLayer(n.name, linear_part(n.op), g.shape_of(n.inputs[0]), n.shape)
        for n in g.nodes
        if type(n.op).linear
    ]


def _run(name: str, layer: LinearLayer, ctx: NormContext, notes: list[str]) -> list[NormResult]:
    methods = load_methods()
    if name not in methods:
        return []
    method = methods.get(name)
    if not method.applies(layer):
        return []
    why = method.refuse(layer, ctx)
    if why is not None:
        notes.append(f"{name} skipped: {why}")
        return []
    return method.compute(layer, ctx)


def _best(
    results: list[NormResult], kind: type[NormResult], pick: Callable[..., NormResult]
) -> NormResult | None:
    found = [r for r in results if isinstance(r, kind)]
    return pick(found, key=lambda r: r.value) if found else None


def _auto(layer: LinearLayer, ctx: NormContext, notes: list[str]) -> list[NormResult]:
    for exact in ("closed_form", "dense"):
        got = _run(exact, layer, ctx, [])  # dense being too big is the normal case: no note
        if any(isinstance(r, UpperBound) for r in got):
            return got
    got = _run("exact", layer, ctx, [])  # too big is the normal case: no note
    if any(isinstance(r, UpperBound) for r in got):
        return got if any(isinstance(r, LowerBound) for r in got) else got + _lower(layer, ctx, notes, got)
    results: list[NormResult] = []
    g = layer.conv()
    one_by_one = g is not None and all(k == 1 for k in g.kernel) and not g.circular
    ran_fft = False
    for name in AUTO_UPPER:
        if name == "fft" and (ran_fft or (one_by_one and any(isinstance(r, UpperBound) for r in results))):
            continue  # already run, or fantastic4 is exact for 1x1 kernels (W at each kept pixel)
        if name == "fantastic4" and g is not None and not one_by_one and not g.circular:
            ran_fft = True
            if _run_fft_first(layer, ctx, results, notes):
                continue  # the torus bound never exceeds Fantastic-Four (see below): F4 would only cost time
        results += _run(name, layer, ctx, notes)
    if not any(isinstance(r, UpperBound) for r in results):
        results += _run("gram", layer, ctx, notes)
    results += _lower(layer, ctx, notes, results)
    return results


def _run_fft_first(layer: LinearLayer, ctx: NormContext, results: list[NormResult], notes: list[str]) -> bool:
    """Run fft into `results`; True if it gave an upper bound.

    Fantastic-Four bounds the symbol sup_w ||K^(w)|| of the (polyphase) kernel over all frequencies, the
    torus bound is the max over one frequency grid of the same symbol, so fft <= fantastic4 up to the
    1e-10 rounding allowances: when fft applies, fantastic4 is skipped.
    """
    got = _run("fft", layer, ctx, notes)
    results += got
    return any(isinstance(r, UpperBound) for r in got)


def _lower(
    layer: LinearLayer, ctx: NormContext, notes: list[str], results: list[NormResult]
) -> list[NormResult]:
    """Lanczos from a random start (a torus plane-wave warm start was measured to help as often as it hurt),
    stopping early once the bracket is tight against the best upper bound found."""
    ups = [r.value for r in results if isinstance(r, UpperBound)]
    lctx = dataclasses.replace(ctx, upper_hint=min(ups) if ups else None)
    return _run("lanczos", layer, lctx, notes)


def _fallback_upper(layer: LinearLayer, ctx: NormContext, notes: list[str]) -> UpperBound:
    for name in FALLBACK_UPPER:
        got = [r for r in _run(name, layer, ctx, notes) if isinstance(r, UpperBound)]
        if got:
            return got[0]
    raise UnsupportedModelError(
        "no norm method can bound this layer",
        [(layer.op_type, layer.name, "no applicable upper-bound method fits in memory")],
    )


def norm_of_layer(layer: LinearLayer, method: str, ctx: NormContext) -> LayerNorm:
    """The LayerNorm of one layer with `method` (or auto)."""
    t0 = time.perf_counter()
    notes: list[str] = []
    if method == AUTO:
        results = _auto(layer, ctx, notes)
    else:
        m = load_methods().get(method)
        results = _run(method, layer, ctx, notes)
        if not m.applies(layer):
            notes.append(f"{method} does not apply to {layer.op_type}")
    up = _best(results, UpperBound, min)
    if up is None:
        up = _fallback_upper(layer, ctx, notes)
        if method != AUTO:
            notes.append(f"upper bound from {up.method} (fallback)")
        results.append(up)
    lo = _best(results, LowerBound, max)
    est = _best(results, Estimate, max)
    others = {f"{r.method}/{r.kind}": r for r in results}
    assert isinstance(up, UpperBound)
    return LayerNorm(
        layer.name,
        layer.describe(),
        layer.in_shape,
        layer.out_shape,
        up,
        lo if isinstance(lo, LowerBound) else None,
        others,
        time.perf_counter() - t0,
        est if isinstance(est, Estimate) else None,
        tuple(notes),
    )


def layer_norms(
    graph: Graph,
    method: str = AUTO,
    device: str | torch.device = "cpu",
    *,
    tol: float = 1e-5,
    max_iter: int = 100,
    memory_limit: int = 2 << 30,
    exact_max_dim: int = 2048,
    progress: Progress | None = None,
) -> list[LayerNorm]:
    """One `LayerNorm` per linear node of `fold_linear(graph)`, named as in the folded graph.

    upper: a proven bound ||A||_2 <= upper (float64, rounded up); lower: ||A v|| / ||v|| for some v.
    `method`: "auto" or a registered method (`method_names()`); `progress(i, n, layer_name)` is called
    before each layer. Raises InputError when a weight is NaN/Inf (the parameter is named).
    `exact_max_dim` > 2048 lets `exact` certify zero-padded convs whose smaller Gram side is up to that
    (one n^3 Cholesky factorisation in ~16 n^2 bytes: ResNet-18's 7x7 maps, n = 25088, take ~70 s each on
    a CPU), which removes the torus bound's excess on small feature maps.
    """
    methods = load_methods()
    if method != AUTO and method not in methods:
        raise UsageError(f"unknown norm method {method!r} (known: {', '.join([AUTO, *methods.keys()])})")
    graph.check_finite()
    dev = torch.device(device)
    ctx = NormContext(
        device=dev, memory_limit=memory_limit, tol=tol, max_iter=max_iter, exact_max_dim=exact_max_dim
    )
    layers = linear_layers(graph)
    out = []
    for i, layer in enumerate(layers):
        if progress is not None:
            progress(i, len(layers), layer.name)
        out.append(norm_of_layer(layer, method, ctx))
    if progress is not None:
        progress(len(layers), len(layers), "")
    return out
