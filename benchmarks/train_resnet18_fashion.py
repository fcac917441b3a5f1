"""Train torchvision's ResNet-18 (benchmarks/resnet18.py, same layout) on Fashion-MNIST: trained weights
for `speccert bench norms --resnet-weights`, where the zoo's ImageNet weights cannot be downloaded.

Trained weights differ from a random initialisation in what matters to the norm methods: BatchNorm
statistics and gains that scale channels unevenly, and kernels with structure (a few dominant singular
directions), so the tightness and iteration counts are measured on both. The images (1 x 28 x 28, in
[0, 1]) are repeated to 3 channels and zero-padded to 32 x 32; the 1000-way head is kept (10 used).

    python benchmarks/train_resnet18_fashion.py --out ~/.cache/speccert/resnet18_fashion.pt --epochs 1
    speccert bench norms --resnet-weights ~/.cache/speccert/resnet18_fashion.pt

Needs the Fashion-MNIST IDX files (Debian's dataset-fashion-mnist, or --data DIR). Writes a plain
state_dict (loadable with torch.load(..., weights_only=True)); refuses to overwrite an existing file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "models"))
sys.path.insert(0, str(HERE))

from fashion_data import load_split  # noqa: E402
from resnet18 import resnet18_module  # noqa: E402


def _prepare(x: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(x).float()
    return F.pad(t, (2, 2, 2, 2)).repeat(1, 3, 1, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", default=None, help="folder with the Fashion-MNIST IDX files")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.out.exists():
        print(f"error: {args.out} exists; not overwriting it", file=sys.stderr)
        return 2
    xtr, ytr = load_split("train", args.data)
    xte, yte = load_split("test", args.data)
    model = resnet18_module(seed=args.seed).train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = args.epochs * (len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    t0, step = time.perf_counter(), 0
    for epoch in range(args.epochs):
        perm = torch.randperm(len(xtr), generator=gen).numpy()
        for i in range(0, len(xtr) - args.batch_size + 1, args.batch_size):
            idx = perm[i : i + args.batch_size]
            loss = F.cross_entropy(model(_prepare(xtr[idx])), torch.from_numpy(ytr[idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                print(
                    f"epoch {epoch} step {step}/{steps} loss {loss.item():.3f} {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(_prepare(xte[i : i + 500])).argmax(1) == torch.from_numpy(yte[i : i + 500])).sum())
            for i in range(0, len(xte), 500)
        )
    print(f"test accuracy {correct / len(xte):.4f} after {time.perf_counter() - t0:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
