"""`speccert bench certify --throughput`: the float32 pass beside float64 alone, on a real model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from speccert.cli.app import main
from speccert.cli.bench_throughput import radius_loss

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "cnn_lip").mkdir()
    shutil.copy(REPO / "models" / "cnn_lip.onnx", folder / "cnn_lip" / "model.onnx")
    data = np.load(REPO / "models" / "data" / "fashion_mnist_test_1k.npz")
    np.save(folder / "cnn_lip" / "x.npy", data["x"][:40])
    np.save(folder / "cnn_lip" / "y.npy", data["y"][:40])
    return folder


def _bench(corpus: Path, out: Path, *extra: str) -> dict:
    args = ["bench", "certify", "--no-bundled", "--corpus", str(corpus), "--throughput", "--json", str(out)]
    assert main([*args, *extra]) == 0
    return json.loads(out.read_text())["models"]["cnn_lip"]


def test_throughput_figures_at_a_loose_and_at_no_tolerance(corpus: Path, tmp_path: Path) -> None:
    """cnn_lip's proven float32 error is a few % of its margins (p50 3.6%, p90 20% on the 1k subset): a 50%
    tolerance settles most points in float32 and loses at most 50% of a radius; tolerance 0 is float64
    alone. Points are repeated to 100."""
    loose = _bench(corpus, tmp_path / "a.json", "--float32-tolerance", "0.5", "--min-points", "100")
    assert loose["n"] == 120 and loose["float32_tolerance"] == 0.5
    assert loose["float64_share"] < 0.5 and 0.0 <= loose["radius_loss_max"] <= 0.5
    assert loose["throughput_vs_inference"] > 0 and loose["float64_throughput_vs_inference"] > 0
    q = loose["float32_bound_over_margin"]
    assert 0 < q["p10"] <= q["p50"] <= q["p90"] and q["p50"] < 0.1  # 3.6% measured
    exact = _bench(corpus, tmp_path / "b.json", "--float32-tolerance", "0")
    assert exact["n"] == 40 and exact["float64_share"] == 1.0 and exact["radius_loss_max"] == 0.0
    assert exact["float32_bound_over_margin"] is None
    assert exact["clean_accuracy"] == loose["clean_accuracy"]
    assert exact["float64_samples_per_s"] > 0 and exact["inference_samples_per_s"] > 0


def test_bad_tolerance_or_points_are_usage_errors(corpus: Path) -> None:
    for bad in (["--float32-tolerance", "1.5"], ["--float32-tolerance", "-1"], ["--min-points", "-3"]):
        assert main(["bench", "certify", "--no-bundled", "--corpus", str(corpus), *bad]) == 2


def test_radius_loss() -> None:
    assert radius_loss([0.9, 2.0, 0.0], [1.0, 1.0, 0.0]) == pytest.approx(0.1)
    assert radius_loss([1.0], [float("inf")]) == 0.0 and radius_loss([], []) == 0.0


def test_certify_command_takes_the_tolerance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`speccert certify --float32-tolerance`: out of [0, 1) is exit 2 with one line; 0 is float64 only;
    0.5 settles cnn_lip's points in float32 (its proven error is a few % of its margins)."""
    data = REPO / "models" / "data" / "fashion_mnist_test_1k.npz"
    base = ["certify", str(REPO / "models" / "cnn_lip.onnx"), "--data", str(data)]
    base += ["--limit", "64", "--lower-points", "1"]
    assert main([*base, "--float32-tolerance", "1.5"]) == 2
    assert "--float32-tolerance must be in [0, 1)" in capsys.readouterr().err
    shares = []
    for tol in ("0", "0.5"):
        out = tmp_path / f"r{tol}.json"
        assert main([*base, "--float32-tolerance", tol, "--json", str(out)]) == 0
        shares.append(json.loads(out.read_text())["timing"]["float64_share"])
    assert shares[0] == 1.0 and shares[1] < 0.5


def test_loss_cell_does_not_tell_roundoff_from_zero() -> None:
    """A loss of 0 and one of float64 roundoff print alike (which one a run gets depends on the threads)."""
    from speccert.cli.bench_throughput import _loss_cell

    assert _loss_cell(0.0) == _loss_cell(3e-12) == "<1e-9"
    assert _loss_cell(0.012) == "0.012"
