"""`FinetuneRun`: one fine-tuning run as an object with four verbs (restore, train an epoch, evaluate,
checkpoint) and a loop that calls them; `speccert.training.finetune.finetune` builds it.

The run owns a private copy of the graph (the caller's is never modified) and trains it through the
module `graph.to_torch()` shares tensors with, so the certifier measures exactly the trained map.
Everything a resumed run needs to continue bit-identically is in the checkpoint (model, optimizer,
penalty state and weight, weight schedule, RNG, epoch, step, history, best score); the learning rate
and the penalty's annealing are functions of the global step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from speccert.data import Dataset
from speccert.errors import EXIT_FAILED, SpeccertError, UsageError
from speccert.ir.decision import decide_by
from speccert.ir.graph import Graph
from speccert.ir.ops import Affine, is_fixed
from speccert.ir.passes import fold_linear
from speccert.training import ddp
from speccert.training.aol import AOLReparam, hidden_layers
from speccert.training.augment import Augment, data_zero
from speccert.training.batching import epoch_batches, normalised
from speccert.training.checkpoint import (
    BEST,
    LAST,
    atomic_save,
    check_same_config,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from speccert.training.ema import WeightAverage
from speccert.training.evaluate import Evaluator
from speccert.training.penalties import make_penalty, penalty_class
from speccert.training.reach import ReachWatch, epochs_left, out_of_time
from speccert.training.recipes import Recipe
from speccert.training.records import EpochRecord, FinetuneResult, pareto_front, replaces_on_tie
from speccert.training.run_setup import RunPaths, logits_graph, private_copy
from speccert.training.schedule import WeightSchedule
from speccert.training.targets import Target, check_targets

Tensor = torch.Tensor
StepHook = Callable[[int, int, int, float], None]  # (epoch, step in epoch, steps in epoch, loss)


class TrainingDiverged(SpeccertError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class RunConfig:
    """The resolved settings of a run: a recipe plus the caller's explicit overrides."""

    recipe: Recipe
    targets: list[Target]
    eps: list[float]
    penalty_weight: float | None = None
    penalty_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 128
    seed: int = 0
    checkpoint_every: int = 0
    time_budget: float | None = None  # seconds; no epoch starts that the last one says would overrun
    mean: tuple[float, ...] | None = None  # data normalisation applied before the model
    std: tuple[float, ...] | None = None
    decision: str = "argmax"  # "argmin": train and certify -logits (speccert.ir.decision)
    stop_out_of_reach: bool = False  # stop when a missed target is out of reach at its trend (reach.py)
    augment: Augment = Augment()  # of the training batches (augment.py); part of `identity` unless none
    # What makes two runs the same run (run_setup.run_config): recorded in every checkpoint, and a
    # --resume with other values is refused naming the keys that differ.
    identity: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hooks:
    on_epoch: Callable[[EpochRecord], None] | None = None
    on_step: StepHook | None = None


class FinetuneRun:
    """One run: `restore()` (when resuming), then `run()` -> FinetuneResult."""

    def __init__(
        self,
        graph: Graph,
        train: Dataset,
        measure: Evaluator,
        cfg: RunConfig,
        paths: RunPaths,
        info: ddp.DistInfo,
        device: str,
        hooks: Hooks = Hooks(),
        closing: Evaluator | None = None,  # certifies the written file (default `measure`; e.g. + audit)
    ) -> None:
        self.cfg, self.paths, self.info, self.dev, self.hooks, self.measure = (
            cfg, paths, info, device, hooks, measure,
        )  # fmt: skip
        self.closing = closing or measure
        self.g = private_copy(graph, device)  # the caller's graph is never modified
        if cfg.recipe.reparam:  # BatchNorm into its layer: AOL bounds the folded map (same function)
            self.g = fold_linear(self.g)
        # Trains on the logits when the model ends in a softmax (same tensors); argmin models on -logits.
        lg = logits_graph(self.g)
        tg = decide_by(lg, cfg.decision)
        self.module = tg.to_torch()
        for node in tg.nodes:  # input normalisation (and the argmin negation) is not a weight, nor is
            if isinstance(node.op, Affine) or is_fixed(node.op):  # a resampling's constant
                for t in node.op.parameters().values():
                    t.requires_grad_(False)
        r = cfg.recipe
        cls_opts = penalty_class(r.penalty).target_options(cfg.eps)
        opts = cls_opts | dict(r.penalty_options) | cfg.penalty_options
        weight = cfg.penalty_weight if cfg.penalty_weight is not None else r.penalty_weight
        # On the logits graph: every penalty's bound is the same for -logits (norms of W_y - W_j, Jacobians).
        self.pen = make_penalty(r.penalty, lg, weight, **opts).to(device)
        self.reparam = AOLReparam(lg, hidden_layers(lg)) if r.reparam == "aol" else None
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        self.params += list(self.reparam.parameters()) if self.reparam is not None else []
        self.opt = torch.optim.Adam(self.params, lr=r.lr)
        self.sched = WeightSchedule(float(self.pen.weight))
        x = torch.from_numpy(train.x).to(device=device, dtype=self.g.dtype)
        self.x_all = normalised(x, cfg.mean, cfg.std)
        self.y_all = torch.from_numpy(train.y).to(device)
        self.fill = data_zero(x, cfg.mean, cfg.std)  # the shift's fill: a data-space 0, per channel
        self.history: list[EpochRecord] = []
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.best: tuple[tuple[int, float], int] | None = None
        self.best_state: dict[str, Tensor] = {}
        self.per_rank = cfg.batch_size // info.world_size
        n_batches = math.ceil(math.ceil(len(train) / info.world_size) / self.per_rank)
        self.total_steps = max(1, n_batches * r.epochs)
        self.started = time.perf_counter()
        self.notes: list[str] = []
        self.ema: WeightAverage | None = None  # recipe `ema` > 0: started after the initial rescale
        anneal = float(getattr(self.pen, "anneal", 0.0))  # the margin ramp: accuracy falls by design
        self.reach = ReachWatch.for_run(cfg.targets, r.epochs, anneal) if cfg.stop_out_of_reach else None

    # -- restore / checkpoint ------------------------------------------------------------------
    def restore(self) -> None:
        """Continue from `<out>.run/last.pt` (UsageError when it belongs to another model or recipe)."""
        rd = self.paths.run_dir
        if rd is None:
            raise UsageError("--resume needs --out (checkpoints live in the run folder next to it)")
        if not (rd / LAST).is_file():  # killed before its first complete checkpoint: start from step 0
            return
        ck = load_checkpoint(rd / LAST)
        check_same_config(ck.get("config"), self.cfg.identity, rd)
        if ck.get("model_sha") != self.paths.model_sha or ck.get("penalty") != self.cfg.recipe.penalty:
            raise UsageError(
                f"the checkpoint in {rd} belongs to another model or penalty; "
                "start a new run (--overwrite) instead of --resume"
            )
        self.module.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.pen.load_state_dict(ck["penalty_state"])
        if self.reparam is not None:
            self.reparam.load_state_dict(ck["reparam"])
        if self.cfg.recipe.ema > 0:
            self.ema = WeightAverage(self.module, self.cfg.recipe.ema)
            self.ema.load_state_dict(ck["ema"])
        self.sched.load_state_dict(ck["schedule"])
        if self.reach is not None:
            self.reach.load_state_dict(ck.get("reach", {}))
        set_rng_state(ck["rng"])
        self.epoch, self.step_in_epoch, self.global_step = ck["epoch"], ck["step_in_epoch"], ck["global_step"]
        self.history = [EpochRecord.from_dict(r) for r in ck["history"]]
        if ck.get("best_score") is not None:
            s = ck["best_score"]
            self.best = ((int(s[0]), float(s[1])), int(ck["best_epoch"]))
        if (rd / BEST).is_file():
            self.best_state.update(load_checkpoint(rd / BEST)["model"])

    def checkpoint(self, name: str = LAST) -> None:
        """Write the whole run state atomically to `<out>.run/<name>` (main rank only)."""
        if self.paths.run_dir is None or not self.info.is_main:
            return
        state = {
            "model": self.module.state_dict(),
            "optimizer": self.opt.state_dict(),
            "penalty_state": self.pen.state_dict(),
            "reparam": self.reparam.state_dict() if self.reparam is not None else {},
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "penalty": self.cfg.recipe.penalty,
            "recipe": self.cfg.recipe.name,
            "schedule": self.sched.state_dict(),
            "reach": self.reach.state_dict() if self.reach is not None else {},
            "rng": rng_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "model_sha": self.paths.model_sha,
            "config": self.cfg.identity,
            "history": [r.as_dict() for r in self.history],
            "best_score": list(self.best[0]) if self.best else None,
            "best_epoch": self.best[1] if self.best else -1,
        }
        atomic_save(state, self.paths.run_dir / name)

    # -- training -----------------------------------------------------------------------------
    def _batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of `epoch` (speccert.training.batching: a function of (seed, epoch))."""
        return epoch_batches(len(self.x_all), self.per_rank, self.cfg.seed, epoch, self.info)

    def _step(self, batch: list[int], epoch: int, k: int) -> float:
        """One optimiser step on `batch` (the k-th of the epoch); returns its loss."""
        r = self.cfg.recipe
        for group in self.opt.param_groups:
            group["lr"] = r.lr_at(self.global_step, self.total_steps)
        self.pen.set_progress(self.global_step / self.total_steps)
        idx = torch.tensor(batch, device=self.dev)
        xb, yb = self.x_all[idx], self.y_all[idx]
        xb = self.cfg.augment.apply(xb, self.fill, self.cfg.seed, self.global_step, self.info.rank)
        if self.pen.needs_input:
            xb = xb.clone().requires_grad_(True)
        with self.reparam.active() if self.reparam is not None else contextlib.nullcontext():
            loss = self.pen.loss(self.module(xb), yb, xb, self.module)
        if ddp.all_reduce_sum([0.0 if torch.isfinite(loss).item() else 1.0], self.info, self.dev)[0]:
            where = self.paths.run_dir / LAST if self.paths.run_dir is not None else "none (no --out)"
            raise TrainingDiverged(
                f"the loss became {float(loss.detach()):g} at epoch {epoch}, step {k + 1}; "
                f"stopped before applying it. Last good checkpoint: {where}. "
                "Try a smaller --lr or penalty weight, then --resume"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        ddp.average_gradients(self.params, self.info)
        if r.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, r.grad_clip)
        self.opt.step()
        if self.reparam is not None:
            self.reparam.sync()
        if self.ema is not None:
            self.ema.update(self.module, self.global_step)
        self.global_step += 1
        return float(loss.detach())

    def train_epoch(self) -> float:
        """Train `self.epoch` from `self.step_in_epoch` on; returns the mean loss over all ranks."""
        batches = self._batches(self.epoch)
        self.module.train()
        self.pen.train()
        tot, cnt = 0.0, 0
        for k in range(self.step_in_epoch, len(batches)):
            lv = self._step(batches[k], self.epoch, k)
            tot, cnt = tot + lv * len(batches[k]), cnt + len(batches[k])
            self.step_in_epoch = k + 1
            every = self.cfg.checkpoint_every
            if every and self.global_step % every == 0:
                self.checkpoint()
            if self.hooks.on_step is not None:
                self.hooks.on_step(self.epoch, k + 1, len(batches), lv)
        self.step_in_epoch = 0
        s, c = ddp.all_reduce_sum([tot, float(cnt)], self.info, self.dev)
        self.module.eval()
        self.pen.eval()
        return s / max(c, 1.0)

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, loss: float, t0: float) -> EpochRecord:
        """Certify the current weights on the validation data (main rank), update the best epoch,
        the Pareto checkpoints and the penalty weight; every rank gets the same record."""
        rec: EpochRecord | None = None
        if self.info.is_main:  # with a weight average, the average is what is certified (and kept)
            with self.ema.applied(self.module) if self.ema is not None else contextlib.nullcontext():
                rec = self._measure(loss, t0)
        rec, self.best, weight = ddp.broadcast_object((rec, self.best, self.sched.weight), self.info)
        assert rec is not None
        self.sched.weight = weight
        self.pen.set_weight(weight)
        self.history.append(rec)
        if self.hooks.on_epoch is not None and self.info.is_main:
            self.hooks.on_epoch(rec)
        return rec

    def _measure(self, loss: float, t0: float) -> EpochRecord:
        m = self.measure(self.g)
        tl = self.cfg.targets
        check = check_targets(tl, m)
        used = float(self.pen.weight)
        if self.epoch == 0:
            self.sched.observe(tl, m)
        why = ""
        if self.epoch > 0 and not check.met and self.cfg.recipe.adapt_weight:
            why = self.sched.update(tl, m)[1]
        rec = EpochRecord(
            self.epoch, loss, m.clean, dict(m.cra), m.lipschitz, used, check.met, check.missed,
            time.perf_counter() - t0, why,
        )  # fmt: skip
        # best epoch: every target met first, then the smallest summed distance to the targets (not the
        # count of targets met, which would prefer an untouched input that only meets its clean target)
        sc = (int(check.met), -check.distance)
        if (
            self.best is None
            or sc > self.best[0]
            or (sc == self.best[0] and replaces_on_tie(self.history, self.best[1], rec, max(self.cfg.eps)))
        ):
            self.best = (sc, self.epoch)  # ties: the later trained epoch, unless the best dominates it
            self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
            if self.paths.run_dir is not None:
                atomic_save({"model": self.best_state, "epoch": self.epoch}, self.paths.run_dir / BEST)
        self._keep_pareto(rec)
        return rec

    def _keep_pareto(self, rec: EpochRecord) -> None:
        """Keep `<run>/epoch-N.pt` for the epochs on the clean-vs-certified Pareto front only."""
        rd = self.paths.run_dir
        if rd is None:
            return
        front = {r.epoch for r in pareto_front([*self.history, rec], max(self.cfg.eps))}
        if rec.epoch in front:
            atomic_save({"model": self.module.state_dict(), "epoch": rec.epoch}, rd / f"epoch-{rec.epoch}.pt")
        for r in self.history:
            if r.epoch not in front:
                (rd / f"epoch-{r.epoch}.pt").unlink(missing_ok=True)

    # -- the loop -----------------------------------------------------------------------------
    def _spent(self) -> float:
        return time.perf_counter() - self.started

    def run(self) -> FinetuneResult:
        """Certify the input (epoch 0) unless resuming past it, then train and certify each epoch
        until every target holds, the epoch budget or the time budget ends."""
        epochs = self.cfg.recipe.epochs
        if not self.history:
            first = self.evaluate(math.nan, time.perf_counter())
            self.epoch = 1
            self._initial_rescale(first)
            if self.reparam is not None:
                self.reparam.start()
            if self.cfg.recipe.ema > 0:
                self.ema = WeightAverage(self.module, self.cfg.recipe.ema)
            self.checkpoint()
        met, stop = self.history[-1].met, ""
        while not met and self.epoch <= epochs:
            stop = ddp.broadcast_object(
                out_of_time(self.cfg.time_budget, self._spent(), self.history), self.info
            )
            if stop:
                break
            t0 = time.perf_counter()
            loss = self.train_epoch()
            met = self.evaluate(loss, t0).met
            if not met and self.reach is not None:
                left = epochs_left(self.cfg.recipe.epochs, self.cfg.time_budget, self._spent(), self.history)
                stop = ddp.broadcast_object(self.reach.check(self.history, left), self.info)
            self.epoch += 1
            self.checkpoint()
            if stop:
                break
        # The budget ran out: keep the best epoch, not the last. With a weight average, the measured
        # (averaged) weights of the best epoch, never the raw ones the optimiser holds.
        if (not met or self.ema is not None) and self.best_state:
            self.module.load_state_dict(self.best_state)
        return self._finish(met, stop)

    def _initial_rescale(self, first: EpochRecord) -> None:
        """Recipe `init_lipschitz`: logits times L*/L (the certifier's L of the input), same predictions."""
        target = self.cfg.recipe.init_lipschitz
        if target <= 0 or first.met or not (math.isfinite(first.lipschitz) and first.lipschitz > 0):
            return
        from speccert.training.rescale import rescale_logits

        how = rescale_logits(self.g, target / first.lipschitz)
        self.notes.append(
            f"initial rescale ({how}): logits x {target / first.lipschitz:.4g}, certified L {first.lipschitz:.4g} "
            f"-> about {target:g}, predictions unchanged"
            if how
            else "initial rescale skipped: an op after the last weighted layer does not carry a scale"
        )

    def _finish(self, met: bool, stop: str) -> FinetuneResult:
        best_epoch = self.best[1] if self.best is not None else self.history[-1].epoch
        rec = next(r for r in self.history if r.epoch == best_epoch)
        written, report, notes = None, None, [*self.notes, *([stop] if stop else [])]
        p = self.paths
        if self.info.is_main and p.out is not None:
            from speccert.training.export import save_like_input

            written = save_like_input(self.g, p.out, weights=p.weights, keys=p.keys)
            report, why = p.reload_report(written, self.closing)
            if why:
                notes.append(why)
        ddp.barrier(self.info)
        return FinetuneResult(
            met, [] if met else rec.missed, self.history, best_epoch, written, self.paths.run_dir,
            self.cfg.targets, report, self.g, notes, pareto_front(self.history, max(self.cfg.eps)),
        )  # fmt: skip


__all__ = ["FinetuneRun", "Hooks", "RunConfig", "TrainingDiverged"]
