"""One options object: `CertifyOptions` is what certify, the gate, fine-tuning's evaluator and bench
pass; keywords of `speccert.certify(...)` still work and mean the same fields."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from certify_nets import D, mlp

from speccert.bounds import CertifyOptions, certify
from speccert.errors import UsageError
from speccert.norms.method import EXACT_MAX_DIM
from speccert.training.evaluate import STOPPING_RULE_OPTIONS


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 12, generator=gen, dtype=D), torch.randint(0, 5, (n,), generator=gen)


def test_options_object_and_keywords_give_the_same_report() -> None:
    g, data = mlp("tanh"), _data()
    opts = CertifyOptions(method="fft", second_order=True, lower_points=8, batch_size=16, seed=3)
    a = certify(g, data, [0.01, 0.1], opts)
    b = certify(g, data, [0.01, 0.1], method="fft", second_order=True, lower_points=8, batch_size=16, seed=3)
    assert np.array_equal(a.radius, b.radius) and a.lipschitz_upper == b.lipschitz_upper
    assert a.lipschitz_lower == b.lipschitz_lower
    assert a.environment == b.environment
    assert a.environment["exact_max_dim"] == EXACT_MAX_DIM and a.environment["second_order"] is True
    # keywords override the object's fields
    c = certify(g, data, [0.1], opts, second_order=False, lower_bound=False)
    assert (
        c.environment["second_order"] is False
        and c.lipschitz_lower is None
        and c.environment["method"] == "fft"
    )


def test_unknown_keyword_and_bad_values_are_refused() -> None:
    g, data = mlp(), _data()
    with pytest.raises(TypeError, match="unexpected keyword argument 'second_ordr'"):
        certify(g, data, [0.1], second_ordr=True)
    with pytest.raises(UsageError, match="--crc-steps"):
        certify(g, data, [0.1], crc_steps=3)
    with pytest.raises(UsageError, match="batch size"):
        certify(g, data, [0.1], CertifyOptions(batch_size=0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        CertifyOptions().method = "fft"  # type: ignore[misc]


def test_one_source_of_defaults() -> None:
    """exact_max_dim's default is the exact method's constant; the stopping rule differs from
    `speccert certify` only where it says so (second order on, no empirical lower bound)."""
    default = CertifyOptions()
    assert default.exact_max_dim == EXACT_MAX_DIM
    diff = {
        f.name
        for f in dataclasses.fields(CertifyOptions)
        if getattr(default, f.name) != getattr(STOPPING_RULE_OPTIONS, f.name)
    }
    assert diff == {"second_order", "lower_bound"}


def test_refine_above_reaches_the_norms_and_the_report(tmp_path) -> None:  # noqa: ANN001
    """`refine_above` (CLI --refine-above) goes to auto's refine stage: on the zoo ResNet, whose 14x14
    conv is refined by default, inf (never) gives a larger L and the environment records None;
    below 1 or NaN is a usage error (exit 2 from the CLI, before the model is read)."""
    import json
    import math
    from pathlib import Path

    from speccert.cli.app import main
    from speccert.importers import load

    root = Path(__file__).resolve().parents[1]
    g = load(str(root / "models" / "resnet.onnx"))
    data = str(root / "models" / "data" / "fashion_mnist_test_1k.npz")
    kw = {"eps": [0.1], "limit": 8, "lower_bound": False}
    refined, plain = certify(g, data, **kw), certify(g, data, refine_above=math.inf, **kw)
    assert refined.lipschitz_upper < plain.lipschitz_upper
    out = tmp_path / "r.json"
    model = str(root / "models" / "resnet.onnx")
    assert (
        main(["certify", model, "--data", data, "--limit", "8", "--refine-above", "inf", "--json", str(out)])
        == 0
    )
    report = json.loads(out.read_text())
    assert report["environment"]["refine_above"] is None
    assert report["lipschitz"]["upper"] == pytest.approx(plain.lipschitz_upper, rel=1e-12)
    for bad in ("0.5", "nan"):
        assert main(["certify", "missing.onnx", "--data", data, "--refine-above", bad]) == 2
    with pytest.raises(UsageError):
        CertifyOptions(refine_above=0.9).validate()
