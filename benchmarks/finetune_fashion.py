"""Benchmark (not a CI test): fine-tune the zoo's standard CNN on Fashion-MNIST with each penalty under
the same epoch budget, and compare with the baseline a user would otherwise pick: retraining the same
architecture from scratch with torch.nn.utils.parametrizations.spectral_norm on every layer.

Every number in the table comes from `speccert.certify` (sound bounds) on a held-out test subset,
pixels in [0, 1], L2 radii 0.25 / 0.5 / 1.0. Fine-tuning stops early if the targets
(cra@0.5>=0.75, clean>=0.85) hold on a separate validation subset drawn from the training set.

    python benchmarks/finetune_fashion.py                      # full budget (GPU recommended)
    python benchmarks/finetune_fashion.py --train-n 10000 --epochs 3 --test-n 1000   # reduced, CPU

Writes a Markdown table to stdout and JSON to --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "models"))

from architectures import cnn  # noqa: E402

from speccert.bounds import certify  # noqa: E402
from speccert.data import Dataset, load_data  # noqa: E402
from speccert.importers import load  # noqa: E402
from speccert.importers.torch_import import from_module  # noqa: E402
from speccert.training.finetune import finetune  # noqa: E402

EPS = (0.25, 0.5, 1.0)
TARGETS = ["cra@0.5>=0.75", "clean>=0.85"]


def subsets(data: str, train_n: int, val_n: int, test_n: int, seed: int) -> tuple[Dataset, Dataset, Dataset]:
    tr = load_data(data, "train")
    te = load_data(data, "test")
    perm = np.random.default_rng(seed).permutation(len(tr))
    ti, vi = np.sort(perm[:train_n]), np.sort(perm[train_n : train_n + val_n])
    test_i = np.sort(np.random.default_rng(seed + 1).permutation(len(te))[:test_n])
    pick = lambda d, i, s: Dataset(d.x[i], d.y[i], f"{d.source}[{s}]")  # noqa: E731
    return pick(tr, ti, "train"), pick(tr, vi, "val"), pick(te, test_i, "test")


def row(name: str, graph, test: Dataset, device: str, seconds: float, epochs: int, note: str = "") -> dict:  # noqa: ANN001
    rep = certify(graph, test, EPS, device=device, lower_bound=False)
    return {
        "method": name,
        "clean": rep.clean_accuracy,
        **{f"cra@{e:g}": rep.certified_accuracy(e) for e in EPS},
        "L_upper": rep.lipschitz_upper,
        "epochs": epochs,
        "seconds": seconds,
        "note": note,
    }


def spectral_norm_baseline(train: Dataset, epochs: int, lr: float, batch: int, device: str, seed: int):  # noqa: ANN201
    """Retrain the zoo CNN from scratch with torch's spectral_norm parametrisation on every layer."""
    torch.manual_seed(seed)
    net = cnn()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            torch.nn.utils.parametrizations.spectral_norm(m)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x = torch.from_numpy(train.x).reshape(-1, 1, 28, 28).to(device)
    y = torch.from_numpy(train.y).to(device)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(train), generator=g).split(batch):
            loss = nn.functional.cross_entropy(net(x[idx.to(device)]), y[idx.to(device)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and torch.nn.utils.parametrize.is_parametrized(m):
            torch.nn.utils.parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return from_module(net.cpu(), (1, 28, 28))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "cnn.onnx"))
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--train-n", type=int, default=55000)
    ap.add_argument("--val-n", type=int, default=1000)
    ap.add_argument("--test-n", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--penalties", default="lmt,spectral,fantastic4,weissi,spectreg,none,curvature")
    ap.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--work", default="/tmp/speccert-bench-finetune")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, val, test = subsets(a.data, a.train_n, a.val_n, a.test_n, a.seed)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [row("input model (zoo cnn)", load(a.model), test, a.device, 0.0, 0)]
    print(rows[0], file=sys.stderr, flush=True)
    if a.baseline:
        t0 = time.perf_counter()
        g = spectral_norm_baseline(train, a.epochs, a.lr, a.batch_size, a.device, a.seed)
        rows.append(
            row(
                "retrain + torch spectral_norm",
                g,
                test,
                a.device,
                time.perf_counter() - t0,
                a.epochs,
                "from scratch",
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    for name in a.penalties.split(","):
        t0 = time.perf_counter()
        out = work / f"cnn-{name}.onnx"
        try:
            res = finetune(
                a.model,
                train,
                val,
                targets=TARGETS,
                penalty=name,
                epochs=a.epochs,
                lr=a.lr,
                batch_size=a.batch_size,
                out=out,
                overwrite=True,
                seed=a.seed,
                device=a.device,
            )
        except Exception as exc:  # noqa: BLE001 - e.g. curvature on a ReLU net: reported, not fatal
            rows.append({"method": f"finetune {name}", "note": f"not applicable: {exc}"})
            print(rows[-1], file=sys.stderr, flush=True)
            continue
        note = "targets met" if res.met else "budget used"
        rows.append(
            row(
                f"finetune {name}",
                load(str(out)),
                test,
                a.device,
                time.perf_counter() - t0,
                res.history[-1].epoch,
                note,
            )
        )
        print(rows[-1], file=sys.stderr, flush=True)
    cols = ["clean", *(f"cra@{e:g}" for e in EPS)]
    print(
        "| method | clean | "
        + " | ".join(f"CRA @ {e:g}" for e in EPS)
        + " | L upper | epochs | time (s) | note |"
    )
    print("|---|---|" + "---|" * len(EPS) + "---|---|---|---|")
    for r in rows:
        if "clean" not in r:
            print(
                f"| {r['method']} | - | "
                + " | ".join("-" for _ in EPS)
                + f" | - | - | - | {r['note'][:90]} |"
            )
            continue
        print(
            f"| {r['method']} | "
            + " | ".join(f"{r[c]:.1%}" for c in cols)
            + f" | {r['L_upper']:.3g} | {r['epochs']} | {r['seconds']:.0f} | {r['note']} |"
        )
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
