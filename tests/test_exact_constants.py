"""Reported radii never exceed the exact certificate of the model *file* (issue 17 item 1).

The reference is computed without speccert's importer: tests/onnx_float64.py evaluates each zoo ONNX
graph in numpy float64 from its initialisers. Two properties make a reported radius sound for the file:
1. the certified (folded) graph is the file's function: its float64 logits match the reference to
   float64 accuracy (a float32-rounded 1/std or BatchNorm scale is off by ~1e-7 relative and fails);
2. every reported radius is at most the same certificate formula applied to the reference's exact
   margins with no allowance (the radius the certificate promises for the file's real-number function).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_float64 import Float64Model

import speccert
from speccert.bounds.certificate import CERTIFICATES, Batch, CertContext, safe_margins

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
MANIFEST = json.loads((MODELS / "manifest.json").read_text())
ONNX = sorted(p.name for p in MODELS.glob("*.onnx"))
# Relative tolerance of the reference itself: a few float64 roundings per operator, far below the 1e-7
# radius slack and the ~1e-7 error a float32-rounded constant brings.
REL = 1e-11
# torch's softplus returns x above 20, off by log1p(exp(-20)) = 2.1e-9 per element: a known difference from
# the file's Softplus that the certificate's float-error allowance carries (bounds/float_error.py).
SOFTPLUS_ABS = 1e-8


@pytest.fixture(scope="module")
def subset() -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS / MANIFEST["subset"]["path"]) as z:
        return z["x"][:400], z["y"][:400]


def test_every_zoo_model_is_covered() -> None:
    listed = {Path(e["files"]["onnx"]["path"]).name for e in MANIFEST["models"].values()}
    assert listed <= set(ONNX) and len(ONNX) >= 7


@pytest.mark.parametrize("name", ONNX)
def test_folded_graph_is_the_files_function(name: str, subset: tuple[np.ndarray, np.ndarray]) -> None:
    x, _ = subset
    exact = Float64Model(MODELS / name)(x)
    bound = speccert.lipschitz_bound(speccert.load(MODELS / name))
    with torch.no_grad():
        folded = bound.folded.to("cpu", torch.float64).forward(torch.from_numpy(x).double()).numpy()
    tol = REL * np.abs(exact).max() + (SOFTPLUS_ABS if name.startswith("smooth") else 0.0)
    assert np.abs(folded - exact).max() <= tol, "the certified graph is not the file's function"


@pytest.mark.parametrize("name", ONNX)
def test_reported_radii_not_above_exact(name: str, subset: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = subset
    graph = speccert.load(MODELS / name)
    report = speccert.certify(graph, (x, y), eps=[0.5], lower_bound=False)
    exact = torch.from_numpy(Float64Model(MODELS / name)(x))
    correct = exact.argmax(1).numpy() == y
    assert (report.predictions == exact.argmax(1).numpy()).mean() > 0.99  # near-ties may flip
    bound = speccert.lipschitz_bound(graph)
    ctx = CertContext(bound, bound.folded.to("cpu", torch.float64), torch.device("cpu"))
    yt = torch.from_numpy(y).long()
    batch = Batch(torch.from_numpy(x).double(), yt, exact, safe_margins(exact, yt, torch.zeros(len(y))))
    for kind in report.kinds:
        promised = CERTIFICATES.get(kind)(ctx).radii(batch).amin(1).clamp_min(0).numpy()
        reported = report.radii[kind]
        over = correct & (reported > promised * (1 + REL))
        assert not over.any(), (
            f"{name} {kind}: {over.sum()} radii above the exact certificate, max relative excess "
            f"{((reported - promised) / promised)[over].max():.3g}"
        )


def test_cli_normalisation_is_folded_exactly(subset: tuple[np.ndarray, np.ndarray]) -> None:
    """--mean/--std given to certify: 1/std and -mean/std stay float64 (not rounded to the graph's float32)."""
    x, _ = subset
    mean, std = 0.2860, 0.3530
    mlp = Float64Model(MODELS / "mlp.onnx")
    exact = mlp((x.astype(np.float64) - mean) / std)
    bound = speccert.lipschitz_bound(speccert.load(MODELS / "mlp.onnx"), mean=[mean], std=[std])
    with torch.no_grad():
        folded = bound.folded.to("cpu", torch.float64).forward(torch.from_numpy(x).double()).numpy()
    assert np.abs(folded - exact).max() <= REL * np.abs(exact).max()


def test_gemm_alpha_beta_are_not_rounded_to_float32(tmp_path: Path) -> None:
    """alpha B and beta C of a Gemm are exact real products, not float32 numbers: the certified graph keeps
    them exact (a float64 scale after Linear(B), folded in float64)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w, c = rng.standard_normal((6, 5)).astype(np.float32), rng.standard_normal(6).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.3, beta=0.7)
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(c, "c")],
    )
    path = tmp_path / "gemm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    x = rng.standard_normal((50, 5))
    exact = Float64Model(path)(x)
    bound = speccert.lipschitz_bound(speccert.load(path))
    with torch.no_grad():
        folded = bound.folded.to("cpu", torch.float64).forward(torch.from_numpy(x)).numpy()
    assert np.abs(folded - exact).max() <= REL * np.abs(exact).max()
