"""Fine-tune a model until a certificate target holds on held-out data (measured by the certifier),
then write it in the input's format. Exit 0 when every target holds, 1 when the epoch budget ends first.
Per-epoch tables and the final report go to stdout (stderr with --json -); progress and notes to stderr."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from speccert.cli.common import (
    DecisionOpt,
    DeviceOpt,
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    WeightsOpt,
    check_outputs,
    check_seed,
    err,
    out,
    resolve_device,
)
from speccert.cli.finetune_render import epoch_table, render_result
from speccert.cli.progress import LogLines, log_lines
from speccert.errors import UsageError


def _penalty_help() -> str:
    from speccert.training.catalog import penalty_help  # reads penalties.json: no torch for --help

    return penalty_help() + " Default lmt when no --recipe is given (see docs/finetune.md)."


def _recipe_help() -> str:
    from speccert.training.recipes import recipe_help

    return recipe_help() + " Explicit --epochs, --lr, --weight and --penalty-option override it."


def _options(items: list[str] | None) -> dict[str, Any]:
    """--penalty-option key=value (numbers parsed as float/int)."""
    opts: dict[str, Any] = {}
    for item in items or []:
        key, sep, val = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--penalty-option must be key=value, got {item!r}")
        v: Any = val
        for cast in (int, float):
            try:
                v = cast(val)
                break
            except ValueError:
                continue
        opts[key.strip().replace("-", "_")] = v
    return opts


def _refuse_unwritable_format(model: str) -> None:
    """finetune writes its output in the input's format; TorchScript and pickles cannot be written
    back, so say so before loading (a TorchScript load took 13 s before the refusal)."""
    from speccert.importers import TORCH_SUFFIXES, is_factory_spec
    from speccert.importers.torch_import import detect_format

    path = Path(model)
    if is_factory_spec(model) or path.suffix.lower() not in TORCH_SUFFIXES or not path.is_file():
        return
    fmt = detect_format(path)
    if fmt in ("torchscript", "pickle"):
        raise UsageError(
            f"finetune writes the model back in its input's format and cannot write {fmt}: give it the "
            "model as .pt2 (torch.export.save), ONNX, or 'package.module:factory' --weights STATE_DICT"
        )


def _check_options(
    model: str, penalty: str | None, recipe: str | None, time_budget: float | None, decision: str
) -> None:
    """Usage errors (exit 2) in the options, before any loading."""
    from speccert.training.penalties import PENALTIES
    from speccert.training.recipes import RECIPES

    if penalty is not None and penalty not in PENALTIES:
        raise UsageError(f"--penalty {penalty!r}: choose one of {', '.join(PENALTIES.keys())}")
    if recipe is not None and recipe not in RECIPES:
        raise UsageError(f"--recipe {recipe!r}: choose one of {', '.join(RECIPES.keys())}")
    if recipe is not None and penalty is not None:
        raise UsageError("give --recipe or --penalty, not both (a recipe names its penalty)")
    if time_budget is not None and not time_budget > 0:
        raise UsageError(f"--time-budget must be > 0 minutes, got {time_budget:g}")
    from speccert.ir.decision import check_decision

    check_decision(decision)
    _refuse_unwritable_format(model)


def _targets(target: list[str]) -> tuple[list[Any], list[float]]:
    """The parsed --target list and the eps its cra targets name ([0.5] when none)."""
    from speccert.training.targets import parse_targets, target_eps

    tlist = parse_targets(target)
    return tlist, target_eps(tlist) or [0.5]


def _val_data(val: str | None, data: str) -> str | None:
    """--val, else --data when it is a folder (an IDX folder: train on its train split, certify on its test split)."""
    val_data: str | None = val
    if val_data is None and Path(data).is_dir():
        val_data = data
    return val_data


def _epoch_progress(main: bool) -> Progress:
    """The transient per-epoch progress display on stderr (off on other ranks and off a terminal: logs get
    LogLines, `_progress_callbacks`)."""
    return Progress(
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not main or not err.is_terminal,  # a finished bar leaves a blank line in logs
    )


def _epoch_budget(recipe: str | None, epochs: int | None) -> int:
    """The run's epoch budget: --epochs, else the recipe's, else a single penalty's."""
    from speccert.training.recipes import get_recipe, single_penalty

    if epochs is not None:
        return epochs
    return (get_recipe(recipe) if recipe else single_penalty("lmt")).epochs


def _progress_callbacks(
    bar: Progress, eps: list[float], results: Console, epochs: int, lines: LogLines | None = None
) -> tuple[Callable[[int, int, int, float], None], Callable[[Any], None]]:
    """on_step (a bar over the run's `epochs` and one within the current epoch; `lines` instead where
    given: a line in a log now and then) and on_epoch (the epoch's table on `results`, its note on
    stderr)."""
    tasks: dict[int, Any] = {}
    run: list[Any] = []  # the run's bar, made at the first call (a resumed run starts part way)

    def run_bar(done: int) -> None:
        if not run:
            run.append(bar.add_task("epochs", total=max(epochs, 1), completed=done, loss="-"))
        bar.update(run[0], completed=done)

    def on_step(epoch: int, step: int, total: int, loss: float) -> None:
        if lines is not None:
            lines.tell(f"epoch {epoch}/{epochs}, step {step}/{total}, loss {loss:.4f}")
            return
        run_bar(epoch - 1)
        if epoch not in tasks:
            tasks[epoch] = bar.add_task(f"epoch {epoch}", total=total, completed=step - 1, loss="-")
        bar.update(tasks[epoch], completed=step, loss=f"{loss:.4f}")

    def on_epoch(rec: Any) -> None:
        run_bar(rec.epoch)
        if rec.epoch in tasks:
            bar.remove_task(tasks[rec.epoch])
        results.print(epoch_table(rec, eps))  # results on stdout, like the final report
        if rec.note:
            err.print(rec.note, style="dim")

    return on_step, on_epoch


def command(
    model: ModelArg,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Training data: .npz (x, y), x.npy + y.npy, IDX files or folder "
            "(train split), or a folder of images by class.",
        ),
    ],
    out_path: Annotated[
        Path,
        typer.Option(
            "--out",
            help="Output model, in the input's format (.onnx, .pt2, or a "
            "state_dict .pt for module:factory). Never the input file.",
        ),
    ],
    target: Annotated[
        list[str],
        typer.Option(
            "--target", help="Target to reach, repeatable: 'cra@EPS>=V', 'clean>=V', 'lipschitz<=V'."
        ),
    ],
    val: Annotated[
        str | None,
        typer.Option(
            "--val",
            help="Validation data the certifier runs on (default: the test "
            "split of an IDX folder, else a seeded 10% of --data).",
        ),
    ] = None,
    penalty: Annotated[
        str | None,
        typer.Option("--penalty", help=_penalty_help()),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help=_recipe_help()),
    ] = None,
    weight: Annotated[
        float | None,
        typer.Option(
            "--weight",
            help="Initial penalty weight (default: the penalty's own; it adapts when progress stalls).",
        ),
    ] = None,
    penalty_option: Annotated[
        list[str] | None,
        typer.Option(
            "--penalty-option",
            help="Penalty option key=value, e.g. conv_mode=kernel, form=global, variant=datagrad.",
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Epoch budget (default: the recipe's; 10 for --penalty).")
    ] = None,
    lr: Annotated[
        float | None, typer.Option("--lr", help="Adam peak learning rate (default: the recipe's; 1e-3).")
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            "--ema",
            help="Certify and write the moving average of the weights with this decay, e.g. 0.999 "
            "(default: the recipe's; 0: off).",
        ),
    ] = None,
    time_budget: Annotated[
        float | None,
        typer.Option(
            "--time-budget",
            help="Minutes; no epoch starts that would end past it (judged by the last epoch's time).",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Global batch size (split across torchrun ranks).")
    ] = 128,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the last checkpoint in <out>.run/.", metavar="")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace an existing --out and its run folder (never the input).", metavar=""
        ),
    ] = False,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help="Also checkpoint every N steps (0: only every epoch).")
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="Seed: same seed, same run.")] = 0,
    device: DeviceOpt = "cpu",
    mean: Annotated[
        str | None,
        typer.Option(
            "--mean",
            help="Normalisation mean applied to the data before the model (certified in data space).",
        ),
    ] = None,
    std: Annotated[str | None, typer.Option("--std", help="Normalisation std.")] = None,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    json_out: JsonOpt = None,
    decision: DecisionOpt = "argmax",
    allow_activation_change: Annotated[
        bool,
        typer.Option(
            "--allow-activation-change",
            help="Replace every ReLU by MaxMin over channels (GroupSort 2, 1-Lipschitz, gradient-norm "
            "preserving) before training; ReLUs over an odd channel count stay (named in the notes).",
            metavar="",
        ),
    ] = False,
    stop_out_of_reach: Annotated[
        bool,
        typer.Option(
            "--stop-out-of-reach",
            help="Stop early (exit 1) when a missed target's trend over the last 4 epochs, extrapolated "
            "over the epochs (and --time-budget) left, still misses it; judged twice in a row, after "
            "the margin ramp.",
            metavar="",
        ),
    ] = False,
    activation: Annotated[
        str,
        typer.Option(
            "--activation",
            help="What --allow-activation-change puts in place of ReLU: maxmin (default) or householder "
            "(a learned reflection angle per channel pair, started as MaxMin).",
        ),
    ] = "maxmin",
    augment: Annotated[
        str,
        typer.Option(
            "--augment",
            help="Augment the training batches: none (default), shift (= shift:2) or shift:K (each image "
            "translated by up to K pixels per axis, zero fill; seeded, resumable).",
        ),
    ] = "none",
    widen: Annotated[
        float,
        typer.Option(
            "--widen",
            help="Multiply every hidden layer's width by F before training, keeping the function (new units "
            "start with zero outgoing weights); an architecture change. 1 (default): off.",
            metavar="F",
        ),
    ] = 1.0,
    audit: Annotated[
        int,
        typer.Option(
            "--audit",
            help="Attack N certified validation points of the written model with PGD-L2 at their "
            "certified radius; any success is an error (exit 5).",
        ),
    ] = 0,
) -> None:
    """Fine-tune a model until a certificate target holds on held-out data (measured by the certifier),
        then write it in the input's format. Exit 0 when every target holds, 1 when the epoch budget ends first.
    Per-epoch tables and the final report go to stdout (stderr with --json -); progress and notes to stderr."""
    import os

    from speccert.cli.certify_cmd import parse_floats
    from speccert.importers import parse_input_shape
    from speccert.training.finetune import finetune

    _check_options(model, penalty, recipe, time_budget, decision)
    from speccert.training.augment import parse_augment

    parse_augment(augment)  # a bad name is a usage error before any loading
    from speccert.training.widen import parse_widen

    parse_widen(widen)
    tlist, eps = _targets(target)
    dev = resolve_device(device)
    check_outputs(
        {"--json": json_out, "--out": out_path},
        create_folders=frozenset({"--out"}),
        inputs={"MODEL": model, "--data": data, "--val": val, "--weights": weights},
    )
    check_seed(seed)
    main = int(os.environ.get("RANK", "0")) == 0
    val_data = _val_data(val, data)
    mean_v, std_v = parse_floats(mean, "--mean"), parse_floats(std, "--std")

    results = err if json_out == "-" else out  # `--json -` keeps stdout for the JSON alone
    with _epoch_progress(main) as bar:
        lines = log_lines("speccert finetune") if main else None
        on_step, on_epoch = _progress_callbacks(bar, eps, results, _epoch_budget(recipe, epochs), lines)
        res = finetune(
            model,
            data,
            val_data,
            targets=tlist,
            penalty=penalty,
            recipe=recipe,
            penalty_weight=weight,
            penalty_options=_options(penalty_option),
            epochs=epochs,
            lr=lr,
            ema=ema,
            batch_size=batch_size,
            time_budget=None if time_budget is None else time_budget * 60.0,
            out=out_path,
            resume=resume,
            overwrite=overwrite,
            seed=seed,
            device=dev,
            checkpoint_every=checkpoint_every,
            mean=mean_v,
            std=std_v,
            input_shape=parse_input_shape(input_shape),
            weights=weights,
            on_epoch=on_epoch,
            on_step=on_step,
            decision=decision,
            allow_activation_change=allow_activation_change,
            stop_out_of_reach=stop_out_of_reach,
            audit=audit,
            activation=activation,
            augment=augment,
            widen=widen,
        )
    if main:
        render_result(res, eps, json_out)
    raise typer.Exit(res.exit_code)
