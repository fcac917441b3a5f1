"""Benchmark helper (not a test): where the pairwise certificate's slack is, layer by layer.

The pairwise certificate of a point x with label y bounds the Lipschitz constant of the margin
m_j = f_y - f_j by ||w_y - w_j|| * prod_k sigma_k (sigma_k: the certifier's bound of hidden linear
layer k; MaxMin / ReLU count 1). The margin's true local slope at x is ||grad m_j(x)||, and back-
propagation writes it as a chain: with g_k the gradient of m_j with respect to the output of layer k
(g_last = w_y - w_j, the input of the last layer), ||g_{k-1}^in|| = ||A_k^T g_k^out|| <= sigma_k ||g_k^out||.
The ratio

    e_k(x) = ||A_k^T g_k^out|| / (sigma_k ||g_k^out||)  in (0, 1]

is layer k's *efficiency* at x (the activation between layers is a permutation for MaxMin, so it
keeps the norm; a ReLU drops coordinates, counted in the layer above it). prod_k e_k(x) =
||grad m_j(x)|| / (||w_y - w_j|| prod sigma_k) is the local tightness of the certificate for the pair j
the certificate binds at x (the smallest margin / ||w_y - w_j||). A layer with e_k far below 1 is
where a constraint (orthogonal / 1-Lipschitz parametrisation) could remove slack; e_k near 1 for
every layer means the per-layer product is already tight at the data.

    OMP_NUM_THREADS=1 python benchmarks/finetune_slack.py models/cnn_robust.onnx --limit 1000

Prints, per hidden linear layer: sigma_k and the p10 / median / p90 of e_k over the correctly
classified points, then the same for the product.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import speccert
from speccert.bounds import lipschitz_bound
from speccert.data.loaders import load_data
from speccert.ir.linear_ops import Conv, ConvTranspose, Linear


def efficiencies(model: str, data: str, limit: int) -> tuple[list[str], list[float], np.ndarray]:
    """(layer names, their sigma bounds, e[point, layer]) for the hidden linear layers of `model`."""
    lb = lipschitz_bound(speccert.load(model))
    g = lb.folded  # float64, linear ops merged: the graph the certifier bounds
    nodes = {n.name: n for n in g.nodes}
    weighted = (Conv, ConvTranspose, Linear)  # reshapes and scalar affines have e = 1 by construction
    layers = [n for n in lb.layers if n.name != g.output and isinstance(nodes[n.name].op, weighted)]
    head = nodes[g.output]
    w = head.op.parameters()["weight"]  # [classes, features]
    ds = load_data(data, "test", limit=limit)
    x = torch.from_numpy(ds.x).to(torch.float64).reshape(len(ds.y), *g.input_shape).requires_grad_(True)
    y = torch.from_numpy(ds.y).long()
    acts = g.activations(x)
    logits = acts[g.output]
    ok = logits.argmax(1) == y
    # the pair the pairwise certificate binds: min over j != y of (f_y - f_j) / ||w_y - w_j||
    diff = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)  # [n, classes]
    ratio = (logits.gather(1, y[:, None]) - logits) / diff.clamp_min(1e-300)
    ratio[torch.arange(len(y)), y] = float("inf")
    j = ratio.argmin(1)
    margin = (logits.gather(1, y[:, None]) - logits.gather(1, j[:, None])).sum()
    names = [n.name for n in layers]
    outs = [acts[n] for n in names]
    ins = [acts[nodes[n].inputs[0]] if nodes[n].inputs[0] != "input" else x for n in names]
    grads = torch.autograd.grad(margin, [*ins, *outs], allow_unused=True)
    e = []
    for k, layer in enumerate(layers):
        gi, go = grads[k], grads[len(layers) + k]
        if gi is None or go is None:
            raise SystemExit(f"{layer.name}: no gradient path (is the model a chain?)")
        num = gi.flatten(1).norm(dim=1)
        den = layer.upper.value * go.flatten(1).norm(dim=1)
        e.append((num / den).detach().numpy())
    return names, [n.upper.value for n in layers], np.stack(e, 1)[ok.numpy()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--limit", type=int, default=1000, help="the first N test images")
    a = p.parse_args()
    names, sigmas, e = efficiencies(a.model, a.data, a.limit)
    q = lambda v: " / ".join(f"{np.quantile(v, t):.3f}" for t in (0.1, 0.5, 0.9))  # noqa: E731
    print(f"{a.model}: {len(e)} correctly classified points; efficiency p10 / median / p90")
    for k, (name, s) in enumerate(zip(names, sigmas, strict=True)):
        print(f"  {name:<28} sigma {s:10.4g}   e {q(e[:, k])}")
    print(f"  {'product (local tightness)':<28} {'':16} {q(e.prod(1))}")


if __name__ == "__main__":
    main()
