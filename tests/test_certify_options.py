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
