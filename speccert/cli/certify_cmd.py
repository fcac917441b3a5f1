"""Certify a classifier's L2 robustness on labelled data: global Lipschitz bound, certified radii and
certified accuracy at each eps (a radius is a proven L2 distance in the data's own space)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from speccert.cli import norm_methods
from speccert.cli.certify_render import render
from speccert.cli.common import (
    DecisionOpt,
    DeviceOpt,
    InputShapeOpt,
    JsonOpt,
    ModelArg,
    RandomWeightsOpt,
    RefineAboveOpt,
    TrustPickleOpt,
    WeightsOpt,
    check_exact_max_dim,
    check_outputs,
    err,
    load_model,
    out,
    resolve_device,
    write_json,
)
from speccert.cli.progress import stage_progress
from speccert.errors import UsageError

if TYPE_CHECKING:
    from speccert.bounds import CertifyOptions


def parse_floats(text: str | None, option: str) -> list[float] | None:
    """'0.1,0.25' (or '0.1, 0.25', '0.1 0.25') -> [0.1, 0.25]; None stays None. An empty item ('0.1,,0.2',
    a trailing comma) is an error, not silently dropped: it is usually a value that went missing."""
    if text is None:
        return None
    items = re.split(r"\s*,\s*|\s+", text.strip())
    if not text.strip():
        raise UsageError(f"{option} needs at least one number")
    if any(not t for t in items):
        raise UsageError(f"{option} has an empty item (two commas in a row, or one at an end): {text!r}")
    try:
        return [float(t) for t in items]
    except ValueError:
        raise UsageError(f"{option} must be numbers separated by commas, got {text!r}") from None


def parse_eps(text: str, option: str = "--eps") -> list[float]:
    """Radii: finite and > 0 (at 0 certified accuracy is the clean accuracy, reported anyway), each
    once; the same rule as the gate's rule radii."""
    vals = parse_floats(text, option) or []
    if any(not math.isfinite(v) or v <= 0 for v in vals):
        raise UsageError(f"{option} values must be finite and > 0, got {vals}")
    twice = sorted({f"{v:g}" for v in vals if vals.count(v) > 1})
    if twice:
        raise UsageError(f"{option} lists {', '.join(twice)} more than once")
    return vals


def parse_kinds(text: str) -> tuple[str, ...] | None:
    """--certificate: 'default' -> None, else the comma-separated kinds (names and repeats are checked by
    CertifyOptions.validate, for every caller)."""
    if text == "default":
        return None
    kinds = tuple(c.strip() for c in text.split(","))
    if any(not k for k in kinds):
        raise UsageError(f"--certificate has an empty item: {text!r}")
    return kinds


def check_crc(crc_steps: int, second_order: bool) -> None:
    if crc_steps < 0:
        raise UsageError(f"--crc-steps must be >= 0, got {crc_steps}")
    if crc_steps > 0 and not second_order:
        raise UsageError(
            f"--crc-steps {crc_steps} refines the second-order certificate, which is off: add "
            "--second-order (or leave --crc-steps out)"
        )


def _certify_options(
    method: str,
    device: str,
    second_order: bool,
    audit: int,
    batch_size: int,
    seed: int,
    crc_steps: int,
    lower_points: int,
    certificate: str,
    exact_max_dim: int | None,
    float32_tolerance: float = 1e-6,
    crown_steps: int = 0,
    refine_above: float = 1.01,
    radius_search: str = "full",
) -> CertifyOptions:
    """The CertifyOptions of the command line; a misspelt certificate kind is exit 2 before any work."""
    from speccert.bounds import CertifyOptions

    options = CertifyOptions().replace(
        method=norm_methods.check(method),  # before any work, as `norms` and the gate check it
        device=resolve_device(device),
        second_order=second_order,
        audit=audit,
        batch_size=batch_size,
        seed=seed,
        crc_steps=crc_steps,
        lower_points=lower_points,
        certificates=parse_kinds(certificate),
        **({} if exact_max_dim is None else {"exact_max_dim": exact_max_dim}),
        float32_tolerance=float32_tolerance,
        crown_steps=crown_steps,
        refine_above=refine_above,
        radius_search=radius_search,
    )
    options.validate()
    import speccert.bounds.certify  # noqa: F401 - registers every certificate kind
    from speccert.bounds.sample_pass import check_kinds

    check_kinds(options.certificates)  # a misspelt kind is exit 2 before any work
    return options


def _check_plot(plot: Path | None) -> None:
    """--plot needs matplotlib: say so before any work."""
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plot needs matplotlib: pip install 'speccert[plot]'") from None


def command(
    model: ModelArg,
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="Labelled data: .npz (x, y), x.npy + y.npy, IDX files "
            "(file or folder, .gz or not), or a folder of images by class.",
        ),
    ],
    split: Annotated[
        str | None,
        typer.Option("--split", help="test or train, for a folder of IDX files (default: test)."),
    ] = None,
    eps: Annotated[
        str,
        typer.Option(
            "--eps", help="L2 radii (data space) at which to report certified accuracy, comma-separated."
        ),
    ] = "0.1,0.25,0.5",
    mean: Annotated[
        str | None,
        typer.Option(
            "--mean",
            help="Normalisation mean (one value or one per "
            "channel), prepended to the model and certified with it.",
        ),
    ] = None,
    std: Annotated[
        str | None, typer.Option("--std", help="Normalisation std (one value or one per channel).")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Use only the first N samples.")] = None,
    second_order: Annotated[
        bool,
        typer.Option(
            "--second-order",
            help="Also use the curvature-based certificate (networks with smooth activations only).",
            metavar="",
        ),
    ] = False,
    crc_steps: Annotated[
        int,
        typer.Option(
            "--crc-steps",
            help="With --second-order: refine each radius by "
            "the CRC dual bound, N gradient steps per bisection test (0 = off; "
            "20 is a good start; costs ~18N forward+backward passes per batch: 6 bisection tests x 3 "
            "values of the dual's eta, as docs/certify.md states).",
        ),
    ] = 0,
    audit: Annotated[
        int,
        typer.Option(
            "--audit",
            help="Attack N certified points with PGD-L2 at their "
            "certified radius; any success is an error (exit 5).",
        ),
    ] = 0,
    method: Annotated[str, norm_methods.option()] = "auto",
    device: DeviceOpt = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per batch.")] = 256,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Write a certified-accuracy-vs-eps PNG here.")
    ] = None,
    json_out: JsonOpt = None,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    random_weights: RandomWeightsOpt = False,
    decision: DecisionOpt = "argmax",
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the attack and of the lower-bound search.")
    ] = 0,
    lower_points: Annotated[
        int,
        typer.Option(
            "--lower-points",
            help="Data points the empirical lower bound "
            "on L starts its ascent from (more: a higher, slower witness).",
        ),
    ] = 64,
    certificate: Annotated[
        str,
        typer.Option(
            "--certificate",
            help="Certificate kinds, comma-separated: global, pairwise, margin, local, crown, "
            "second_order, or all (default: every kind but local and crown; they cost ~0.1-20 s per "
            "point on CPU, see docs/certify.md).",
        ),
    ] = "default",
    exact_max_dim: Annotated[
        int | None,
        typer.Option(
            "--exact-max-dim",
            help="As in `speccert norms`: exact "
            "certificates for zero-padded convs up to this Gram dimension (default: the `exact` method's "
            "own limit, EXACT_MAX_DIM; larger: one n^3 Cholesky and ~16 n^2 bytes per layer).",
            show_default=False,
        ),
    ] = None,
    float32_tolerance: Annotated[
        float,
        typer.Option(
            "--float32-tolerance",
            help="Relative radius loss a float32 margin pass may cost against float64 (CPU; points it "
            "cannot settle are recomputed in float64; 0 = float64 only; see docs/certify.md).",
        ),
    ] = 1e-6,
    crown_steps: Annotated[
        int,
        typer.Option(
            "--crown-steps",
            help="Adam steps on the crown certificate's lower ReLU slopes per radius test (0 = the "
            "adaptive slopes only; 10 is enough; small gains for up to ~4x crown's time, see "
            "docs/certify.md).",
        ),
    ] = 0,  # speccert.bounds.options.CROWN_STEPS (not imported here: the CLI starts without torch)
    refine_above: RefineAboveOpt = 1.01,  # speccert.norms.method.REFINE_ABOVE
    radius_search: Annotated[
        str,
        typer.Option(
            "--radius-search",
            help="How local and crown find each point's radius: full (their search for the largest "
            "radius) or eps (test only the --eps values, largest first after a probe at the smallest; "
            "radii are then the best proven by those tests, a lower bound; several times faster, see "
            "docs/certify.md).",
        ),
    ] = "full",
) -> None:
    """Certify a classifier's L2 robustness on labelled data: global Lipschitz bound, certified radii and
    certified accuracy at each eps (a radius is a proven L2 distance in the data's own space)."""
    from speccert.bounds import certify
    from speccert.bounds.certify_result import CertifyReport
    from speccert.ir.decision import check_decision, decide_by

    eps_list = parse_eps(eps)
    check_crc(crc_steps, second_order)
    if exact_max_dim is not None:
        check_exact_max_dim(exact_max_dim)
    mean_v, std_v = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    check_decision(decision)
    options = _certify_options(
        method,
        device,
        second_order,
        audit,
        batch_size,
        seed,
        crc_steps,
        lower_points,
        certificate,
        exact_max_dim,
        float32_tolerance,
        crown_steps,
        refine_above,
        radius_search,
    )
    check_outputs(
        {"--json": json_out, "--plot": plot}, inputs={"MODEL": model, "--data": data, "--weights": weights}
    )
    _check_plot(plot)
    from speccert.data import load_data
    from speccert.data.idx import check_split_applies

    check_split_applies(data, split, "--split")
    split = split or "test"
    dataset = load_data(data, split, limit)  # data errors first: they are cheaper to find than model ones
    graph = decide_by(
        load_model(model, input_shape, weights, trust_pickle, random_weights=random_weights), decision
    )

    with stage_progress("speccert certify") as progress:
        report: CertifyReport = certify(
            graph, dataset, eps_list, options, mean=mean_v, std=std_v, split=split, progress=progress
        )
    report.model["path"] = report.model.get("path") or model
    if random_weights and weights is None:
        report.model["weights"] = "random_init"  # the note on stderr said so too
    d = report.to_dict()
    render(d, err if json_out == "-" else out)
    if plot is not None:
        from speccert.report.certify_plot import plot_certified_accuracy

        plot_certified_accuracy(report, plot)
        (err if json_out == "-" else out).print(f"plot written to {plot}")
    if json_out is not None:
        write_json(d, json_out)
