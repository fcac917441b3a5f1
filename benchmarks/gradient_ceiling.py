"""The most a local Lipschitz certificate could ever certify on a model: per point min_j m_j(x) /
||grad m_j(x)|| (not a certificate, an upper limit).

A local certificate of radius r needs m_j(x) > r sup over B(x, r) of ||grad m_j|| for every class j,
and that supremum is at least ||grad m_j(x)||, so its radius is below m_j(x) / ||grad m_j(x)|| (the
first-order value). The fraction of test points whose first-order value reaches eps bounds the
certified accuracy at eps of any such certificate (local, pairwise, global), however tight. A linear
relaxation (crown) is bounded only by the true robust radius instead (below an attack's distance).

    python benchmarks/gradient_ceiling.py models/cnn_robust.onnx --data /usr/share/datasets/fashion-mnist
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from speccert.data.dataset import as_float_images
from speccert.data.idx import idx_pair_in_folder, read_idx
from speccert.importers.onnx_import import load_onnx


def first_order_radii(model: Path, data: Path, limit: int | None, batch: int = 500) -> torch.Tensor:
    """Per test point min_j m_j(x) / ||grad m_j(x)|| (float64 autograd on the IR), 0 if misclassified."""
    g = load_onnx(str(model)).to("cpu", torch.float64)
    pair = idx_pair_in_folder(data, "test")
    if pair is None:
        raise SystemExit(f"no IDX test files in {data}")
    images, labels = (read_idx(p) for p in pair)
    x_all = torch.from_numpy(as_float_images(images, "images").astype(np.float64))
    y_all = torch.from_numpy(labels.astype(np.int64))
    if limit is not None:
        x_all, y_all = x_all[:limit], y_all[:limit]
    x_all = x_all.reshape(-1, *g.input_shape)
    out = []
    for s in range(0, x_all.shape[0], batch):
        xb = x_all[s : s + batch].clone().requires_grad_(True)
        y = y_all[s : s + batch]
        f = g.forward(xb)
        rad = torch.full((xb.shape[0],), float("inf"), dtype=torch.float64)
        for j in range(f.shape[1]):
            m = f.gather(1, y[:, None])[:, 0] - f[:, j]
            (grad,) = torch.autograd.grad(m.sum(), xb, retain_graph=True)
            r = m.detach() / grad.flatten(1).norm(dim=1).clamp_min(1e-300)
            rad = torch.where(y == j, rad, torch.minimum(rad, r))
        out.append(torch.where(f.argmax(1) == y, rad, torch.zeros_like(rad)))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="folder with the IDX test files")
    parser.add_argument("--eps", default="0.25,0.5,1")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    rad = first_order_radii(args.model, args.data, args.limit)
    eps = [float(e) for e in args.eps.split(",")]
    ceiling = ", ".join(f"{e:g}: {float((rad >= e).double().mean()):.2%}" for e in eps)
    print(f"{args.model.name}: {rad.numel()} points, clean {float((rad > 0).double().mean()):.2%}")
    print(f"first-order ceiling of any local Lipschitz certificate at eps {ceiling}")
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
