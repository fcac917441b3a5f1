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

Recipe: Adam, batch 128, cosine learning-rate decay, seeded (torch and the shuffling), full 60,000-image
training set. ``*_lip`` variants add Lipschitz-margin training (Tsuzuku et al. 2018): the cross-entropy
sees logits ``z + sqrt(2)·eps·L̂·(1 − onehot(y))`` with ``L̂`` the product of per-layer spectral norms
estimated by one power-iteration step per batch on the actual (strided, padded) operators. This only
shapes training; it certifies nothing (power iteration under-estimates): the certificates in
models/README.md come from ``speccert certify``.
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
from architectures import ARCHITECTURES, Normalize  # noqa: E402
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
    lipschitz_margin_eps: float = 0.0  # 0: plain cross-entropy
    seed: int = 0
    batch_size: int = 128


RECIPES: dict[str, Recipe] = {
    "mlp": Recipe("mlp", epochs=10),
    "cnn": Recipe("cnn", epochs=10),
    "resnet": Recipe("resnet", epochs=8),
    "smooth_cnn": Recipe("smooth_cnn", epochs=10),
    "cnn_lip": Recipe("cnn", epochs=10, lipschitz_margin_eps=0.5),
}


class SpectralEstimator:
    """Power-iteration estimate of prod_i ||A_i||_2 over the linear layers of a Sequential model.

    For each Conv2d / Linear, a persistent input-shaped vector u is refined once per call
    (u ← Aᵀ A u / ||Aᵀ A u||, by autograd through the bias-free operator), and σ_i = ||A u|| is computed
    with gradients w.r.t. the weights (u detached), so the product can be penalised. Normalize
    contributes 1/std. Activations used here (ReLU, Softplus) have slope ≤ 1.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        self.layers: list[nn.Module] = []
        self.vectors: list[torch.Tensor] = []
        self.scale = 1.0
        gen = torch.Generator().manual_seed(1234)
        x = torch.zeros(1, *input_shape)
        for m in model.children():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                self.layers.append(m)
                u = torch.randn(x.shape, generator=gen)
                self.vectors.append(u / u.norm())
            elif isinstance(m, Normalize):
                self.scale /= float(m.std)
            with torch.no_grad():
                x = m(x)

    @staticmethod
    def _apply(m: nn.Module, u: torch.Tensor) -> torch.Tensor:
        if isinstance(m, nn.Conv2d):
            return nn.functional.conv2d(u, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
        assert isinstance(m, nn.Linear)
        return nn.functional.linear(u.flatten(1), m.weight)

    def __call__(self) -> torch.Tensor:
        total = torch.tensor(self.scale)
        for i, m in enumerate(self.layers):
            u = self.vectors[i].detach().requires_grad_(True)
            with torch.enable_grad():
                v = self._apply(m, u)
                (g,) = torch.autograd.grad(v, u, grad_outputs=v.detach())
            u = (g / g.norm().clamp_min(1e-12)).detach()
            self.vectors[i] = u
            total = total * self._apply(m, u).norm()
        return total


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
    est = SpectralEstimator(model, tuple(x.shape[1:])) if recipe.lipschitz_margin_eps > 0 else None
    shuffle = torch.Generator().manual_seed(recipe.seed)
    start = time.time()
    lip = float("nan")
    for epoch in range(recipe.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=shuffle)
        total, correct, n = 0.0, 0, 0
        for i in range(0, len(x), recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            xb, yb = xt[idx], yt[idx]
            logits = model(xb)
            train_logits = logits
            if est is not None:
                lip_t = est()
                lip = float(lip_t.detach())
                off = 1.0 - nn.functional.one_hot(yb, 10).to(logits.dtype)
                train_logits = logits + math.sqrt(2.0) * recipe.lipschitz_margin_eps * lip_t * off
            loss = nn.functional.cross_entropy(train_logits, yb)
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
                + (f" L_est {lip:.2f}" if est is not None else "")
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
    p = argparse.ArgumentParser(description="Train and export the bundled Fashion-MNIST models.")
    p.add_argument(
        "names", nargs="*", default=list(RECIPES), help=f"models to train (default: all of {list(RECIPES)})"
    )
    p.add_argument(
        "--data", default=None, help="folder with the IDX files (default: $SPECCERT_DATA or Debian's)"
    )
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    unknown = [n for n in a.names if n not in RECIPES]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {list(RECIPES)}")
    torch.set_num_threads(a.threads)
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"models": {}}
    for name in a.names:
        recipe = RECIPES[name]
        model, stats = train(name, recipe, a.data)
        onnx_path, pt2_path = export(model, name)
        metrics = evaluate(model, onnx_path, pt2_path, a.data)
        manifest["models"][name] = {
            "architecture": recipe.arch,
            "parameters": sum(p.numel() for p in model.parameters()),
            "input_shape": [1, 28, 28],
            "input_range": [0.0, 1.0],
            "classes": 10,
            "recipe": asdict(recipe),
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
