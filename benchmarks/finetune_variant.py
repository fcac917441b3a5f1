"""Benchmark helper (not a test): one fine-tuning run of a recipe with overridden fields or penalty
options, on the same subsets as benchmarks/finetune_fashion.py, certified from the file it wrote.
The ablations of docs/finetune.md ("levers") were measured with it, e.g.::

    python benchmarks/finetune_variant.py --name lr3e-3 --fields '{"lr": 0.003}'
    python benchmarks/finetune_variant.py --name eps0.7 --opts '{"eps": 0.7}'
    python benchmarks/finetune_variant.py --name la5 --opts '{"la_beta": 5.0}'
    python benchmarks/finetune_variant.py --name resnet --model models/resnet.onnx --recipe penalty:weissi
    python benchmarks/finetune_variant.py --name resnet-mm --model models/resnet.onnx --allow-activation-change
    python benchmarks/finetune_variant.py --name shift1 --allow-activation-change --augment shift:1

Prints per-epoch validation figures to stderr and one JSON row (the test subset) to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from types import MappingProxyType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from finetune_fashion import row, subsets  # noqa: E402

from speccert.importers import load  # noqa: E402
from speccert.training.finetune import finetune  # noqa: E402
from speccert.training.recipes import get_recipe, single_penalty  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "cnn.onnx"))
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--recipe", default="lmt-rescale", help="a recipe name, or penalty:NAME")
    ap.add_argument("--opts", default="{}", help="penalty options (JSON), over the recipe's")
    ap.add_argument("--fields", default="{}", help="recipe fields (JSON), e.g. lr, warmup")
    ap.add_argument("--targets", default='["cra@0.5>=0.75", "clean>=0.85"]')
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train-n", type=int, default=10000)
    ap.add_argument("--val-n", type=int, default=1000)
    ap.add_argument("--test-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="variant")
    ap.add_argument("--work", default="/tmp/speccert-bench-finetune")
    ap.add_argument("--allow-activation-change", action="store_true", help="ReLU -> MaxMin first")
    ap.add_argument("--augment", default="none", help="none, shift or shift:K (speccert finetune --augment)")
    a = ap.parse_args()
    train, val, test = subsets(a.data, a.train_n, a.val_n, a.test_n, a.seed)
    r = single_penalty(a.recipe[8:]) if a.recipe.startswith("penalty:") else get_recipe(a.recipe)
    opts = dict(r.penalty_options) | json.loads(a.opts)
    r = dataclasses.replace(
        r, penalty_options=MappingProxyType(opts), epochs=a.epochs, **json.loads(a.fields)
    )
    out = Path(a.work) / f"{a.name}.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = finetune(
        a.model,
        train,
        val,
        targets=json.loads(a.targets),
        recipe=r,
        out=out,
        overwrite=True,
        seed=a.seed,
        allow_activation_change=a.allow_activation_change,
        augment=a.augment,
    )
    for h in res.history:
        cra = {k: round(v, 3) for k, v in h.cra.items()}
        print(f"epoch {h.epoch}: clean {h.clean:.3f} cra {cra} L {h.lipschitz:.4g}", file=sys.stderr)
    note = f"best epoch {res.best_epoch}"
    print(json.dumps(row(a.name, load(str(out)), test, "cpu", time.perf_counter() - t0, a.epochs, note)))


if __name__ == "__main__":
    main()
