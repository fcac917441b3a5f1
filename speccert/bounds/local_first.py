"""The local certificate's err terms of a stage affine in the input, bounded with their cross term.

Where z_k = A x + b (the first layer), the Jacobian J_k = A is the same on the whole ball, so the
err term of stage k in the telescoped gradient (speccert.bounds.certificates.local) is
    e = sum_i delta_i c_i r_i,     |delta_i| <= 1,
with r_i a fixed row: A_i for an activation's unit i (c_i = err_i |v_i|), A_a - A_b for a MaxMin
pair (c_i = err_i |v_max - v_min|; speccert.bounds.local_sort). For the input's adjoint a (the rest
of the gradient, carried exactly) and E >= ||e||:
    ||a + e||^2 = ||a||^2 + 2 a.e + ||e||^2 <= ||a||^2 + 2 sum_i c_i |a.r_i| + E^2,
and a.r_i is the i-th entry of A a (or the pair's difference of two entries), enclosed rigorously by
the stage's box propagation (speccert.bounds.local_bounds.box_stage: A a + b, minus the enclosure of
b), or, where the stage is one Linear / Conv between reshapes and shifts, by that product without
its bias plus gamma(K) ||row_i|| ||a|| (Cauchy-Schwarz bounds (|W| |a|)_i, the product's rounding
scale). When e is nearly orthogonal to a (flipped pairs or switched units move the gradient sideways),
this is about ||a|| + E^2 / (2 ||a||) instead of ||a|| + E. Several such stages add their cross terms
and their E. The same holds for a matrix of rows (spectral norms; `first_bound`). Every sum is rounded up by its gamma factor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from speccert.bounds.local_bounds import box_stage
from speccert.bounds.local_sort import halves
from speccert.bounds.local_stages import Stage, identity_like, inner_dimension
from speccert.ir import Conv, Graph, Linear, Reshape, Sort
from speccert.norms.rounding import gamma

Tensor = torch.Tensor
U = 2.0**-53
TINY = 1e-300


@dataclass
class FirstTerm:
    """One stage's err term kept apart: c >= 0 [B, N, *units] (units: z's, or the pairs of a MaxMin)
    and E >= ||e|| [B, N]."""

    stage: Stage
    coeff: Tensor
    norm: Tensor


def _linear_part(graph: Graph, st: Stage, flat: Tensor) -> tuple[Tensor, Tensor] | None:
    """(A a, spread) with |fl - exact| <= spread per unit, by one product, where the stage is
    [identity-like]* Linear|Conv(zero padding) [identity-like]*: the shifts are the constant b (left
    out), the reshapes exact, and the product's rounding is within gamma(K) (|W| |a|)_i <=
    gamma(K) ||row_i|| ||a|| (Cauchy-Schwarz; `rownorm` >= ||row_i||). None for other stages."""
    weighted = [n for n in st.nodes if not identity_like(n)]
    if len(weighted) != 1 or len(st.sources) != 1:
        return None
    node = weighted[0]
    op = node.op
    if not isinstance(op, (Linear, Conv)) or (isinstance(op, Conv) and op.padding_mode != "zeros"):
        return None
    values = {st.sources[0].name: flat}
    for nd in st.nodes:
        v = values[nd.inputs[0]]
        if nd is node:
            values[nd.name] = dataclasses.replace(op, bias=None).forward(v)
        elif isinstance(nd.op, Reshape):
            values[nd.name] = nd.op.forward(v)
        else:  # a shift (identity-like Affine): part of b, no linear part
            values[nd.name] = v
    lin = values[st.z_name]
    size = flat.flatten(1).norm(dim=1) * (1.0 + gamma(flat[0].numel() + 2))
    k = inner_dimension(graph, node)
    spread = gamma(k + 4) * st.sources[0].rownorm[None] * size.reshape((-1,) + (1,) * (lin.dim() - 1))
    return lin, spread * (1.0 + 8 * U) + TINY


def _projections(graph: Graph, st: Stage, a: Tensor) -> Tensor:
    """>= |r_i . a| per unit (per pair at a MaxMin) for rows a [B, N, *input]: [B, N, *units]."""
    b, n = a.shape[:2]
    name = st.sources[0].name
    flat = a.reshape(b * n, *a.shape[2:])
    fast = _linear_part(graph, st, flat)
    if fast is not None:
        diff, spread = fast
    else:
        c, rad = box_stage(graph, st, {name: (flat, torch.zeros_like(flat))})
        zero = torch.zeros((1, *a.shape[2:]), dtype=torch.float64)
        bc, brad = box_stage(graph, st, {name: (zero, zero)})
        diff = c - bc  # A a in diff +- spread (b's enclosure out, the subtraction's rounding added)
        spread = rad + brad + 4 * U * (c.abs() + bc.abs()) + TINY
    assert st.act is not None
    if isinstance(st.act.op, Sort):
        dim = st.act.op.axis + 1
        (da, db), (sa, sb) = halves(diff, dim), halves(spread, dim)
        gap = da - db
        proj = gap.abs() + sa + sb + 4 * U * (da.abs() + db.abs()) + TINY
    else:
        proj = diff.abs() + spread
    proj = proj * (1.0 + 8 * U)
    return proj.reshape(b, n, *proj.shape[1:])


def first_bound(graph: Graph, a: Tensor, terms: list[FirstTerm], a_norm: Tensor, spectral: bool) -> Tensor:
    """>= ||a + sum_t e_t|| per row [B, N] for the input's adjoint rows a [B, N, *input] (module
    docstring), given a_norm >= ||a|| per row; with `spectral`, of the matrices a [N, *input] per
    point [B] (a_norm: their spectral norms): then ||a + e||^2 <= ||a||^2 + 2 ||a e^T|| + ||e||^2 and
    ||a e^T|| = ||sum_i delta_i (a r_i) c_i^T|| <= sum_i ||a r_i|| ||c_i|| (norms over the N rows)."""
    sq = a_norm.square() * (1.0 + 4 * U)
    cross = torch.zeros_like(sq)
    e = torch.zeros_like(sq)
    for t in terms:
        proj = _projections(graph, t.stage, a)
        count = proj[0, 0].numel()
        if spectral:
            rows = a.shape[1]
            pn = proj.norm(dim=1) * (1.0 + gamma(rows + 4))
            cn = t.coeff.norm(dim=1) * (1.0 + gamma(rows + 4))
            cross = cross + (pn * cn).flatten(1).sum(1) * (1.0 + gamma(count + 2))
        else:
            cross = cross + (t.coeff * proj).flatten(2).sum(2) * (1.0 + gamma(count + 2))
        e = e + t.norm
    e = e * (1.0 + gamma(len(terms) + 2))
    total = (sq + 2.0 * cross + e * e) * (1.0 + gamma(8))
    out: Tensor = total.sqrt() * (1.0 + 4 * U) + TINY
    return out


__all__ = ["FirstTerm", "first_bound"]
