"""`finetune`: train until the certifier says every target holds on held-out data.

    >>> res = speccert.finetune("models/cnn.onnx", "train.npz", "val.npz",
    ...                         targets=["cra@0.5>=0.70", "clean>=0.85"], recipe="lmt-anneal",
    ...                         out="robust.onnx")                       # doctest: +SKIP
    >>> res.met, res.exit_code, res.missed, res.pareto                   # doctest: +SKIP

What trains is a *recipe* (speccert.training.recipes: a penalty with its options, the learning-rate
schedule, gradient clipping, the epoch budget); `penalty="NAME"` alone is the plain recipe of that
single penalty. Each epoch: one pass of training (cross-entropy + the penalty; BatchNorm stays in eval
mode: its statistics are frozen buffers and only gamma/beta train, so the certified map is the trained
map; input-normalisation constants are frozen), then `speccert.certify` on the validation data. The
run stops as soon as every target holds (exit 0), or at the epoch or time budget (exit 1, the missed
targets and by how much). The input model is measured first (epoch 0): if it already meets the
targets nothing is trained. The best epoch (all targets met, else the smallest summed distance to
them) is written to `out` in the input's format, and the closing report is the certify report of that
written file (with `audit=N`, also a PGD-L2 attack on N of its certified validation points at their
certified radius: any success raises InternalError, exit 5). The epochs on the Pareto front of clean
vs certified accuracy (at the largest target radius) are listed in the result and their weights kept
in the run folder (`epoch-N.pt`).

Reliability: checkpoints (model, optimizer, penalty state and weight, schedule, epoch, step, RNG) go
atomically to `<out>.run/last.pt` every epoch and every `checkpoint_every` steps; `resume=True`
continues from it (a mid-epoch checkpoint skips the batches already done: each epoch's order is
a function of (seed, epoch)). The input file is never overwritten. A non-finite loss stops the run
with TrainingDiverged (exit 1) before the bad step is applied; the last checkpoint is kept. The run
itself is a `FinetuneRun` (speccert.training.run).
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from speccert.data import Dataset, fit_to_model
from speccert.errors import UsageError
from speccert.ir.decision import check_decision, decide_by
from speccert.ir.graph import Graph
from speccert.training import ddp
from speccert.training.augment import Augment, parse_augment
from speccert.training.evaluate import STOPPING_RULE_OPTIONS, Evaluator, certifier_evaluator
from speccert.training.maxmin import ACTIVATIONS, ActivationChange, relu_to_maxmin
from speccert.training.recipes import Recipe, get_recipe, single_penalty
from speccert.training.records import EpochRecord, FinetuneResult
from speccert.training.run import FinetuneRun, Hooks, RunConfig, StepHook, TrainingDiverged
from speccert.training.run_setup import as_dataset, load_graph, prepare_paths, run_config, split_validation
from speccert.training.targets import Target, check_unique, parse_target, target_eps
from speccert.training.widen import Widening, parse_widen, widen

DataArg = Dataset | str | os.PathLike[str] | tuple[Any, Any]


def resolve_recipe(
    recipe: str | Recipe | None,
    penalty: str | None,
    epochs: int | None,
    lr: float | None,
    ema: float | None = None,
) -> Recipe:
    """The recipe a run uses: `recipe` (a name or a Recipe), else the single penalty `penalty`
    (default lmt), with `epochs` / `lr` / `ema` overriding when given."""
    if recipe is not None and penalty is not None:
        raise UsageError("give either a recipe or a single penalty, not both (a recipe names its penalty)")
    r = (
        recipe
        if isinstance(recipe, Recipe)
        else get_recipe(recipe)
        if recipe
        else single_penalty(penalty or "lmt")
    )
    changes: dict[str, Any] = {}
    if epochs is not None:
        changes["epochs"] = epochs
    if lr is not None:
        changes["lr"] = lr
    if ema is not None:
        changes["ema"] = ema
    return dataclasses.replace(r, **changes) if changes else r


def _deciding(measure: Evaluator, decision: str) -> Evaluator:
    """The evaluator applied to the graph that decides by `decision` (the written file never has it)."""
    return lambda graph: measure(decide_by(graph, decision))


def _datasets(
    graph: Graph, train_data: DataArg, val_data: DataArg | None, seed: int
) -> tuple[Dataset, Dataset]:
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
    return fit_to_model(train, graph.input_shape, n_classes), fit_to_model(val, graph.input_shape, n_classes)


def finetune(
    model: Graph | str,
    train_data: DataArg,
    val_data: DataArg | None = None,
    targets: Sequence[str | Target] = ("cra@0.5>=0.7",),
    penalty: str | None = None,
    *,
    recipe: str | Recipe | None = None,
    penalty_weight: float | None = None,
    penalty_options: dict[str, Any] | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    ema: float | None = None,
    batch_size: int = 128,
    time_budget: float | None = None,
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
    allow_activation_change: bool = False,
    stop_out_of_reach: bool = False,
    audit: int = 0,
    activation: str = "maxmin",
    augment: str | Augment = "none",
    widen: float = 1.0,
) -> FinetuneResult:
    """Fine-tune `model` until every target holds on `val_data` (see the module docstring).

    targets: strings "cra@EPS>=V", "clean>=V", "lipschitz<=V" (or Target objects). recipe: a key of
    RECIPES (or a Recipe); penalty: a key of PENALTIES (its plain recipe); epochs, lr: override the
    recipe's; ema: the decay of the weight average that is certified and written (0: off;
    speccert.training.ema). time_budget: seconds; no epoch starts that would end past it (judged by the last one).
    batch_size is the global batch (split across ranks under torchrun). decision: "argmin" trains and
    certifies -logits (speccert.ir.decision) and writes the model without the negation.
    allow_activation_change: replace every ReLU by MaxMin over channels before training
    (speccert.training.maxmin; ReLUs over an odd channel count stay, named in the notes);
    activation="householder" puts a HouseHolder activation with learned angles there instead, started
    as MaxMin.
    stop_out_of_reach: stop (exit 1, a note says why) when a missed target's trend over the last
    epochs, extrapolated over the budget left, still misses it (speccert.training.reach).
    audit: attack this many certified validation points of the written file with PGD-L2 at their
    certified radius (speccert.bounds.audit); the summary is in the closing report, a success raises.
    augment: "none", "shift" or "shift:K": random translations of the training batches by up to K
    pixels with zero fill, seeded by (seed, step) (speccert.training.augment); recorded in the
    checkpoints (a resume with another choice is refused) and in the result.
    widen: multiply every hidden layer's width by this factor before training, keeping the function
    (speccert.training.widen; 1: off); an architecture change, so ONNX or .pt2 output only.
    """
    tlist = [t if isinstance(t, Target) else parse_target(t) for t in targets]
    check_unique(tlist)
    rec = resolve_recipe(recipe, penalty, epochs, lr, ema)
    if resume and out is None:
        raise UsageError("--resume needs --out (checkpoints live in the run folder next to it)")
    if batch_size <= 0:
        raise UsageError(f"--batch-size must be > 0, got {batch_size}")
    if checkpoint_every < 0:
        raise UsageError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    if time_budget is not None and not time_budget > 0:
        raise UsageError(f"--time-budget must be > 0 minutes, got {time_budget}")
    _check_audit(audit, evaluator)
    _check_activation(activation, allow_activation_change)
    aug = augment if isinstance(augment, Augment) else parse_augment(augment)
    info, dev = ddp.init_from_env(device)
    if batch_size % info.world_size:
        raise UsageError(
            f"--batch-size {batch_size} must be divisible by the number of processes {info.world_size}"
        )
    graph, spec = load_graph(model, input_shape, weights)
    aug.check_input(tuple(graph.input_shape))
    widening = _widen(graph, widen, seed)
    graph = widening.graph
    change = _change_activations(graph, activation) if allow_activation_change else None
    if change is not None:
        graph = change.graph
    paths = ddp.on_main(lambda: prepare_paths(graph, spec, out, resume, overwrite, weights), info)
    random.seed(seed)
    torch.manual_seed(seed)
    train, val = _datasets(graph, train_data, val_data, seed)
    eps = target_eps(tlist) or [0.5]
    measure, closing = evaluator, None
    if measure is None:
        certifier = STOPPING_RULE_OPTIONS.replace(device=dev, batch_size=certify_batch_size)
        measure = certifier_evaluator(val, eps, mean=mean, std=std, options=certifier)
        if audit > 0:  # the same measurement of the written file, plus the attack
            closing = certifier_evaluator(
                val, eps, mean=mean, std=std, options=certifier.replace(audit=audit)
            )
    if check_decision(decision) != "argmax":
        measure = _deciding(measure, decision)
        closing = None if closing is None else _deciding(closing, decision)
    identity = run_config(
        seed=seed,
        batch_size=batch_size,
        penalty=rec.penalty if rec.name == f"penalty:{rec.penalty}" else f"recipe {rec.name}",
        penalty_weight=penalty_weight,
        penalty_options=penalty_options,
        train=train,
        val=val,
        mean=mean,
        std=std,
    )
    if change is not None:  # a resume must not mix a ReLU run and a MaxMin run
        identity["activation_change"] = f"relu->{activation}"
    if widening.widths:  # a wider network is another run
        identity["widen"] = widening.factor
    if rec.ema > 0:  # the average is part of the run's state: a resume must keep it
        identity["ema"] = rec.ema
    if aug.kind != "none":  # another augmentation is another run (absent: checkpoints of older runs)
        identity["augment"] = aug.name
    cfg = RunConfig(
        recipe=rec,
        targets=tlist,
        eps=eps,
        penalty_weight=penalty_weight,
        penalty_options=dict(penalty_options or {}),
        batch_size=batch_size,
        seed=seed,
        checkpoint_every=checkpoint_every,
        time_budget=time_budget,
        mean=None if mean is None else tuple(mean),
        std=None if std is None else tuple(std),
        decision=decision,
        stop_out_of_reach=stop_out_of_reach,
        augment=aug,
        identity=identity,
    )
    run = FinetuneRun(graph, train, measure, cfg, paths, info, dev, Hooks(on_epoch, on_step), closing)
    if resume:
        run.restore()
    res = run.run()
    res.augment = aug.name
    if aug.kind != "none":
        res.notes.insert(0, f"training batches augmented: {aug.name} ({aug.describe()})")
    if change is not None:
        res.notes.insert(0, change.note())
    if widening.widths:
        res.widened = widening.widths
        res.notes.insert(0, widening.note())
    if val_data is None and len(val) < FEW_HELD_OUT:
        res.notes.insert(0, held_out_note(len(val)))
    return res


FEW_HELD_OUT = 100  # a held-out split smaller than this gets a note: its figures move by >= 1% per point


def held_out_note(n: int) -> str:
    return (
        f"the targets were measured on {n} held-out point{'s' if n != 1 else ''} (10% of the training "
        "data, no validation data given): give validation data (--val) for figures that mean more"
    )


def _check_audit(audit: int, evaluator: Evaluator | None) -> None:
    """The audit attacks the certifier's own radii: it needs N >= 0 and no injected evaluator."""
    if audit < 0:
        raise UsageError(f"--audit must be >= 0, got {audit}")
    if audit > 0 and evaluator is not None:
        raise UsageError("audit attacks the certifier's radii; it cannot audit an injected evaluator")


def _check_activation(activation: str, allow: bool) -> None:
    if activation not in ACTIVATIONS:
        raise UsageError(f"--activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
    if activation != "maxmin" and not allow:
        raise UsageError(f"--activation {activation} replaces ReLUs: it needs --allow-activation-change")


def _widen(graph: Graph, factor: float, seed: int) -> Widening:
    """speccert.training.widen; a state_dict output keeps the input's module, which cannot hold the
    wider layers, so it is refused."""
    if parse_widen(factor) != 1.0 and graph.source is not None and graph.source.format == "state_dict":
        raise UsageError(
            "--widen changes the architecture, which a state_dict cannot carry: fine-tune the model as ONNX or .pt2"
        )
    return widen(graph, factor, seed)


def _change_activations(graph: Graph, activation: str) -> ActivationChange:
    """ReLU -> MaxMin / Householder (speccert.training.maxmin); a state_dict output keeps the input's
    module, which cannot hold the new activation, so it is refused (and Householder as .pt2)."""
    if graph.source is not None and graph.source.format == "state_dict":
        raise UsageError(
            "--allow-activation-change changes the architecture, which a state_dict cannot carry: "
            "fine-tune the model as ONNX or .pt2"
        )
    fmt = graph.source.format if graph.source is not None else ""
    if activation == "householder" and fmt == "pt2":  # the .pt2 importer reads deel's form, not ours
        raise UsageError(
            "--activation householder is written to ONNX only (a .pt2 of it does not read back): "
            "fine-tune the model as ONNX, or use --activation maxmin"
        )
    return relu_to_maxmin(graph, activation)


__all__ = ["EpochRecord", "FinetuneResult", "TrainingDiverged", "finetune", "resolve_recipe"]
