"""Benchmark helper (not a test, not a dependency): the deel-torchlip baseline of docs/finetune.md.

Runs in its own virtual environment with deel-torchlip installed (never in speccert's), e.g.::

    python3 -m venv /work/venv-deel
    /work/venv-deel/bin/pip install torch deel-torchlip onnx
    /work/venv-deel/bin/python benchmarks/finetune_deel.py --out /tmp/deel.onnx --json /tmp/deel.json

What it trains: the zoo CNN's shape (conv 4x4 s2 p1 1->16, conv 4x4 s2 p1 16->32, linear 1568->100,
linear 100->10) built from deel-torchlip's 1-Lipschitz layers (SpectralConv2d, SpectralLinear, and a
FrobeniusLinear head with one unit-norm row per class), its GroupSort2 activation (or ReLU with
--activation relu), trained from scratch with its multiclass hinge-KR loss (HKRMulticlassLoss), then
`vanilla_export()`-ed to plain torch layers and written to ONNX. The library's own certificate for this
construction: every logit is 1-Lipschitz (each head row has unit norm after a 1-Lipschitz body), so the
margin f_y - f_j is 2-Lipschitz and the radius is (f_y - max_j f_j) / 2. speccert certifies the ONNX file
separately (benchmarks/finetune_fashion.py --deel-python ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

from fashion_data import load_split  # noqa: E402


def build(activation: str) -> torch.nn.Module:
    from deel import torchlip

    def act() -> torch.nn.Module:
        return torchlip.GroupSort2() if activation == "groupsort2" else torch.nn.ReLU()

    return torchlip.Sequential(
        torchlip.SpectralConv2d(1, 16, 4, stride=2, padding=1),
        act(),
        torchlip.SpectralConv2d(16, 32, 4, stride=2, padding=1),
        act(),
        torch.nn.Flatten(),
        torchlip.SpectralLinear(32 * 7 * 7, 100),
        act(),
        torchlip.FrobeniusLinear(100, 10),
    )


def own_certificate(logits: np.ndarray, y: np.ndarray, eps: list[float]) -> dict[str, float]:
    """deel's multiclass certificate: (top-1 - top-2) / 2 for a correctly classified point."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    radius = (top2[:, 1] - top2[:, 0]) / 2.0
    correct = logits.argmax(1) == y
    return {f"cra@{e:g}": float(np.mean(correct & (radius >= e))) for e in eps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--train-n", type=int, default=55000)
    ap.add_argument("--test-n", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--alpha", type=float, default=0.98, help="HKR: hinge weight in [0, 1]")
    ap.add_argument("--min-margin", type=float, default=1.0, help="HKR hinge margin (logit units)")
    ap.add_argument("--activation", choices=("groupsort2", "relu"), default="groupsort2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="ONNX file to write")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    from deel import torchlip

    torch.manual_seed(a.seed)
    x_tr, y_tr = load_split("train", a.data)
    x_te, y_te = load_split("test", a.data)
    # The same subsets as benchmarks/finetune_fashion.py (train: first train_n of a seeded permutation).
    perm = np.random.default_rng(a.seed).permutation(len(x_tr))
    ti = np.sort(perm[: a.train_n])
    test_i = np.sort(np.random.default_rng(a.seed + 1).permutation(len(x_te))[: a.test_n])
    x = torch.from_numpy(x_tr[ti]).reshape(-1, 1, 28, 28).float()
    y = torch.from_numpy(y_tr[ti]).long()
    net = build(a.activation)
    loss_fn = torchlip.HKRMulticlassLoss(alpha=a.alpha, min_margin=a.min_margin)
    opt = torch.optim.Adam(net.parameters(), lr=a.lr)
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        net.train()
        for idx in torch.randperm(len(x), generator=gen).split(a.batch_size):
            loss = loss_fn(net(x[idx]), torch.nn.functional.one_hot(y[idx], 10).float())
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}: loss {float(loss.detach()):.4f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    net.eval()
    plain = net.vanilla_export().eval()
    xt = torch.from_numpy(x_te[test_i]).reshape(-1, 1, 28, 28).float()
    with torch.no_grad():
        logits = plain(xt).numpy()
    yt = y_te[test_i]
    torch.onnx.export(plain, xt[:1], a.out, input_names=["x"], output_names=["logits"], dynamo=False)
    eps = [0.25, 0.5, 1.0]
    res = {
        "method": f"deel-torchlip {a.activation} (own formula)",
        "clean": float(np.mean(logits.argmax(1) == yt)),
        **own_certificate(logits, yt, eps),
        "epochs": a.epochs,
        "minutes": seconds / 60.0,
        "onnx": a.out,
        "activation": a.activation,
        "loss": f"HKRMulticlassLoss(alpha={a.alpha}, min_margin={a.min_margin})",
    }
    with torch.no_grad():
        res["max_abs_diff_vanilla_export"] = float((net(xt[:256]) - plain(xt[:256])).abs().max())
    Path(a.json).write_text(json.dumps(res, indent=2))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
