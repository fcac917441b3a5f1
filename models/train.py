"""Train the bundled Fashion-MNIST models and export each as ONNX and as a ``torch.export`` archive.

Usage (from the repository root; CPU, 2 threads, a few minutes per model)::

    python models/make_data.py                 # the bundled subsets (needed for the manifest)
    python models/train.py                     # every model below
    python models/train.py cnn resnet          # some of them
    python models/train.py --data DIR cnn      # IDX files elsewhere (or set SPECCERT_DATA)

For each model ``NAME`` this writes ``models/NAME.onnx``, ``models/NAME.pt2`` and its entry in
``models/manifest.json``: architecture, parameter count, the training recipe and command, clean accuracy
on the full 10,000-image test set and on the bundled 1k subset (with onnxruntime and with the reloaded
``.pt2``), file sizes and sha256. The tests in ``tests/test_models_zoo.py`` check the files against it.

Recipe (plain models): Adam, batch 128, cosine learning-rate decay, seeded (torch and the shuffling), full
60,000-image training set, cross-entropy.

``cnn_lip`` is trained by the product itself (``FROM_SCRATCH``): a seeded, freshly initialised cnn is
written to ``models/cnn_lip.init.pt2`` and ``speccert finetune`` trains it with a named recipe into
``models/cnn_lip.pt2`` (the command is recorded in the manifest as ``finetune_command``); speccert's own
ONNX exporter then writes ``models/cnn_lip.onnx`` from it, and the initial model and the run folder are
removed. The certificates in models/README.md come from ``speccert certify`` on the written files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

# On a shared, oversubscribed CPU, OpenMP's default spin-waiting makes 2-thread training ~20-50x
# slower (measured here: 3-5 s vs 0.06 s per resnet step); passive waiting must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from architectures import ARCHITECTURES  # noqa: E402
from fashion_data import load_split  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
SUBSET = HERE / "data" / "fashion_mnist_test_1k.npz"
MANIFEST = HERE / "manifest.json"
OPSET = 17


@dataclass(frozen=True)
class Recipe:
    arch: str
    epochs: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    batch_size: int = 128


RECIPES: dict[str, Recipe] = {
    "mlp": Recipe("mlp", epochs=10),
    "cnn": Recipe("cnn", epochs=10),
    "resnet": Recipe("resnet", epochs=8),
    "smooth_cnn": Recipe("smooth_cnn", epochs=10),
}


@dataclass(frozen=True)
class FromScratch:
    """A freshly initialised, seeded ``arch`` trained by ``speccert finetune`` with a named recipe.

    The product's own training command, started from random weights instead of a trained model: what
    ``speccert finetune`` can do for a user who trains a Lipschitz model from scratch.
    """

    arch: str
    recipe: str
    epochs: int
    targets: tuple[str, ...]
    lr: float
    ema: float
    penalty_options: tuple[tuple[str, float], ...]
    seed: int = 0

    def manifest_entry(self) -> dict[str, object]:
        """The manifest's "recipe": the named recipe, its penalty, and the options given to finetune."""
        from speccert.training.recipes import get_recipe

        return {
            "recipe": self.recipe,
            "penalty": get_recipe(self.recipe).penalty,
            "epochs": self.epochs,
            "targets": list(self.targets),
            "lr": self.lr,
            "ema": self.ema,
            "penalty-options": dict(self.penalty_options),
            "seed": self.seed,
        }


# cnn_lip: the best recipe of docs/finetune.md (models/finetune.py's cnn options: lmt-rescale, lr 3e-3, the
# GloRo form of the lmt loss at eps 0.6, an EMA of the weights) *without* --allow-activation-change, so
# the model stays ReLU (the zoo's ReLU Lipschitz model; cnn_robust is the MaxMin one). Targets: the cnn's
# (cra@0.5 >= 0.75, clean >= 0.85): the zoo's one stop rule, out of reach for a ReLU cnn here, so every
# epoch runs and the best epoch (as finetune ranks them on the 2k training subset) is written.
FROM_SCRATCH: dict[str, FromScratch] = {
    "cnn_lip": FromScratch(
        "cnn",
        "lmt-rescale",
        epochs=20,
        targets=("cra@0.5>=0.75", "clean>=0.85"),
        lr=3e-3,
        ema=0.999,
        penalty_options=(("gloro", 1.0), ("eps", 0.6)),
    ),
}
VAL = "models/data/fashion_mnist_train_2k.npz"
DATA_DEFAULT = "/usr/share/datasets/fashion-mnist"


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    out = [model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out)


def train(
    name: str, recipe: Recipe, data: str | None, log: bool = True
) -> tuple[nn.Module, dict[str, float]]:
    torch.manual_seed(recipe.seed)
    x, y = load_split("train", data)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = ARCHITECTURES[recipe.arch]()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps = recipe.epochs * math.ceil(len(x) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    shuffle = torch.Generator().manual_seed(recipe.seed)
    start = time.time()
    for epoch in range(recipe.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=shuffle)
        total, correct, n = 0.0, 0, 0
        for i in range(0, len(x), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            xb, yb = xt[idx], yt[idx]
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            n += len(idx)
        if log:
            print(
                f"[{name}] epoch {epoch + 1}/{recipe.epochs} loss {total / n:.4f} train acc {correct / n:.4f}"
                + f" ({time.time() - start:.0f}s)",
                file=sys.stderr,
            )
    model.eval()
    return model, {"train_seconds": round(time.time() - start, 1), "train_accuracy_last_epoch": correct / n}


def export(model: nn.Module, name: str) -> tuple[Path, Path]:
    """Write NAME.onnx (legacy TorchScript exporter: no onnxscript needed) and NAME.pt2, batch dim dynamic."""
    example = torch.zeros(4, 1, 28, 28)
    onnx_path, pt2_path = HERE / f"{name}.onnx", HERE / f"{name}.pt2"
    with warnings.catch_warnings():
        # PRESERVE (the model is in eval mode) keeps BatchNormalization nodes instead of fusing them
        # into the convs, so the ONNX file is the architecture as written; constant folding is safe
        # because nothing is in training mode.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(
            model,
            (example,),
            str(onnx_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=True,
        )
    strip_identities(onnx_path)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(pt2_path))
    return onnx_path, pt2_path


def finetune_argv(name: str, spec: FromScratch, init: Path, data: str) -> list[str]:
    """The ``speccert finetune`` command that trains ``init`` (a fresh ``spec.arch``) into models/NAME.pt2."""
    argv = ["speccert", "finetune", str(init.relative_to(HERE.parent)), "--data", data, "--val", VAL]
    argv += ["--recipe", spec.recipe, "--epochs", str(spec.epochs)]
    for t in spec.targets:
        argv += ["--target", t]
    argv += ["--lr", f"{spec.lr:g}", "--ema", f"{spec.ema:g}"]
    for key, value in spec.penalty_options:
        argv += ["--penalty-option", f"{key}={value:g}"]
    return [*argv, "--out", f"models/{name}.pt2", "--overwrite", "--seed", str(spec.seed)]


def train_from_scratch(name: str, spec: FromScratch, data: str | None) -> tuple[nn.Module, dict[str, object]]:
    """Write a seeded fresh ``spec.arch`` (models/NAME.init.pt2), run ``speccert finetune`` on it (writes
    models/NAME.pt2), export models/NAME.onnx from the .pt2 with speccert's own ONNX exporter, remove the
    initial model and the finetune run folder; return the trained module (the .pt2 reloaded) and the stats."""
    import shlex
    import shutil
    import subprocess

    torch.manual_seed(spec.seed)
    init = HERE / f"{name}.init.pt2"
    example = torch.zeros(4, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    ep = torch.export.export(ARCHITECTURES[spec.arch]().eval(), (example,), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(init))
    data_dir = data or os.environ.get("SPECCERT_DATA", DATA_DEFAULT)
    argv = finetune_argv(name, spec, init, data_dir)
    print(f"[{name}] {shlex.join(argv)}", file=sys.stderr)
    start = time.time()
    # exit 1 means "budget ended before every target held": the best epoch is still written
    proc = subprocess.run([sys.executable, "-m", "speccert", *argv[1:]], cwd=HERE.parent, text=True)
    seconds = time.time() - start
    pt2_path = HERE / f"{name}.pt2"
    init.unlink()
    shutil.rmtree(pt2_path.with_name(pt2_path.name + ".run"), ignore_errors=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{shlex.join(argv)} failed ({proc.returncode})")
    sys.path.insert(0, str(HERE.parent))
    import speccert
    from speccert.exporters.onnx_export import save_onnx

    save_onnx(speccert.load(pt2_path), HERE / f"{name}.onnx", opset=OPSET)
    stats: dict[str, object] = {
        "finetune_command": shlex.join(argv).replace(data_dir, DATA_DEFAULT),
        "finetune_exit_code": proc.returncode,
        "train_seconds": round(seconds, 1),
    }
    return torch.export.load(str(pt2_path)).module(), stats


def strip_identities(path: Path) -> None:
    """Drop the exporter's Identity nodes (aliases of initializers) by rewiring their consumers."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in graph_outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    del graph.node[:]
    graph.node.extend(keep)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate(model: nn.Module, onnx_path: Path, pt2_path: Path, data: str | None) -> dict[str, object]:
    import onnxruntime as ort

    x_test, y_test = load_split("test", data)
    sub = np.load(SUBSET)
    xs, ys = sub["x"], sub["y"]
    ref = torch_logits(model, xs)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(None, {sess.get_inputs()[0].name: xs})[0]
    loaded = torch.export.load(str(pt2_path)).module()
    pt2_logits = torch_logits(loaded, xs)
    return {
        "test_accuracy": accuracy(torch_logits(model, x_test), y_test),
        "test_examples": len(y_test),
        "subset_accuracy": accuracy(ref, ys),
        "subset_accuracy_onnxruntime": accuracy(ort_logits, ys),
        "subset_accuracy_pt2": accuracy(pt2_logits, ys),
        "max_abs_diff_onnxruntime": float(np.abs(ort_logits - ref).max()),
        "max_abs_diff_pt2": float(np.abs(pt2_logits - ref).max()),
    }


def main() -> None:
    known = [*RECIPES, *FROM_SCRATCH]
    p = argparse.ArgumentParser(description="Train and export the bundled Fashion-MNIST models.")
    p.add_argument("names", nargs="*", default=known, help=f"models to train (default: all of {known})")
    p.add_argument(
        "--data", default=None, help="folder with the IDX files (default: $SPECCERT_DATA or Debian's)"
    )
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    unknown = [n for n in a.names if n not in known]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {known}")
    torch.set_num_threads(a.threads)
    # the speccert finetune subprocess reads its thread count from the environment
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"models": {}}
    for name in a.names:
        if name in FROM_SCRATCH:
            spec = FROM_SCRATCH[name]
            model, stats = train_from_scratch(name, spec, a.data)
            onnx_path, pt2_path = HERE / f"{name}.onnx", HERE / f"{name}.pt2"
            # models/README.md's zoo table reads "speccert finetune of <finetuned_from>, <recipe>"
            stats = {"finetuned_from": f"a fresh {spec.arch} (seed {spec.seed})", **stats}
            arch, recipe = spec.arch, spec.manifest_entry()
        else:
            model, stats = train(name, RECIPES[name], a.data)
            onnx_path, pt2_path = export(model, name)
            arch, recipe = RECIPES[name].arch, asdict(RECIPES[name])
        metrics = evaluate(model, onnx_path, pt2_path, a.data)
        manifest["models"][name] = {
            "architecture": arch,
            # the architecture's own count (a graph reloaded by speccert also counts its input normalisation)
            "parameters": sum(p.numel() for p in ARCHITECTURES[arch]().parameters()),
            "input_shape": [1, 28, 28],
            "input_range": [0.0, 1.0],
            "classes": 10,
            "recipe": recipe,
            "command": f"python models/train.py {name}",
            "torch_version": torch.__version__,
            "onnx_opset": OPSET,
            **stats,
            **metrics,
            "files": {
                p.suffix[1:]: {"path": p.name, "bytes": p.stat().st_size, "sha256": sha256(p)}
                for p in (onnx_path, pt2_path)
            },
        }
        manifest["subset"] = {"path": str(SUBSET.relative_to(HERE)), "sha256": sha256(SUBSET)}
        manifest["models"] = dict(sorted(manifest["models"].items()))
        MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
        print(
            f"{name}: test acc {metrics['test_accuracy']:.4f}, subset {metrics['subset_accuracy']:.3f} "
            f"(ort {metrics['subset_accuracy_onnxruntime']:.3f}, pt2 {metrics['subset_accuracy_pt2']:.3f}), "
            f"max |ort - torch| {metrics['max_abs_diff_onnxruntime']:.2e}, {stats['train_seconds']}s"
        )


if __name__ == "__main__":
    main()
