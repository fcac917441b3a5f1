"""The gate's `refine_above` policy key reaches the certify run and both reports record it (before, the
gate always used the default 1.01 while certify and norms took --refine-above)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import speccert
from speccert.errors import UsageError
from speccert.gate.policy import Policy, parse_policy, read_policy
from speccert.gate.workflow import validate_gate
from tests.test_certify_cli import onnx_classifier


@pytest.mark.parametrize(("value", "recorded"), [("inf", None), ("3.5", 3.5), ("1", 1.0)])
def test_policy_refine_above_is_used_and_recorded(tmp_path: Path, value: str, recorded: float | None) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((20, 1, 4, 4), dtype=np.float32), y=rng.integers(0, 3, 20))
    policy = tmp_path / "speccert.toml"
    policy.write_text(
        f"[gate]\nrefine_above = {value}\n[gate.data]\npath = 'd.npz'\n"
        "[[gate.rule]]\nmetric = 'lipschitz_upper'\nmax = 1e9\n"
    )
    pol = read_policy(policy)
    assert pol.refine_above == float(value) or (math.isinf(pol.refine_above) and value == "inf")
    doc = speccert.gate(onnx_classifier(tmp_path / "m.onnx"), pol).to_dict()
    validate_gate(doc)
    assert doc["policy"]["refine_above"] == recorded
    assert doc["report"]["environment"]["refine_above"] == recorded  # what certify ran with


def test_a_split_on_data_that_has_none_is_an_error(tmp_path: Path) -> None:
    """gate.data.split chooses in a folder of IDX files; with an .npz it was silently ignored."""
    from speccert.gate.workflow import _check_split

    npz = tmp_path / "d.npz"
    npz.write_bytes(b"")
    pol = parse_policy({"gate": {"eps": [0.1], "data": {"path": str(npz), "split": "train"}}}, "p.toml")
    with pytest.raises(
        UsageError, match=r"split 'train' \('gate.data.split' or --split\).*leave the split out"
    ):
        _check_split(pol)
    _check_split(
        parse_policy({"gate": {"eps": [0.1], "data": {"path": str(npz)}}}, "p.toml")
    )  # no split: fine
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte").write_bytes(b"")
    _check_split(
        parse_policy({"gate": {"eps": [0.1], "data": {"path": str(idx), "split": "train"}}}, "p.toml")
    )


def test_per_channel_normalisation_is_checked_naming_the_policy_keys() -> None:
    """The certify library words this as --mean/--std; a policy user is told the keys instead."""
    from speccert.gate.workflow import _check_channels

    def pol(mean: list[float], std: list[float]) -> Policy:
        return parse_policy({"gate": {"eps": [0.1], "data": {"mean": mean, "std": std}}}, "p.toml")

    with pytest.raises(UsageError, match=r"p.toml: 'gate.data.mean' / 'gate.data.std' give 2 per-channel"):
        _check_channels(pol([0.1, 0.2], [0.3]), (1, 28, 28))
    with pytest.raises(UsageError, match=r"need 1 value or the same count, got 2 and 3"):
        _check_channels(pol([0.1, 0.2], [0.3, 0.3, 0.3]), (3, 8, 8))
    _check_channels(pol([0.1, 0.2, 0.3], [0.3]), (3, 8, 8))
    _check_channels(pol([0.5], [0.5]), (1, 28, 28))
