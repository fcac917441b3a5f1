"""`layer_norms` and the `auto` strategy: the tightest proven upper bound plus a proven lower bound for
every linear node of `fold_linear(graph)`.

auto, per layer, from the roles the methods declare (`NormMethod.auto`, an `AutoRole`; `auto_summary()`
says it in words for the CLI and docs): the "decisive" methods in order (closed form, dense SVD of a small
matrix, the Cholesky-certified explicit Gram matrix), the first that gives an upper bound decides;
else the minimum of every applicable "upper" method (a method is skipped once one that supersedes it
gave a bound), the "last_resort" ones only when none did; the "lower" methods (Lanczos) give the lower
bound; then, only where the bracket upper / lower is still above `NormContext.refine_above` (1.01), the
"refine" methods (the crop-aware deflated bound: ResNet-18's layer4 convs on 7x7 maps) run and the
smallest upper bound is kept; where it is between `NormContext.tighten_above` (1.001) and that, the refine
methods with a light budget (`AutoRole.light`; the deflated bound with few vectors: ResNet-18's layer2-3
3x3 convs and layer4.0.conv1) run at that budget. A refine method that predicts from the layer alone that
the cheap bounds will miss the target (`NormMethod.auto_first`) runs first instead, at the budget of the
tier it predicts, and the upper methods it supersedes are not run (the torus bound on those layers: it
would be computed only to be discarded). A method
that would need more memory than the limit is skipped with a note (never an OOM crash).
This module names no method: adding one is one file in speccert/norms/methods/.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import torch

from speccert.errors import UnsupportedModelError
from speccert.ir import Graph, fold_linear
from speccert.limits import check_norm_method, plan_budget
from speccert.norms.layer import LinearLayer, linear_part
from speccert.norms.layer_norm import LayerNorm as LayerNorm  # its home before it had a file of its own
from speccert.norms.method import (
    EXACT_MAX_DIM,
    REFINE_ABOVE,
    TIGHTEN_ABOVE,
    NormContext,
    NormMethod,
    Stage,
    load_methods,
)
from speccert.norms.precision import exact_float_math
from speccert.norms.result import Estimate, LowerBound, NormResult, UpperBound

AUTO = "auto"

Progress = Callable[[int, int, str], None]


def linear_layers(graph: Graph) -> list[LinearLayer]:
    """The linear nodes of `fold_linear(graph)` as bias-free operators, in graph order.

    Folding runs in float64 (a float32 graph is copied to float64 first): a BatchNorm or normalisation
    scale folded into a float32 weight would be rounded to float32, and the bound would be the norm of
    that rounded operator, up to ~6e-8 relative below the file's (exact) one."""
    g = fold_linear(graph if graph.dtype == torch.float64 else graph.to("cpu", torch.float64))
    return [
        LinearLayer(n.name, linear_part(n.op), g.shape_of(n.inputs[0]), n.shape)
        for n in g.nodes
        if type(n.op).linear
    ]


def _staged(stage: Stage) -> list[NormMethod]:
    """The methods of one `auto` stage, in their declared order (ties: by name)."""
    found = [m for m in load_methods().values() if m.auto.stage == stage]
    return sorted(found, key=lambda m: (m.auto.order, m.name))


BUDGET_HINT = "(the memory budget: raise it with --max-memory)"


def _run(
    method: NormMethod, layer: LinearLayer, ctx: NormContext, notes: list[str], quiet_caps: bool = False
) -> list[NormResult]:
    """The method's results, or [] with a note when it refuses the layer; `quiet_caps`: no note when a
    size cap refused it (the decisive stage's normal case), but always one for the memory budget."""
    if not method.applies(layer):
        return []
    why = method.refuse(layer, ctx)
    if why is not None:
        if why.kind == "memory":
            notes.append(f"{method.name} skipped: {why.text} {BUDGET_HINT}")
        elif not quiet_caps:
            notes.append(f"{method.name} skipped: {why.text}")
        return []
    ctx.tell(method.name)
    return method.compute(layer, ctx)


def _best(
    results: list[NormResult], kind: type[NormResult], pick: Callable[..., NormResult]
) -> NormResult | None:
    found = [r for r in results if isinstance(r, kind)]
    return pick(found, key=lambda r: r.value) if found else None


def _has_upper(results: list[NormResult]) -> bool:
    return any(isinstance(r, UpperBound) for r in results)


def _auto(layer: LinearLayer, ctx: NormContext, notes: list[str]) -> list[NormResult]:
    ran: dict[str, bool] = {}
    results, decided = _upper_stages(layer, ctx, notes, ran)
    if decided:
        has_lower = any(isinstance(r, LowerBound) for r in results)
        return results if has_lower else results + _lower(layer, ctx, notes, results)
    results += _lower(layer, ctx, notes, results)
    return results + _refine(layer, ctx, notes, results, ran)


def _light(ctx: NormContext) -> NormContext | None:
    """The context of the light refine tier (brackets between tighten_above and refine_above), or None
    when that tier is empty or the refine stage is off (refine_above inf)."""
    if math.isinf(ctx.refine_above) or ctx.tighten_above >= ctx.refine_above:
        return None
    return dataclasses.replace(ctx, refine_above=ctx.tighten_above, refine_light=True)


def _upper_stages(
    layer: LinearLayer, ctx: NormContext, notes: list[str], ran: dict[str, bool] | None = None
) -> tuple[list[NormResult], bool]:
    """(results, whether a decisive method gave the upper bound): the decisive stage, else the refine
    methods expected to be needed on this layer (`auto_first`, at the full budget or else the light one;
    recorded in `ran` as name -> light; none with `ran=None`), then the "upper" methods none of them
    supersedes, the "last_resort" ones when no upper bound is known."""
    for method in _staged("decisive"):
        got = _run(method, layer, ctx, notes, quiet_caps=True)
        if _has_upper(got):
            return got, True
    results: list[NormResult] = []
    superseded: set[str] = set()
    light = _light(ctx)
    # A refine method that predicts the cheap bounds will miss the target runs now, in their place (the
    # upper bounds it supersedes would be computed only to be discarded); a wrong prediction costs time
    # only: its bound is proven either way.
    for method in _staged("refine"):
        if ran is None:
            break
        if method.auto_first(layer, ctx):
            mctx = ctx
        elif light is not None and method.auto.light and method.auto_first(layer, light):
            mctx = light
        else:
            continue
        got = _run(method, layer, mctx, notes)
        ran[method.name] = mctx.refine_light
        if _has_upper(got):
            superseded.update((method.name, *method.auto.supersedes))
        results += got
    for method in sorted(_staged("upper"), key=lambda m: (m.auto_order(layer), m.name)):
        if method.name in superseded or method.auto_skip(layer, results):
            continue
        got = _run(method, layer, ctx, notes)
        if _has_upper(got):
            superseded.update(method.auto.supersedes)
        results += got
    if not _has_upper(results):
        for method in _staged("last_resort"):
            results += _run(method, layer, ctx, notes)
    return results, False


def unrefined_upper(layer: LinearLayer, ctx: NormContext) -> list[NormResult]:
    """The upper bounds `auto` would compute on this layer without its refine stage (no refine method
    run first either): what the refine stage gains, for benchmarks."""
    with exact_float_math():
        return [r for r in _upper_stages(layer, ctx, [])[0] if isinstance(r, UpperBound)]


def _refine(
    layer: LinearLayer, ctx: NormContext, notes: list[str], results: list[NormResult], ran: dict[str, bool]
) -> list[NormResult]:
    """The "refine" stage on a layer whose bracket is wider than `ctx.refine_above` (the budget goes
    only where the cheap bounds miss the target), in order, until the bracket is within it; on a bracket
    between `ctx.tighten_above` and that, the methods with a light budget (`AutoRole.light`) at that
    budget, until it is within tighten_above. A method that already ran first (`auto_first`; `ran`) is
    not run again, unless it ran at the light budget and the bracket is still above refine_above."""
    up, lo = _best(results, UpperBound, min), _best(results, LowerBound, max)
    if up is None or lo is None or lo.value <= 0:
        return []
    best, got = up.value, []
    light = _light(ctx)
    for method in _staged("refine"):
        if best > ctx.refine_above * lo.value:
            mctx, again = ctx, ran.get(method.name, True)  # a light run first may be followed by a full one
        elif light is not None and best > light.refine_above * lo.value and method.auto.light:
            mctx, again = light, method.name not in ran
        else:
            continue
        if not again:
            continue
        found = _run(method, layer, mctx, notes)
        best = min([best, *(r.value for r in found if isinstance(r, UpperBound))])
        got += found
    return got


def _lower(
    layer: LinearLayer, ctx: NormContext, notes: list[str], results: list[NormResult]
) -> list[NormResult]:
    """The "lower" stage (Lanczos from a random start: a torus plane-wave warm start was measured to help
    as often as it hurt), told the best upper bound found so that it can stop once the bracket is tight."""
    ups = [r.value for r in results if isinstance(r, UpperBound)]
    lctx = dataclasses.replace(ctx, upper_hint=min(ups) if ups else None)
    return [r for method in _staged("lower") for r in _run(method, layer, lctx, notes)]


def _fallback_upper(layer: LinearLayer, ctx: NormContext, notes: list[str]) -> UpperBound:
    fallbacks = [m for m in load_methods().values() if m.auto.fallback is not None]
    for method in sorted(fallbacks, key=lambda m: (m.auto.fallback, m.name)):
        got = [r for r in _run(method, layer, ctx, notes) if isinstance(r, UpperBound)]
        if got:
            return got[0]
    raise UnsupportedModelError(
        "no norm method can bound this layer",
        [
            (
                layer.op_type,
                layer.name,
                "no applicable upper-bound method fits in the memory budget (raise it with --max-memory)",
            )
        ],
    )


def auto_summary() -> str:
    """What `auto` does, in words, from the roles the registered methods declare."""

    def names(stage: Stage) -> str:
        return ", ".join(f"`{m.name}`" for m in _staged(stage))

    supersede = "; ".join(
        f"`{m.name}` supersedes {', '.join(f'`{s}`' for s in m.auto.supersedes)}"
        for m in _staged("upper")
        if m.auto.supersedes
    )
    light = ", ".join(f"`{m.name}`" for m in _staged("refine") if m.auto.light) or "none"
    return (
        f"first of {names('decisive')} that gives an upper bound; else the minimum of {names('upper')} "
        f"where they apply (skipping a method superseded by one that gave a bound: {supersede}), "
        f"{names('last_resort')} when none does; lower bound: {names('lower')}; then {names('refine')} "
        f"where upper / lower is still above {REFINE_ABOVE}, {light} with a light budget where it is between "
        f"{TIGHTEN_ABOVE} and that (each run first instead, in place of the upper bounds it supersedes, "
        f"where the layer's geometry predicts that)"
    )


def by_method(results: list[NormResult]) -> dict[str, NormResult]:
    """One entry per "method/kind": where a method ran twice on a layer (the light refine budget, then
    the full one), the better of its values (the smaller upper, the larger lower bound; the later
    estimate) with the seconds of both runs, so a layer's time per method is what it cost."""
    out: dict[str, NormResult] = {}
    for r in results:
        key = f"{r.method}/{r.kind}"
        prev = out.get(key)
        if prev is None:
            out[key] = r
            continue
        keep_prev = (r.kind == "upper" and prev.value <= r.value) or (
            r.kind == "lower" and prev.value >= r.value
        )
        out[key] = dataclasses.replace(prev if keep_prev else r, seconds=prev.seconds + r.seconds)
    return out


def norm_of_layer(layer: LinearLayer, method: str, ctx: NormContext) -> LayerNorm:
    """The LayerNorm of one layer with `method` (or auto), computed without TF32 or reduced-precision
    reductions (speccert.norms.precision.exact_float_math: the error bounds assume IEEE arithmetic)."""
    t0 = time.perf_counter()
    notes: list[str] = []
    with exact_float_math():
        results = _compute(layer, method, ctx, notes)
    up = _best(results, UpperBound, min)
    lo = _best(results, LowerBound, max)
    est = _best(results, Estimate, max)
    others = by_method(results)
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


def _compute(layer: LinearLayer, method: str, ctx: NormContext, notes: list[str]) -> list[NormResult]:
    if method == AUTO:
        results = _auto(layer, ctx, notes)
    else:
        m = load_methods().get(method)
        results = _run(m, layer, ctx, notes)
        if not m.applies(layer):
            notes.append(f"{method} does not apply to {layer.op_type}")
    if _best(results, UpperBound, min) is None:
        results.append(_fallback_upper(layer, ctx, notes))
        if method != AUTO:
            notes.append(f"upper bound from {results[-1].method} (fallback)")
    return results


def with_progress(ctx: NormContext, progress: Progress | None, i: int, n: int, name: str) -> NormContext:
    """`ctx` whose notes from inside layer `i` of `n` reach `progress` as "name: note"."""
    if progress is None:
        return ctx

    def note(text: str) -> None:
        progress(i, n, f"{name}: {text}")

    return dataclasses.replace(ctx, note=note)


def layer_norms(
    graph: Graph,
    method: str = AUTO,
    device: str | torch.device = "cpu",
    *,
    tol: float = 1e-5,
    max_iter: int = 100,
    memory_limit: int | None = None,
    exact_max_dim: int = EXACT_MAX_DIM,
    progress: Progress | None = None,
    refine_above: float = REFINE_ABOVE,
    tighten_above: float = TIGHTEN_ABOVE,
) -> list[LayerNorm]:
    """One `LayerNorm` per linear node of `fold_linear(graph)`, named as in the folded graph.

    upper: a proven bound ||A||_2 <= upper (float64, rounded up); lower: ||A v|| / ||v|| for some v.
    `method`: "auto" or a registered method (`method_names()`); `progress(i, n, text)` is called before
    each layer (text: its name) and while one runs (text: "name: method" or a step of a long method,
    e.g. "layer4.1.conv2: exact: Cholesky 25088x25088"). Raises InputError when a weight is NaN/Inf (the parameter is named).
    `exact_max_dim` > 2048 lets `exact` certify zero-padded convs whose smaller Gram side is up to that
    (one n^3 Cholesky factorisation in ~16 n^2 bytes: ResNet-18's 7x7 maps, n = 25088, take ~70 s each on
    a CPU), which removes the torus bound's excess on small feature maps. `refine_above`: auto's "refine"
    methods run on the layers whose upper / lower is above it (math.inf: never, the light tier neither);
    `tighten_above`: those with a light budget on the layers between it and refine_above (math.inf: never).
    """
    check_norm_method(method, "method")  # the CLI's and the gate policy's check, the same words
    graph.check_finite()
    dev = torch.device(device)
    # The one hook into speccert.limits: a method whose plan exceeds the budget is skipped with a note.
    budget = memory_limit if memory_limit is not None else plan_budget()
    ctx = NormContext(
        device=dev,
        memory_limit=budget,
        tol=tol,
        max_iter=max_iter,
        exact_max_dim=exact_max_dim,
        refine_above=refine_above,
        tighten_above=tighten_above,
    )
    layers = linear_layers(graph)
    out = []
    for i, layer in enumerate(layers):
        if progress is not None:
            progress(i, len(layers), layer.name)
        out.append(norm_of_layer(layer, method, with_progress(ctx, progress, i, len(layers), layer.name)))
    if progress is not None:
        progress(len(layers), len(layers), "")
    return out
