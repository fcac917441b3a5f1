"""`auto`'s refine stage and the structured refusals it reads.

The refine stage (speccert.norms.auto._refine) runs the crop-aware deflated bound only on a layer whose
torus / Lanczos bracket is wider than `refine_above`; its bound must stay >= the truth (dense SVD) and
never loosen the layer's upper bound. A method's refusal says whether the memory budget (the user can
raise it: auto always says so) or a size cap (the decisive stage's quiet case) stopped it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from speccert.ir import Conv
from speccert.norms import NormContext, deflation, load_methods
from speccert.norms.auto import BUDGET_HINT, norm_of_layer, unrefined_upper
from speccert.norms.explicit import explicit_matrix
from speccert.norms.layer import LinearLayer

CPU = torch.device("cpu")


def _layer(c: int, n: int, seed: int = 0) -> LinearLayer:
    """A Kaiming-scaled c -> c 3x3 conv with padding 1 on an n x n map (ResNet-18's layer4 in small)."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(c, c, 3, 3, generator=gen, dtype=torch.float64) * math.sqrt(2 / (c * 9))
    conv = Conv(w, None, (1, 1), ((1, 1), (1, 1)), (1, 1))
    return LinearLayer("c", conv, (c, n, n), (c, n, n))


def _truth(layer: LinearLayer) -> float:
    return float(torch.linalg.matrix_norm(explicit_matrix(layer, CPU), ord=2))


def test_refine_runs_only_above_its_target_and_stays_sound(monkeypatch) -> None:  # noqa: ANN001
    # 48 channels on 7x7: the Gram side 2352 is over exact's 2048 and the matrix over dense's 1M
    # entries, so auto takes the torus bound (~2.5% over the truth here) and Lanczos first, when the
    # geometry does not predict the miss (the prediction off: EXCESS 0)
    monkeypatch.setattr(deflation, "EXCESS", 0.0)
    layer = _layer(48, 7)
    truth = _truth(layer)
    ctx = NormContext()
    off = norm_of_layer(layer, "auto", dataclasses.replace(ctx, refine_above=math.inf))
    assert off.method == "fft" and "deflated/upper" not in off.others
    assert off.gap is not None and off.gap > 0.01  # the torus bound misses the default target here
    on = norm_of_layer(layer, "auto", ctx)  # the default target (1.01)
    assert on.method == "deflated" and on.others["fft/upper"].value == off.upper.value
    assert truth * (1 - 1e-12) <= on.upper.value < off.upper.value
    assert on.upper.value / truth - 1 < 0.6 * (off.upper.value / truth - 1), (truth, on.upper, off.upper)
    assert on.lower is not None and on.lower.value <= truth * (1 + 1e-12)
    # a target the torus bracket already meets: no refinement at the full budget; the light tier (a
    # bracket above tighten_above, 1.001) refines it with fewer vectors, between the two
    target = 1.0 + 2 * off.gap
    wide = norm_of_layer(layer, "auto", dataclasses.replace(ctx, refine_above=target, tighten_above=math.inf))
    assert wide.method == "fft" and "deflated/upper" not in wide.others
    light = norm_of_layer(layer, "auto", dataclasses.replace(ctx, refine_above=target))
    assert light.method == "deflated" and (light.others["deflated/upper"].note or "").endswith(", light")
    assert on.upper.value < light.upper.value < off.upper.value


def test_predicted_miss_runs_the_refine_method_first_and_skips_the_torus() -> None:
    """On a 7x7 map the geometry predicts the torus bound's miss (deflation.expected_excess 1.6% > 1%):
    auto runs the deflated bound first, never the torus bound (superseded) nor Fantastic-Four, and the
    result is the same proven bound as on the refine path, between the truth and the torus bound."""
    layer = _layer(48, 7)
    truth = _truth(layer)
    g = layer.conv()
    assert g is not None and deflation.expected_excess(g) > 0.01
    on = norm_of_layer(layer, "auto", NormContext())
    assert on.method == "deflated" and not {"fft/upper", "fantastic4/upper", "lmt/upper"} & set(on.others)
    plain = unrefined_upper(layer, NormContext())
    assert [r.method for r in plain] == ["fft"]
    assert truth * (1 - 1e-12) <= on.upper.value < plain[0].value
    assert on.lower is not None and on.lower.value <= truth * (1 + 1e-12) and on.gap is not None
    assert on.gap < 0.6 * (plain[0].value / on.lower.value - 1)
    # refine off: no prediction either (the torus bound, as before the refine stage)
    off = norm_of_layer(layer, "auto", NormContext(refine_above=math.inf))
    assert off.method == "fft" and off.upper.value == plain[0].value


def test_light_tier_on_a_13x13_map(monkeypatch) -> None:  # noqa: ANN001
    """A 13x13 map: the torus bound is 0.1-1% over the truth (dense SVD), under the 1.01 target but over
    tighten_above (1.001). The geometry predicts that (expected_excess 0.47%): auto runs the deflated
    bound first at the light budget (theta THETA_LIGHT, no torus bound); unpredicted, after the torus
    bound and Lanczos. Both are the same proven bound, >= the truth, and clearly under the torus bound;
    tighten_above inf or refine_above inf: the torus bound alone."""
    layer = _layer(16, 13)  # Gram side 2704: over exact's 2048, so auto takes the torus bound
    truth = _truth(layer)
    g = layer.conv()
    assert g is not None and 0.001 < deflation.expected_excess(g) < 0.01
    plain = unrefined_upper(layer, NormContext())[0]
    assert plain.method == "fft" and 1.001 < plain.value / truth < 1.01, plain.value / truth
    first = norm_of_layer(layer, "auto", NormContext())
    assert first.method == "deflated" and "fft/upper" not in first.others
    assert (first.others["deflated/upper"].note or "").endswith(", light")
    assert truth * (1 - 1e-12) <= first.upper.value
    assert first.upper.value / truth - 1 < 0.7 * (plain.value / truth - 1), (truth, first.upper, plain)
    for off in (NormContext(tighten_above=math.inf), NormContext(refine_above=math.inf)):
        got = norm_of_layer(layer, "auto", off)
        assert got.method == "fft" and got.upper.value == plain.value and "deflated/upper" not in got.others
    monkeypatch.setattr(deflation, "EXCESS", 0.0)  # unpredicted: the refine stage's light tier
    after = norm_of_layer(layer, "auto", NormContext())
    assert after.method == "deflated" and after.others["fft/upper"].value == plain.value
    assert after.upper.value == first.upper.value


def test_a_light_run_first_still_gets_the_full_budget_above_the_target(monkeypatch) -> None:  # noqa: ANN001
    """A prediction too low (the 7x7 map's ~2.5% torus excess guessed at 0.41%): the light run first
    leaves the bracket above 1.01, so the refine stage runs the full budget after it, and the bound is
    the one the right prediction gives."""
    layer = _layer(48, 7)
    right = norm_of_layer(layer, "auto", NormContext())
    monkeypatch.setattr(deflation, "EXCESS", 0.1)
    g = layer.conv()
    assert g is not None and 0.001 < deflation.expected_excess(g) < 0.01
    heard: list[str] = []
    got = norm_of_layer(layer, "auto", NormContext(note=heard.append))
    assert heard.count("deflated") == 2 and "fft" not in heard, heard
    assert got.method == "deflated" and not (got.upper.note or "").endswith(", light")
    assert got.upper.value == right.upper.value and got.gap is not None and got.gap < 0.01


def test_a_wrong_prediction_still_gives_a_proven_bound() -> None:
    """Only the centre tap non-zero (a 1x1 conv in a 3x3 kernel): the torus bound is exact here, yet the
    geometry predicts a miss on 7x7. The deflated bound runs instead; it must stay >= the truth (dense
    SVD) and not above the torus bound (to the 1e-6 of its single-precision steer)."""
    gen = torch.Generator().manual_seed(3)
    w = torch.zeros(48, 48, 3, 3, dtype=torch.float64)
    w[:, :, 1, 1] = torch.randn(48, 48, generator=gen, dtype=torch.float64) / 7
    layer = LinearLayer("c", Conv(w, None, (1, 1), ((1, 1), (1, 1)), (1, 1)), (48, 7, 7), (48, 7, 7))
    truth = _truth(layer)
    got = norm_of_layer(layer, "auto", NormContext())
    plain = unrefined_upper(layer, NormContext())[0].value
    assert got.method == "deflated" and "fft/upper" not in got.others
    assert truth * (1 - 1e-12) <= got.upper.value <= plain * (1 + 1e-6), (truth, got.upper.value, plain)
    assert plain <= truth * (1 + 1e-9)  # the torus bound was exact: the prediction was wrong


def test_refine_tells_its_steps() -> None:
    heard: list[str] = []
    ctx = NormContext(note=heard.append, refine_above=1.0)
    norm_of_layer(_layer(48, 7), "auto", ctx)
    assert "deflated" in heard and any(t.startswith("deflated: output crop, ") for t in heard), heard


def test_refusals_say_memory_or_size() -> None:
    methods = load_methods()
    layer = _layer(48, 7)
    ctx = NormContext()
    dense = methods.get("dense").refuse(layer, ctx)
    assert dense is not None and dense.kind == "size" and "1,000,000 entries" in dense.text
    exact = methods.get("exact").refuse(layer, ctx)
    assert exact is not None and exact.kind == "size"
    tight = dataclasses.replace(ctx, memory_limit=1 << 10)
    fft = methods.get("fft").refuse(layer, tight)
    assert fft is not None and fft.kind == "memory" and fft.text.endswith("> limit 1.0 KiB"), fft
    # auto: the size caps of the decisive stage pass quietly, the memory budget always has a note
    ln = norm_of_layer(layer, "auto", dataclasses.replace(tight, refine_above=math.inf))
    assert any(n.startswith("fft skipped: fft needs ~") and n.endswith(BUDGET_HINT) for n in ln.notes)
    assert not any(n.startswith(("dense skipped", "exact skipped")) for n in ln.notes), ln.notes


def test_bench_refine_above_below_one_is_a_usage_error(capsys) -> None:  # noqa: ANN001
    from speccert.cli.app import main

    assert main(["bench", "norms", "--no-resnet", "--refine-above", "0.5"]) == 2
    assert "--refine-above is a ratio upper / lower >= 1" in capsys.readouterr().err


def test_norms_cli_refine_above(tmp_path) -> None:  # noqa: ANN001
    """`speccert norms --refine-above`: inf keeps the torus bound on the zoo ResNet's 14x14 conv whose
    bracket is wider than 1.01 (the default refines it, tighter and still above the lower bound);
    below 1 or NaN is a usage error (exit 2) before the model is read."""
    import json

    from speccert.cli.app import main

    model = str(Path(__file__).resolve().parents[1] / "models" / "resnet.onnx")
    refined, plain = tmp_path / "refined.json", tmp_path / "plain.json"
    assert main(["norms", model, "--json", str(refined)]) == 0
    assert main(["norms", model, "--json", str(plain), "--refine-above", "inf"]) == 0
    a = {row["name"]: row for row in json.loads(refined.read_text())["layers"]}
    b = {row["name"]: row for row in json.loads(plain.read_text())["layers"]}
    moved = [n for n in a if a[n]["upper"]["value"] != b[n]["upper"]["value"]]
    assert moved, "the default refined no layer of the zoo ResNet"
    for n in moved:
        assert a[n]["upper"]["method"] == "deflated" and b[n]["upper"]["method"] != "deflated"
        assert a[n]["lower"]["value"] <= a[n]["upper"]["value"] < b[n]["upper"]["value"]
    for bad in ("0.5", "nan"):
        assert main(["norms", "does-not-exist.onnx", "--refine-above", bad]) == 2


def test_a_method_run_twice_on_a_layer_keeps_its_better_value_and_both_times() -> None:
    """The light refine budget then the full one: the layer's per-method entry must say what both cost
    (the bench adds these seconds up) and keep the better proven value."""
    from speccert.norms.auto import by_method
    from speccert.norms.result import LowerBound, UpperBound

    got = by_method(
        [
            UpperBound(1.02, "deflated", seconds=1.0),
            LowerBound(0.99, "lanczos", seconds=0.5),
            UpperBound(1.005, "deflated", seconds=3.0),
            LowerBound(0.98, "lanczos", seconds=0.25),
        ]
    )
    assert got["deflated/upper"].value == 1.005 and got["deflated/upper"].seconds == 4.0
    assert got["lanczos/lower"].value == 0.99 and got["lanczos/lower"].seconds == 0.75
