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
    """gate.data.split chooses in a folder of IDX files; with an .npz it was silently ignored. The gate
    and certify's --split share one check (speccert.data.idx.check_split_applies)."""
    from speccert.data.idx import check_split_applies

    npz = tmp_path / "d.npz"
    npz.write_bytes(b"")
    rule = [{"metric": "clean_accuracy", "min": 0.1}]
    pol = parse_policy(
        {"gate": {"eps": [0.1], "data": {"path": str(npz), "split": "train"}, "rule": rule}}, "p.toml"
    )
    with pytest.raises(UsageError, match=r"'gate.data.split' \(or --split\) = 'train' chooses.*leave it out"):
        speccert.gate(onnx_classifier(tmp_path / "m.onnx"), pol)
    check_split_applies(npz, None, "--split")  # no split: fine
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte").write_bytes(b"")
    check_split_applies(idx, "train", "--split")


def test_per_channel_normalisation_is_checked_naming_the_policy_keys(tmp_path: Path) -> None:
    """The certify library words this as --mean/--std; a policy user is told the keys instead (the gate
    runs the library's check, speccert.bounds.lipschitz.check_normalisation, with the keys' names)."""
    model = onnx_classifier(tmp_path / "m.onnx")  # input [1, 4, 4]: one channel
    rule = [{"metric": "clean_accuracy", "min": 0.1}]

    def pol(mean: list[float], std: list[float]) -> Policy:
        data = {"path": str(tmp_path / "d.npz"), "mean": mean, "std": std}
        return parse_policy({"gate": {"eps": [0.1], "data": data, "rule": rule}}, "p.toml")

    with pytest.raises(UsageError, match=r"p.toml: 'gate.data.mean' / 'gate.data.std': 2 per-channel"):
        speccert.gate(model, pol([0.1, 0.2], [0.3]))
    with pytest.raises(
        UsageError, match=r"p.toml: 'gate.data.mean' has 2 values; .* need 1 or the same count"
    ):
        speccert.gate(model, pol([0.1, 0.2], [0.3, 0.3, 0.3]))
    from speccert.bounds.lipschitz import check_normalisation

    assert check_normalisation([0.1, 0.2, 0.3], [0.3], (3, 8, 8))[2] == 3
    assert check_normalisation([0.5], [0.5], (1, 28, 28))[2] == 1
