"""Benchmark helper (not a test): empirical robust accuracy of a model under PGD-L2, an *upper* bound on
any certified accuracy (a point attacked successfully within eps is not robust at eps). The ceiling
paragraph of docs/finetune.md was measured with::

    OMP_NUM_THREADS=1 python benchmarks/finetune_attack.py models/cnn_robust.onnx --limit 1000

The attack is speccert.bounds.audit.pgd_l2 (the one `speccert certify --audit` runs: 40 steps, 4
restarts, untargeted and targeted at the runner-up classes), without a box constraint, like the
certificate. Prints one line: clean accuracy and the fraction of points classified correctly whose
worst lead max_{j != y} f_j - f_y stays below 0 under the attack, at each eps.
"""

from __future__ import annotations

import argparse

import torch

import speccert
from speccert.bounds.audit import pgd_l2
from speccert.data.loaders import load_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--limit", type=int, default=1000, help="the first N test images")
    p.add_argument("--eps", default="0.25,0.5,1", help="comma-separated L2 radii")
    p.add_argument("--batch", type=int, default=250)
    a = p.parse_args()
    g = speccert.load(a.model)
    ds = load_data(a.data, "test", limit=a.limit)
    n = len(ds.y)
    x = torch.from_numpy(ds.x).to(g.dtype).reshape(n, *g.input_shape)
    y = torch.from_numpy(ds.y).long()
    with torch.no_grad():
        ok = g.forward(x).argmax(1) == y
    parts = [f"{a.model}: {n} images, clean {float(ok.double().mean()):.4f}"]
    for eps in (float(e) for e in a.eps.split(",")):
        robust = ok.clone()
        for i in range(0, n, a.batch):
            xb, yb = x[i : i + a.batch], y[i : i + a.batch]
            res = pgd_l2(g, xb, yb, torch.full((len(yb),), eps, dtype=g.dtype))
            robust[i : i + a.batch] &= res.lead < 0
        parts.append(f"PGD-robust @{eps:g}: {float(robust.double().mean()):.4f}")
    print("; ".join(parts))


if __name__ == "__main__":
    main()
