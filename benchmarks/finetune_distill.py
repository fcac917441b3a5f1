"""Experiment (not a speccert option): distillation from the input model's logits inside the zoo's
cnn recipe. The GloRo cross-entropy of the lmt penalty is mixed with the cross-entropy of the
student's plain logits against the teacher's softened prediction,

    loss = (1 - a) * CE([z, z_bot], y) + a * sum_j q_j * (-log softmax(z)_j),    q = softmax(t / T),

t = the input model's logits on the same (normalised, augmented) batch (the ReLU network before the
activation change, frozen). The certificate is untouched: the written file is certified like any
other. Short run (the subsets of benchmarks/finetune_variant.py) or the goal's budget (`--full`: the
full training set, the 2k validation subset, 20 epochs, the zoo's options), e.g.::

    python benchmarks/finetune_distill.py --alpha 0.5 --temperature 2                  # short
    python benchmarks/finetune_distill.py --alpha 0.5 --temperature 2 --full --out kd.onnx
    speccert certify kd.onnx --data /usr/share/datasets/fashion-mnist --eps 0.25,0.5,1 --audit 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune_fashion import row, subsets  # noqa: E402

import speccert  # noqa: E402
from speccert.importers import load  # noqa: E402
from speccert.training.finetune import finetune  # noqa: E402
from speccert.training.penalties.lmt import LMTPenalty  # noqa: E402

ZOO = dict(recipe="lmt-rescale", lr=3e-3, ema=0.999, allow_activation_change=True, seed=0)
OPTS = {"gloro": 1, "eps": 0.6}


def with_distillation(teacher: torch.nn.Module, alpha: float, temperature: float) -> None:
    """Replace LMTPenalty.loss (this process only) by the mixture of the module docstring."""
    plain = LMTPenalty.loss

    def loss(
        self: LMTPenalty, logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor, model: Any
    ) -> torch.Tensor:
        with torch.no_grad():
            q = F.softmax(teacher(x.detach()).to(logits.dtype) / temperature, dim=1)
        soft = -(q * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        return (1.0 - alpha) * plain(self, logits, y, x, model) + alpha * soft

    LMTPenalty.loss = loss  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "cnn.onnx"))
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--augment", default="none")
    ap.add_argument("--eps", type=float, default=0.6, help="the lmt training margin (the zoo's: 0.6)")
    ap.add_argument("--full", action="store_true", help="the goal's budget (see the docstring)")
    ap.add_argument("--epochs", type=int, default=None, help="default: 5 short, 20 full")
    ap.add_argument("--out", default="/tmp/speccert-bench-finetune/distill.onnx")
    a = ap.parse_args()
    teacher = speccert.load(a.model).to_torch().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with_distillation(teacher, a.alpha, a.temperature)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if a.full:
        train: Any = a.data
        val: Any = str(ROOT / "models" / "data" / "fashion_mnist_train_2k.npz")
        test = None
    else:
        train, val, test = subsets(a.data, 10000, 1000, 1000, 0)
    epochs = a.epochs or (20 if a.full else 5)
    res = finetune(
        a.model, train, val, targets=["cra@0.5>=0.75", "clean>=0.85"], epochs=epochs,
        penalty_options=OPTS | {"eps": a.eps}, out=a.out, overwrite=True, augment=a.augment, **ZOO,  # type: ignore[arg-type]
    )  # fmt: skip
    for h in res.history:
        cra = {k: round(v, 4) for k, v in h.cra.items()}
        print(f"epoch {h.epoch}: clean {h.clean:.4f} cra {cra} L {h.lipschitz:.4g}", file=sys.stderr)
    note = f"alpha {a.alpha:g} T {a.temperature:g} eps {a.eps:g}, best epoch {res.best_epoch}, exit {res.exit_code}"
    secs = time.perf_counter() - t0
    if test is not None:
        print(
            json.dumps(
                row(
                    f"distill-{a.alpha:g}-{a.temperature:g}-{a.eps:g}",
                    load(a.out),
                    test,
                    "cpu",
                    secs,
                    epochs,
                    note,
                )
            )
        )
    else:
        print(json.dumps({"out": a.out, "seconds": secs, "note": note}))


if __name__ == "__main__":
    main()
