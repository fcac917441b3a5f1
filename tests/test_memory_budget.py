"""--max-memory: one budget for what files declare and what computations plan; over it, a cheaper sound
route with a note, never a crash and never a bound below the truth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from speccert.bounds.certify import certify
from speccert.cli.app import main
from speccert.errors import UsageError
from speccert.importers.torch_module import from_module
from speccert.limits import memory_budget, plan_budget, set_max_memory
from speccert.norms import layer_norms

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _default_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SPECCERT_MAX_MEMORY", raising=False)
    yield
    set_max_memory(None)


def test_budget_parses_sizes_and_plans_within_it() -> None:
    set_max_memory("1.5G")
    assert memory_budget() == plan_budget() == int(1.5 * 2**30)  # set by the user: plans may use all of it
    set_max_memory("64M")
    assert plan_budget() == 64 << 20
    set_max_memory(None)
    assert plan_budget() == min(memory_budget(), 2 << 30)  # default: at most 2 GiB per computation
    for bad in ("lots", "-1G", "0", "nan"):
        with pytest.raises(UsageError, match="--max-memory"):
            set_max_memory(bad)


def test_cli_refuses_a_bad_budget_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-memory", "lots", "inspect", str(ROOT / "models" / "mlp.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--max-memory" in err and "\n" not in err
    assert main(["--max-memory", "4G", "inspect", str(ROOT / "models" / "mlp.onnx")]) == 0


class _ConvHead(nn.Module):
    """A CNN whose logits come from a conv and a linear after the last ReLU: the margin certificate's
    merged tail has one row per logit over the 6x8x8 map."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.c2(torch.relu(self.c1(x))).flatten(1))


def _data(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 5, n)


def test_small_budget_certifies_the_same_points_with_notes() -> None:
    torch.manual_seed(0)
    g = from_module(_ConvHead().eval(), (1, 8, 8))
    data = _data()
    full = certify(g, data, eps=[0.01], method="fantastic4", lower_points=12)
    set_max_memory("40K")  # a few samples' activations; the tail's 5 rows x 640 inputs do not fit
    small = certify(g, data, eps=[0.01], method="fantastic4", lower_points=12)
    notes = " ".join(small.notes)
    assert "batch size 256 ->" in notes and "affine tail" in notes and "margin certificate not used" in notes
    assert small.lipschitz_upper == full.lipschitz_upper  # fantastic4 plans no big allocation
    # Smaller batches change nothing per point; without the margin certificate radii can only shrink.
    assert "margin" in full.kinds and "margin" not in small.kinds
    assert np.all(small.radius <= full.radius * (1 + 1e-12) + 1e-15)
    for kind in small.kinds:  # every kind that ran gives each point the same radius in smaller batches
        np.testing.assert_allclose(small.radii[kind], full.radii[kind], rtol=1e-9, atol=0)
    assert np.array_equal(full.predictions, small.predictions)
    assert small.lipschitz_lower is not None and small.lipschitz_lower <= small.lipschitz_upper


def test_norm_methods_over_the_budget_fall_back_soundly() -> None:
    torch.manual_seed(0)
    g = from_module(nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 5)), (1, 8, 8))
    truth = [
        torch.linalg.matrix_norm(n.op.weight.double(), 2).item() for n in g.nodes if n.op_type == "Linear"
    ]
    set_max_memory("80K")  # below the dense and exact plans for the 48 x 64 matrix, above gram's
    norms = [n for n in layer_norms(g) if "Linear" in n.op]  # the Flatten is a norm-1 layer too
    assert [n.upper.method for n in norms] == ["gram", "dense"]
    for n, t in zip(norms, truth, strict=True):
        assert n.upper.value >= t * (1 - 1e-12)
    assert norms[1].upper.value <= truth[1] * (1 + 1e-9)  # the small layer still gets the exact value
    # auto says which methods the budget kept off (they are not skipped silently), and so does the bound
    assert any("dense skipped" in note and "--max-memory" in note for note in norms[0].notes)
    assert not any("--max-memory" in note for note in norms[1].notes)
    from speccert.bounds import lipschitz_bound

    lb_notes = lipschitz_bound(g).notes
    assert any(
        n.startswith("dense skipped on 1 layer(s) for memory") and "--max-memory" in n for n in lb_notes
    )


def test_no_method_within_the_budget_is_refused_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    from speccert.errors import UnsupportedModelError

    torch.manual_seed(0)
    g = from_module(nn.Sequential(nn.Flatten(), nn.Linear(64, 48)), (1, 8, 8))
    set_max_memory("1K")  # below every method's plan for the 48 x 64 matrix
    with pytest.raises(UnsupportedModelError) as info:
        layer_norms(g)
    assert "--max-memory" in str(info.value.problems)
