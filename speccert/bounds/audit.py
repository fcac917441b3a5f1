"""Audit: a PGD-L2 attack (several restarts) on certified points, inside their certified radius.

A certificate says no perturbation d with ||d|| <= r changes the prediction from the label y. The audit
maximises the best wrong-class margin max_{j != y} f_j(x + d) - f_y(x + d) over that ball with projected
normalised-gradient ascent (Madry et al.'s PGD in L2). Restart 0 is untargeted from the point itself;
restarts 1..C-1 start there too and target the k-th runner-up class (maximise f_j - f_y: no see-saw
between two close classes, and exact on a linear model); further restarts start at random points of
the ball, untargeted, with a step size that decays so that they settle. Finding any d with the wrong class strictly ahead is a proof that the certifier is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speccert.ir import Graph

Tensor = torch.Tensor


@dataclass(frozen=True)
class AttackResult:
    """Per point: the best wrong-class lead found (< 0: the attack failed) and the perturbation norm."""

    lead: Tensor
    delta_norm: Tensor
    delta: Tensor

    @property
    def success(self) -> Tensor:
        return self.lead > 0


def _shape(t: Tensor, like: Tensor) -> Tensor:
    return t.reshape(-1, *([1] * (like.dim() - 1)))


def _lead(logits: Tensor, y: Tensor) -> Tensor:
    fy = logits.gather(1, y[:, None])[:, 0]
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(1) - fy


def _targets(graph: Graph, x: Tensor, y: Tensor, k: int) -> Tensor | None:
    """The k-th runner-up class at x (k = 1: the closest wrong class), or None if there is none."""
    with torch.no_grad():
        logits = graph.forward(x)
    if k >= logits.shape[1]:
        return None
    order = logits.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
    return order[:, k - 1]


def pgd_l2(
    graph: Graph, x: Tensor, y: Tensor, radius: Tensor, *, steps: int = 40, restarts: int = 4, seed: int = 0
) -> AttackResult:
    """Maximise max_{j != y} f_j - f_y over ||d|| <= radius (per point); float64 on x's device."""
    if x.shape[0] == 0:  # nothing to attack (e.g. no point was certified)
        empty = torch.zeros(0, dtype=x.dtype, device=x.device)
        return AttackResult(empty, empty.clone(), x.clone())
    gen = torch.Generator(device="cpu").manual_seed(seed)
    r = _shape(radius.to(x), x)
    best_lead = torch.full((x.shape[0],), float("-inf"), dtype=x.dtype, device=x.device)
    best_delta = torch.zeros_like(x)
    alpha = 2.5 * r / steps
    n_classes = int(graph.forward(x[:1]).shape[1])
    for restart in range(restarts):
        targeted = 0 < restart < n_classes
        if restart < n_classes:
            delta = torch.zeros_like(x)
        else:
            noise = torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
            u = torch.rand((x.shape[0],), generator=gen, dtype=x.dtype).to(x.device)
            delta = noise / _shape(noise.reshape(x.shape[0], -1).norm(dim=1), x) * r * _shape(u, x)
        target = _targets(graph, x, y, restart) if targeted else None
        for step in range(steps + 1):
            d = delta.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = graph.forward(x + d)
                lead = _lead(logits, y)
                loss = (
                    lead
                    if target is None
                    else (logits.gather(1, target[:, None])[:, 0] - logits.gather(1, y[:, None])[:, 0])
                )
                (g,) = torch.autograd.grad(loss.sum(), d)
            lead = lead.detach()
            better = lead > best_lead
            best_lead = torch.where(better, lead, best_lead)
            best_delta = torch.where(_shape(better, x), delta, best_delta)
            gn = g.reshape(x.shape[0], -1).norm(dim=1).clamp_min(1e-300)
            decay = 1.0 if restart < n_classes else 1.0 - step / (steps + 1)
            delta = delta + alpha * decay * g / _shape(gn, x)
            dn = delta.reshape(x.shape[0], -1).norm(dim=1)
            delta = delta * _shape(torch.clamp(radius.to(x) / dn.clamp_min(1e-300), max=1.0), x)
    norms = best_delta.reshape(x.shape[0], -1).norm(dim=1)
    return AttackResult(best_lead, norms, best_delta)
