"""`finetune`: train until the certifier says every target holds on held-out data.

    >>> res = speccert.finetune("models/cnn.onnx", "train.npz", "val.npz",
    ...                         targets=["cra@0.5>=0.70", "clean>=0.85"], penalty="lmt",
    ...                         epochs=30, out="robust.onnx")          # doctest: +SKIP
    >>> res.met, res.exit_code, res.missed                               # doctest: +SKIP

Each epoch: one pass of training (cross-entropy + the penalty; BatchNorm stays in eval mode: its
statistics are frozen buffers and only gamma/beta train, so the certified map is the trained map;
input-normalisation constants are frozen), then `speccert.certify` on the validation data. The run
stops as soon as every target holds (exit 0), or at the epoch budget (exit 1, the missed targets and
by how much). The input model is measured first (epoch 0): if it already meets the targets nothing
is trained. The best epoch (all targets met, else the smallest summed distance to them) is written to `out` in
the input's format, and the closing report is the certify report of that written file.

Reliability: checkpoints (model, optimizer, penalty state and weight, schedule, epoch, step, RNG) go
atomically to `<out>.run/last.pt` every epoch and every `checkpoint_every` steps; `resume=True`
continues from it (a mid-epoch checkpoint skips the batches already done: each epoch's order is
a function of (seed, epoch)). The input file is never overwritten. A non-finite loss stops the run
with TrainingDiverged (exit 1) before the bad step is applied; the last checkpoint is kept.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DistributedSampler

from speccert.data import Dataset, fit_to_model
from speccert.errors import EXIT_FAILED, SpeccertError, UsageError
from speccert.ir.decision import check_decision, decide_by
from speccert.ir.graph import Graph
from speccert.ir.ops import Affine, Softmax
from speccert.training import ddp
from speccert.training.checkpoint import (
    BEST,
    LAST,
    atomic_save,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from speccert.training.evaluate import Evaluator, certifier_evaluator
from speccert.training.penalties import make_penalty
from speccert.training.run_setup import RunPaths, as_dataset, load_graph, prepare_paths, split_validation
from speccert.training.schedule import WeightSchedule
from speccert.training.targets import (
    Measurement,
    Target,
    check_targets,
    check_unique,
    parse_target,
    target_eps,
)

Tensor = torch.Tensor
StepHook = Callable[[int, int, int, float], None]  # (epoch, step in epoch, steps in epoch, loss)


class TrainingDiverged(SpeccertError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float
    clean: float
    cra: dict[float, float]
    lipschitz: float
    weight: float
    met: bool
    missed: list[str]
    seconds: float
    note: str = ""


@dataclass
class FinetuneResult:
    met: bool
    missed: list[str]
    history: list[EpochRecord]
    best_epoch: int
    output: Path | None
    run_dir: Path | None
    targets: list[Target]
    report: Any = None  # the certify report of the written output (CertifyReport)
    graph: Graph | None = None  # the fine-tuned graph (the best epoch's weights)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.met else EXIT_FAILED


def _deciding(measure: Evaluator, decision: str) -> Evaluator:
    """The evaluator applied to the graph that decides by `decision` (the written file never has it)."""
    return lambda graph: measure(decide_by(graph, decision))


def _logits_graph(g: Graph) -> Graph:
    """`g` without a final Softmax/LogSoftmax (sharing its ops and tensors): cross-entropy wants logits."""
    out = g.node(g.output) if g.output != "input" else None
    if out is not None and isinstance(out.op, Softmax):
        return g.replace_nodes([n for n in g.nodes if n is not out], output=out.inputs[0])
    return g


def _private_copy(graph: Graph, device: str) -> Graph:
    """graph.to(device) with fresh storage even when nothing moves (Graph.to keeps same-device tensors)."""
    g = graph.to(device)
    for node in g.nodes:
        for key, t in node.op.parameters().items():
            object.__setattr__(node.op, key, t.detach().clone())
    return g


class _Indices(torch.utils.data.Dataset[int]):
    """A stand-in dataset of n indices for DistributedSampler (which only needs len)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _record_dict(r: EpochRecord) -> dict[str, Any]:
    d = dict(r.__dict__)
    d["cra"] = [[float(k), float(v)] for k, v in r.cra.items()]  # weights_only checkpoints: no float keys
    return d


def _record_from(d: dict[str, Any]) -> EpochRecord:
    d = dict(d)
    d["cra"] = {float(k): float(v) for k, v in d["cra"]}
    return EpochRecord(**d)


def _score(targets: list[Target], m: Measurement) -> tuple[int, float]:
    """Best epoch: every target met first, then the smallest summed distance to the targets (not the
    count of targets met, which would prefer an untouched input that only meets its clean target)."""
    check = check_targets(targets, m)
    return int(check.met), -check.distance


def finetune(
    model: Graph | str,
    train_data: Dataset | str | os.PathLike[str] | tuple[Any, Any],
    val_data: Dataset | str | os.PathLike[str] | tuple[Any, Any] | None = None,
    targets: Sequence[str | Target] = ("cra@0.5>=0.7",),
    penalty: str = "lmt",
    *,
    penalty_weight: float | None = None,
    penalty_options: dict[str, Any] | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    device: str = "cpu",
    checkpoint_every: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: tuple[int, ...] | None = None,
    weights: str | os.PathLike[str] | None = None,
    evaluator: Evaluator | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_step: StepHook | None = None,
    certify_batch_size: int = 256,
    decision: str = "argmax",
) -> FinetuneResult:
    """Fine-tune `model` until every target holds on `val_data` (see the module docstring).

    targets: strings "cra@EPS>=V", "clean>=V", "lipschitz<=V" (or Target objects). penalty: a key of
    PENALTIES. batch_size is the global batch (split across ranks under torchrun). decision: "argmin"
    trains and certifies -logits (speccert.ir.decision) and writes the model without the negation.
    """
    tlist = [t if isinstance(t, Target) else parse_target(t) for t in targets]
    check_unique(tlist)
    if resume and out is None:
        raise UsageError("--resume needs --out (checkpoints live in the run folder next to it)")
    if epochs < 0 or batch_size <= 0 or not lr > 0 or checkpoint_every < 0:
        raise UsageError("epochs >= 0, batch size > 0, lr > 0 and checkpoint_every >= 0 are required")
    info, dev = ddp.init_from_env(device)
    if batch_size % info.world_size:
        raise UsageError(
            f"--batch-size {batch_size} must be divisible by the number of processes {info.world_size}"
        )
    graph, spec = load_graph(model, input_shape, weights)
    paths = ddp.on_main(lambda: prepare_paths(graph, spec, out, resume, overwrite, weights), info)
    random.seed(seed)
    torch.manual_seed(seed)

    train = as_dataset(train_data, "train")
    val = as_dataset(val_data, "test") if val_data is not None else None
    if val is None:
        train, val = split_validation(train, seed)
    n_classes = graph.output_shape[0] if len(graph.output_shape) == 1 else 0
    if n_classes < 2:
        raise UsageError(
            f"finetune needs a classifier with a vector of >= 2 logits; this model's output has "
            f"shape {list(graph.output_shape)}"
        )
    train, val = (
        fit_to_model(train, graph.input_shape, n_classes),
        fit_to_model(val, graph.input_shape, n_classes),
    )
    eps = target_eps(tlist) or [0.5]
    measure = evaluator or certifier_evaluator(
        val, eps, dev, mean=mean, std=std, batch_size=certify_batch_size
    )
    if check_decision(decision) != "argmax":
        measure = _deciding(measure, decision)

    g = _private_copy(graph, dev)  # the caller's graph is never modified; the result carries the trained one
    # Trains on the logits when the model ends in a softmax (same tensors as g); argmin models on -logits.
    lg = _logits_graph(g)
    tg = decide_by(lg, decision)
    module = tg.to_torch()
    for node in tg.nodes:  # input normalisation (and the argmin negation) is not a weight
        if isinstance(node.op, Affine):
            for t in node.op.parameters().values():
                t.requires_grad_(False)
    opts = dict(penalty_options or {})
    if penalty == "lmt":
        opts.setdefault("eps", max(eps))
    # On the logits graph: every penalty's bound is the same for -logits (norms of W_y - W_j, Jacobians).
    pen = make_penalty(penalty, lg, penalty_weight, **opts).to(dev)
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    sched = WeightSchedule(float(pen.weight))
    x_all = torch.from_numpy(train.x).to(device=dev, dtype=g.dtype)
    y_all = torch.from_numpy(train.y).to(dev)
    if mean is not None or std is not None:
        mu = torch.tensor(list(mean or [0.0]), dtype=g.dtype, device=dev)
        sd = torch.tensor(list(std or [1.0]), dtype=g.dtype, device=dev)
        shape = (1, -1) + (1,) * (x_all.dim() - 2) if mu.numel() > 1 else (1,)
        x_all = (x_all - mu.reshape(shape)) / sd.reshape(shape)

    history: list[EpochRecord] = []
    start_epoch, start_step, global_step = 0, 0, 0
    best: tuple[tuple[int, float], int] | None = None
    if resume and paths.run_dir is not None:
        ck = load_checkpoint(paths.run_dir / LAST)
        if ck.get("model_sha") != paths.model_sha or ck.get("penalty") != penalty:
            raise UsageError(
                f"the checkpoint in {paths.run_dir} belongs to another model or penalty; "
                "start a new run (--overwrite) instead of --resume"
            )
        module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        pen.load_state_dict(ck["penalty_state"])
        sched.load_state_dict(ck["schedule"])
        set_rng_state(ck["rng"])
        start_epoch, start_step, global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        history = [_record_from(r) for r in ck["history"]]
        best = (tuple(ck["best_score"]), ck["best_epoch"]) if ck.get("best_score") is not None else None  # type: ignore[assignment]

    best_state: dict[str, Tensor] = {}
    if resume and paths.run_dir is not None and (paths.run_dir / BEST).is_file():
        best_state.update(load_checkpoint(paths.run_dir / BEST)["model"])

    def save(name: str, epoch: int, step_in_epoch: int) -> None:
        if paths.run_dir is None or not info.is_main:
            return
        atomic_save(
            {
                "model": module.state_dict(),
                "optimizer": opt.state_dict(),
                "penalty_state": pen.state_dict(),
                "penalty": penalty,
                "schedule": sched.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "step_in_epoch": step_in_epoch,
                "global_step": global_step,
                "model_sha": paths.model_sha,
                "history": [_record_dict(r) for r in history],
                "best_score": list(best[0]) if best else None,
                "best_epoch": best[1] if best else -1,
            },
            paths.run_dir / name,
        )

    def evaluate(epoch: int, loss: float, t0: float) -> tuple[bool, EpochRecord]:
        nonlocal best
        rec: EpochRecord | None = None
        if info.is_main:
            m = measure(g)
            check = check_targets(tlist, m)
            used = float(pen.weight)
            if epoch == 0:
                sched.observe(tlist, m)
            why = "" if epoch == 0 or check.met else sched.update(tlist, m)[1]
            rec = EpochRecord(
                epoch,
                loss,
                m.clean,
                dict(m.cra),
                m.lipschitz,
                used,
                check.met,
                check.missed,
                time.perf_counter() - t0,
                why,
            )
            sc = _score(tlist, m)
            if best is None or sc > best[0] or (sc == best[0] and epoch > 0):  # ties: the later trained epoch
                best = (sc, epoch)
                best_state.clear()
                best_state.update({k: v.detach().clone() for k, v in module.state_dict().items()})
                if paths.run_dir is not None:
                    atomic_save({"model": best_state, "epoch": epoch}, paths.run_dir / BEST)
        rec, best, weight = ddp.broadcast_object((rec, best, sched.weight), info)
        assert rec is not None
        sched.weight = weight
        pen.set_weight(weight)
        history.append(rec)
        if on_epoch is not None and info.is_main:
            on_epoch(rec)
        return rec.met, rec

    met = False
    if not history:  # epoch 0: the input model as given
        met, _ = evaluate(0, math.nan, time.perf_counter())
        start_epoch = max(start_epoch, 1)
        save(LAST, 1, 0)
    else:
        met = history[-1].met
    n = len(train)
    per_rank = batch_size // info.world_size
    epoch = start_epoch
    while not met and epoch <= epochs:
        t0 = time.perf_counter()
        sampler: DistributedSampler[int] = DistributedSampler(
            _Indices(n),
            num_replicas=info.world_size,
            rank=info.rank,
            shuffle=True,
            seed=seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        order = list(sampler)
        batches = [order[i : i + per_rank] for i in range(0, len(order), per_rank)]
        module.train()
        pen.train()
        tot, cnt = 0.0, 0
        for k in range(start_step, len(batches)):
            idx = torch.tensor(batches[k], device=dev)
            xb, yb = x_all[idx], y_all[idx]
            if pen.needs_input:
                xb = xb.clone().requires_grad_(True)
            logits = module(xb)
            loss = pen.loss(logits, yb, xb, module)
            bad = ddp.all_reduce_sum([0.0 if torch.isfinite(loss).item() else 1.0], info, dev)[0]
            if bad:
                where = paths.run_dir / LAST if paths.run_dir is not None else "none (no --out)"
                raise TrainingDiverged(
                    f"the loss became {float(loss.detach()):g} at epoch {epoch}, step {k + 1}; "
                    f"stopped before applying it. Last good checkpoint: {where}. "
                    "Try a smaller --lr or penalty weight, then --resume"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            ddp.average_gradients(params, info)
            opt.step()
            global_step += 1
            lv = float(loss.detach())
            tot, cnt = tot + lv * len(batches[k]), cnt + len(batches[k])
            if checkpoint_every and global_step % checkpoint_every == 0:
                save(LAST, epoch, k + 1)
            if on_step is not None:
                on_step(epoch, k + 1, len(batches), lv)
        start_step = 0
        s, c = ddp.all_reduce_sum([tot, float(cnt)], info, dev)
        module.eval()
        pen.eval()
        met, _ = evaluate(epoch, s / max(c, 1.0), t0)
        epoch += 1
        save(LAST, epoch, 0)
    if not met and best_state:  # the budget ran out: keep the best epoch, not the last
        module.load_state_dict(best_state)
    return _finish(g, tlist, history, best, paths, info, met, measure)


def _finish(
    g: Graph,
    targets: list[Target],
    history: list[EpochRecord],
    best: tuple[tuple[int, float], int] | None,
    paths: RunPaths,
    info: ddp.DistInfo,
    met: bool,
    measure: Evaluator,
) -> FinetuneResult:
    best_epoch = best[1] if best is not None else history[-1].epoch
    rec = next(r for r in history if r.epoch == best_epoch)
    written, report, notes = None, None, []
    if info.is_main and paths.out is not None:
        from speccert.training.export import save_like_input

        written = save_like_input(g, paths.out, weights=paths.weights, keys=paths.keys)
        report, why = paths.reload_report(written, measure)
        if why:
            notes.append(why)
    ddp.barrier(info)
    missed = [] if met else rec.missed
    return FinetuneResult(met, missed, history, best_epoch, written, paths.run_dir, targets, report, g, notes)


__all__ = ["EpochRecord", "FinetuneResult", "TrainingDiverged", "finetune"]
