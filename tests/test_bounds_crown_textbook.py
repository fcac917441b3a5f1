"""CROWN certificate against a dense textbook CROWN written independently: the same margin bound given
the same hidden intervals, hidden intervals never looser."""

from __future__ import annotations

import numpy as np
import torch
from certify_nets import D

from speccert.bounds.crown import Crown
from speccert.bounds.lipschitz import lipschitz_bound
from speccert.ir import INPUT, Activation, Conv, Graph, Linear, Node, Reshape


def conv_chain(seed: int) -> Graph:
    """conv (stride 2, asymmetric padding) -> relu -> conv (groups 2, dilation 2) -> relu -> flatten
    -> linear -> relu -> linear."""
    gen = torch.Generator().manual_seed(seed)
    c1 = Conv(
        torch.randn(4, 2, 3, 3, generator=gen, dtype=D) / 3,
        torch.randn(4, generator=gen, dtype=D) * 0.1,
        (2, 2),
        ((1, 0), (0, 1)),
        (1, 1),
    )
    c2 = Conv(
        torch.randn(4, 2, 2, 2, generator=gen, dtype=D) / 2,
        torch.randn(4, generator=gen, dtype=D) * 0.1,
        (1, 1),
        ((1, 1), (1, 1)),
        (2, 2),
        groups=2,
    )
    nodes = [
        Node("c1", c1, (INPUT,)),
        Node("a1", Activation("relu"), ("c1",)),
        Node("c2", c2, ("a1",)),
        Node("a2", Activation("relu"), ("c2",)),
    ]
    g = Graph((2, 8, 8), nodes, dtype=D)
    flat = int(np.prod(g.output_shape))
    nodes += [
        Node("flat", Reshape((flat,)), ("a2",)),
        Node(
            "l1",
            Linear(torch.randn(10, flat, generator=gen, dtype=D) / flat**0.5, torch.randn(10, dtype=D) * 0.1),
            ("flat",),
        ),
        Node("a3", Activation("relu"), ("l1",)),
        Node("out", Linear(torch.randn(3, 10, generator=gen, dtype=D) / 3, torch.zeros(3, dtype=D)), ("a3",)),
    ]
    return Graph((2, 8, 8), nodes, dtype=D)


def dense_crown(
    crown: Crown,
    x: torch.Tensor,
    lam: torch.Tensor,
    r: float,
    given: list[tuple[torch.Tensor, torch.Tensor]] | None,
    top: int | None = None,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Textbook CROWN on dense matrices (each stage's affine map materialised column by column), no
    rounding control; intermediate bounds `given`, or else by CROWN alone."""
    from speccert.bounds.local_stages import evaluate

    blocks = []
    for st_ in crown.stages:
        (src,) = st_.sources
        shape = crown.shapes[src.name]
        n = int(np.prod(shape))
        b = evaluate(st_, {src.name: torch.zeros((1, *shape), dtype=D)}).reshape(-1)
        cols = evaluate(st_, {src.name: torch.eye(n, dtype=D).reshape(n, *shape)}).reshape(n, -1) - b
        blocks.append((cols.T, b))
    x0 = x.reshape(-1)
    bounds: list[tuple[torch.Tensor, torch.Tensor]] = []

    def back(k: int, rows: torch.Tensor) -> torch.Tensor:
        c, rows = rows @ blocks[k][1], rows @ blocks[k][0]
        for j in range(k - 1, -1, -1):
            lo, hi = bounds[j]
            act, dead = lo >= 0, hi <= 0
            un = ~act & ~dead
            s = torch.where(un, hi / (hi - lo).clamp_min(1e-300), act.to(D))
            alpha = torch.where(un, (hi >= -lo).to(D), act.to(D))
            neg = rows.clamp_max(0)
            c = c + (neg * torch.where(un, -s * lo, torch.zeros_like(lo))).sum(1)
            rows = rows.clamp_min(0) * alpha + neg * s
            c, rows = c + rows @ blocks[j][1], rows @ blocks[j][0]
        return rows @ x0 + c - r * rows.norm(dim=1)

    top = len(blocks) - 1 if top is None else top
    for k in range(top):
        if given is not None:
            bounds.append((given[k][0].reshape(-1), given[k][1].reshape(-1)))
            continue
        eye = torch.eye(blocks[k][0].shape[0], dtype=D)
        bounds.append((back(k, eye), -back(k, -eye)))
    return back(top, lam), bounds


def test_crown_matches_textbook_crown_on_a_conv_chain() -> None:
    """With the same intermediate intervals, the margin bound is dense textbook CROWN's (to 1e-9 of
    the margin scale: only the rounding allowance differs), and every unstable unit's lower bound is
    at least textbook CROWN's from the same earlier intervals (equal, or tighter from the interval
    bounds it is intersected with). Ours are not compared with textbook CROWN's whole chain of
    intervals: the adaptive lower slope of an unstable ReLU (1 if u >= -l) can flip with tighter
    intervals, for better or worse."""
    g = conv_chain(3)
    crown = Crown(lipschitz_bound(g))
    crown.first_layer = "off"  # textbook CROWN's lines throughout (crown_first can only be tighter)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=D)
    y = crown.graph.forward(x).argmax(1)
    eye = torch.eye(3, dtype=D)
    for r in (0.05, 0.2, 0.5):
        rr = torch.full((3,), r, dtype=D)
        ball = crown.ball(x, rr)
        a, n = crown.lower(len(crown.stages) - 1, (eye[y][:, None, :] - eye[None, :, :]), ball)
        for b in range(3):
            keep = [j for j in range(3) if j != y[b]]
            lam = torch.stack([eye[y[b]] - eye[j] for j in keep])
            ours = a[b, keep] - r * n[b, keep]
            same, _ = dense_crown(crown, x[b], lam, r, [(lo[b], hi[b]) for lo, hi in ball.bb.z])
            scale = 1.0 + float(same.abs().max())
            assert bool((ours <= same).all()), "the rounding allowance is missing"
            np.testing.assert_allclose(ours.numpy(), same.numpy(), rtol=0, atol=1e-9 * scale)
            # the hidden CROWN intervals are textbook CROWN's, taken with our (intersected) earlier
            # intervals, on every unit whose relaxation is not exact
            for k, (lo, hi) in enumerate(ball.bb.z[1:], start=1):
                un = ((lo[b] < 0) & (hi[b] > 0)).reshape(-1)
                given = [(lo_[b], hi_[b]) for lo_, hi_ in ball.bb.z[:k]]
                z_eye = torch.eye(un.numel(), dtype=D)[un]
                ref, _ = dense_crown(crown, x[b], torch.cat([z_eye, -z_eye]), r, given, top=k)
                count = int(un.sum())
                assert bool((lo[b].reshape(-1)[un] >= ref[:count] - 1e-9 * scale).all())
                assert bool((hi[b].reshape(-1)[un] <= -ref[count:] + 1e-9 * scale).all())
