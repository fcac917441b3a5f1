"""`speccert bench norms`: auto vs power iteration vs Fantastic-Four, side by side, on real models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from speccert.cli.app import main

REPO = Path(__file__).resolve().parents[1]


def test_bench_norms_json_on_bundled_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus"
    for name in ("cnn_lip", "resnet"):
        (corpus / name).mkdir(parents=True)
        shutil.copy(REPO / "models" / f"{name}.onnx", corpus / name / "model.onnx")
    out = tmp_path / "bench.json"
    assert main(["bench", "norms", "--no-resnet", "--corpus", str(corpus), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"cnn_lip", "resnet"}
    for entry in report["models"].values():
        s = entry["summary"]
        assert set(s) == {"auto", "auto_upper", "auto_unrefined", "power", "fantastic4"}
        assert s["auto_unrefined"]["seconds"] <= s["auto_upper"]["seconds"] <= s["auto"]["seconds"]
        for row in entry["layers"]:
            # Every value is measured against the best proven lower bound of the layer.
            assert row["auto_unrefined"] >= row["auto"] >= row["lower"] > 0
            assert row["power"] <= row["lower"] * (1 + 1e-12)
            if row["fantastic4"] is not None:
                # auto never returns a looser bound than Fantastic-Four (it is one of its candidates
                # or the torus bound, which never exceeds it).
                assert row["auto"] <= row["fantastic4"] * (1 + 1e-9)
        convs = [r for r in entry["layers"] if r["conv"]]
        assert convs and s["auto"]["conv_max_ratio"] == pytest.approx(
            max(r["auto"] / r["lower"] for r in convs)
        )
        # auto's own lower bound (Lanczos) ends as high as 100 steps of power iteration, on every layer.
        assert all(r["auto_lower"] >= r["power"] * (1 - 1e-4) for r in entry["layers"])


def test_bench_norms_missing_corpus_is_an_input_error(tmp_path: Path) -> None:
    assert main(["bench", "norms", "--no-resnet", "--corpus", str(tmp_path / "nope")]) == 4


def test_bench_certify_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`speccert bench certify`: the issue-4 figures per model, consistent with each other."""
    import numpy as np

    corpus = tmp_path / "corpus"
    (corpus / "cnn_lip").mkdir(parents=True)
    shutil.copy(REPO / "models" / "cnn_lip.onnx", corpus / "cnn_lip" / "model.onnx")
    data = np.load(REPO / "models" / "data" / "fashion_mnist_test_1k.npz")
    np.save(corpus / "cnn_lip" / "x.npy", data["x"][:60])
    np.save(corpus / "cnn_lip" / "y.npy", data["y"][:60])
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "certify",
                "--no-bundled",
                "--corpus",
                str(corpus),
                "--eps",
                "0.1,0.5,1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())["models"]["cnn_lip"]
    assert r["n"] == 60 and r["eps"] == [0.1, 0.5, 1.0]
    assert r["lipschitz_upper"] >= r["lipschitz_lower"] > 0
    assert r["ratio"] == pytest.approx(r["lipschitz_upper"] / r["lipschitz_lower"])
    acc = r["certified_accuracy"]
    assert r["clean_accuracy"] >= acc[0] >= acc[1] >= acc[2] and acc[0] > 0
    assert r["throughput_vs_inference"] > 0 and r["seconds"] >= r["norms_s"] + r["certify_s"]
    assert main(["bench", "certify", "--no-bundled", "--corpus", str(tmp_path / "missing")]) == 4
