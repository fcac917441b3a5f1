"""Options shared by several commands, and the one place models are loaded from CLI arguments."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from speccert.cli.console import err, out, styled
from speccert.cli.output_paths import check_outputs
from speccert.errors import UsageError
from speccert.limits import check_refine_above, check_seed

__all__ = [
    "check_outputs",
    "check_refine_above",
    "check_seed",
    "err",
    "out",
    "styled",
]  # re-exported for the commands

ModelArg = Annotated[
    str, typer.Argument(help="Model: a .onnx, .pt2 or TorchScript file, or 'package.module:factory'.")
]
InputShapeOpt = Annotated[
    str | None,
    typer.Option(
        "--input-shape",
        help="Input shape without the batch axis, e.g. 1,28,28 (needed for "
        "'module:factory' specs and models with dynamic dimensions).",
    ),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="state_dict file for a 'package.module:factory' model (read with weights_only=True).",
    ),
]
RandomWeightsOpt = Annotated[
    bool,
    typer.Option(
        "--random-weights",
        help="Use a 'package.module:factory' model without --weights: its untrained, random "
        "initialisation (said so in the output and the report).",
        metavar="",
    ),
]
RANDOM_WEIGHTS_NOTE = "weights: the factory's random initialisation (--random-weights), not a trained model"
DecisionOpt = Annotated[
    str,
    typer.Option(
        "--decision",
        help="How the model picks its class: argmax (default: the largest logit) or argmin (the "
        "smallest, e.g. ACAS Xu-style cost outputs). Certificates are about this decision.",
    ),
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow unpickling a whole saved module. Runs code from the file: only for files you trust.",
        metavar="",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto (cuda when available).")]
JsonOpt = Annotated[
    str | None,
    typer.Option("--json", help="Write the machine-readable report to this path ('-' for stdout)."),
]


def load_model(
    model: str,
    input_shape: str | None,
    weights: Path | None,
    trust_pickle: bool,
    allow_unsupported: bool = False,
    random_weights: bool = False,
):  # noqa: ANN201 - returns speccert.ir.Graph
    """Load the model named on the command line. A factory without --weights needs --random-weights,
    and then a note says so on stderr (the certify report also records it)."""
    from speccert.importers import is_factory_spec, load, parse_input_shape

    graph = load(
        model,
        parse_input_shape(input_shape),
        weights=weights,
        trust_pickle=trust_pickle,
        allow_unsupported=allow_unsupported,
        random_weights=random_weights,
    )
    if random_weights and weights is None and is_factory_spec(model):
        err.print(f"note: {RANDOM_WEIGHTS_NOTE}", style="yellow")
    return graph


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA device is available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
    return device


def _strict(x: Any) -> Any:
    """`x` with every NaN or infinite float replaced by None: JSON has neither (Python would write NaN
    and Infinity, which jq, JavaScript and strict parsers refuse), and the reports' schema writes an
    unbounded value as null."""
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_strict(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(data: Any, target: str) -> None:
    """Write `data` as strict JSON (no NaN / Infinity: null) to a path or to stdout ('-'). Never
    overwrites a directory."""
    text = json.dumps(
        _strict(data), indent=2, sort_keys=False, default=lambda o: _strict(float(o)), allow_nan=False
    )
    if target == "-":
        sys.stdout.write(text + "\n")
        return
    path = Path(target)
    if path.is_dir():
        raise UsageError(f"--json {target}: is a folder")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


def check_exact_max_dim(value: int) -> int:
    """--exact-max-dim is a Gram dimension: 0 turns `exact` off, a negative one is a typo."""
    if value < 0:
        raise UsageError(f"--exact-max-dim must be >= 0 (0 turns exact certificates off), got {value}")
    return value


RefineAboveOpt = Annotated[
    float,
    typer.Option(
        "--refine-above",
        help="auto refines a layer (crop-aware deflated bound) whose upper / lower bound is above this; "
        "inf: never.",
    ),
]


def short_help(doc: str | None) -> str:
    """A command's line in its group's command list: the docstring's first paragraph on one line (Typer's
    rich mode keeps the docstring's own line breaks there, so the list showed them mid-sentence)."""
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.split())
