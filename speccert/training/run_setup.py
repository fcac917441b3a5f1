"""What a fine-tuning run needs before its first step: the model (a private logits graph), the data,
and safe output paths.

Path rules (the user's input is never overwritten):
- `out` may not be the input model or weights file (refused even with overwrite);
- an existing `out`, or an existing run folder `<out>.run/`, is refused unless `overwrite=True`
  (start over) or `resume=True` (continue that run);
- `out`'s suffix must keep the input's format (.onnx, .pt2, .pt/.pth for a state_dict).
Without `--val`, a seeded 10% of the training data is held out for the certifier (at most 10,000).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from speccert.data import Dataset, load_data, make_dataset
from speccert.errors import SpeccertError, UsageError
from speccert.ir.graph import Graph, file_sha256
from speccert.ir.ops import Softmax, is_fixed
from speccert.training.checkpoint import BEST, LAST, remove_stale_temp, run_dir_for
from speccert.training.evaluate import Evaluator
from speccert.training.export import check_out_suffix, key_map, output_format, read_state_dict


def load_graph(
    model: Graph | str, input_shape: tuple[int, ...] | None, weights: str | os.PathLike[str] | None
) -> tuple[Graph, str | None]:
    if isinstance(model, Graph):
        return model, None
    from speccert.importers import load

    return load(model, input_shape, weights=weights), str(model)


def logits_graph(g: Graph) -> Graph:
    """`g` without a final Softmax/LogSoftmax (sharing its ops and tensors): cross-entropy wants logits."""
    out = g.node(g.output) if g.output != "input" else None
    if out is not None and isinstance(out.op, Softmax):
        return g.replace_nodes([n for n in g.nodes if n is not out], output=out.inputs[0])
    return g


def private_copy(graph: Graph, device: str) -> Graph:
    """graph.to(device) with fresh storage even when nothing moves (Graph.to keeps same-device tensors)."""
    g = graph.to(device)
    for node in g.nodes:
        for key, t in node.op.parameters().items():
            object.__setattr__(node.op, key, t.detach().clone())
    return g


def as_dataset(data: Dataset | str | os.PathLike[str] | tuple[Any, Any], split: str) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, tuple):
        x, y = (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in data)
        return make_dataset(x, y, "<arrays>")
    return load_data(data, split)


def split_validation(train: Dataset, seed: int) -> tuple[Dataset, Dataset]:
    n = len(train)
    n_val = max(1, min(10_000, n // 10))
    perm = np.random.default_rng(seed).permutation(n)
    vi, ti = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    return (
        Dataset(train.x[ti], train.y[ti], train.source, train.split, train.classes),
        Dataset(train.x[vi], train.y[vi], train.source + " (held-out 10%)", train.split, train.classes),
    )


@dataclass
class RunPaths:
    out: Path | None
    run_dir: Path | None
    model_sha: str
    spec: str | None
    weights: str | None = None
    keys: dict[str, str] | None = None
    input_shape: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def reload_report(self, written: Path, measure: Evaluator) -> tuple[Any, str]:
        """Certify the file just written (reloaded from disk), so the report is the output's own."""
        from speccert.importers import load

        try:
            if self.keys is not None and self.spec is not None:
                g = load(self.spec, self.input_shape, weights=written)
            else:
                g = load(written, self.input_shape)
        except SpeccertError as exc:
            return None, f"could not reload {written} to certify it: {exc}"
        return measure(g).report, ""


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _check_run_folder(out: Path, run: Path, resume: bool, overwrite: bool) -> None:
    """Apply the path rules to the run folder. A run killed before its first complete `last.pt` (only
    temp files, perhaps a `best.pt`) has no progress to keep: --resume starts it again from step 0."""
    if run.is_dir():
        remove_stale_temp(run)
    if resume:
        if not run.is_dir():
            raise UsageError(
                f"--resume: no checkpoint to resume: no run folder {run} (start without --resume)"
            )
        if not (run / LAST).is_file():
            (run / BEST).unlink(missing_ok=True)  # from the interrupted first epoch; it restarts
    elif overwrite:
        if run.is_dir():
            shutil.rmtree(run)
    else:
        if out.exists():
            raise UsageError(f"--out {out} already exists; pass --overwrite to replace it")
        if run.is_dir() and any(run.iterdir()):
            state = "" if (run / LAST).is_file() else " (interrupted before its first checkpoint)"
            raise UsageError(
                f"a run folder {run} exists{state}; pass --resume to continue it or --overwrite to start over"
            )


def dataset_digest(ds: Dataset) -> str:
    """sha256 of a dataset's arrays (dtype, shape and bytes of x and y): the data a run trained on."""
    h = hashlib.sha256()
    for a in (ds.x, ds.y):
        arr = np.ascontiguousarray(a)
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def run_config(
    *,
    seed: int,
    batch_size: int,
    penalty: str,
    penalty_weight: float | None,
    penalty_options: dict[str, Any] | None,
    train: Dataset,
    val: Dataset,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> dict[str, Any]:
    """What makes two runs the same run, recorded in every checkpoint (plain values: weights_only).

    Not recorded: lr (lowering it is the advice after a diverged run), epochs and targets (a finished
    run may be continued with a larger budget)."""
    return {
        "seed": int(seed),
        "batch_size": int(batch_size),
        "penalty": str(penalty),
        "penalty_weight": None if penalty_weight is None else float(penalty_weight),
        "penalty_options": repr(sorted((penalty_options or {}).items())),
        "train_data": f"sha256:{dataset_digest(train)}",  # the content, wherever the file now lies
        "val_data": f"sha256:{dataset_digest(val)}",
        "mean": None if mean is None else [float(m) for m in mean],
        "std": None if std is None else [float(s) for s in std],
    }


def prepare_paths(
    graph: Graph,
    spec: str | None,
    out: str | os.PathLike[str] | None,
    resume: bool,
    overwrite: bool,
    weights: str | os.PathLike[str] | None,
) -> RunPaths:
    src = graph.source
    sha = src.sha256 if src is not None and src.sha256 else ""
    if weights is not None and Path(weights).is_file():
        sha = sha + ":" + file_sha256(Path(weights))
    if out is None:
        return RunPaths(None, None, sha, spec)
    out_p = Path(out)
    fmt = output_format(graph)
    check_out_suffix(fmt, out_p)
    inputs = [Path(p) for p in (src.path if src else None, weights) if p]
    for p in inputs:
        if _same_file(out_p, p):
            raise UsageError(f"--out {out_p} is the input file {p}; refusing to overwrite the input model")
    run = run_dir_for(out_p)
    _check_run_folder(out_p, run, resume, overwrite)
    if out_p.is_dir():
        raise UsageError(f"--out {out_p} is a folder")
    keys = None
    if fmt == "state_dict":
        if weights is None:
            raise UsageError("fine-tuning a 'module:factory' model needs --weights (its state_dict)")
        trainable = [  # an upsampling's constant (is_fixed) is the importer's, in no state_dict
            name
            for name, t in graph.parameters().items()
            if t.is_floating_point()
            and not name.endswith((".mean", ".var"))
            and type(op := graph.node(name.rsplit(".", 1)[0]).op).__name__ != "Affine"
            and not is_fixed(op)
        ]
        keys = key_map(graph, read_state_dict(weights), trainable)
    return RunPaths(
        out_p, run, sha, spec, str(weights) if weights is not None else None, keys, graph.input_shape
    )
