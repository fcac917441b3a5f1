"""Shared fixtures. The VNN-COMP corpus is read from ../shared/onnx-corpus beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Spin-waiting OpenMP threads made tests 5-10x slower on an oversubscribed machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests explore new random examples on every developer run (that is how they find bugs), but
# CI must not pass or fail by chance: .ci/run sets SPECCERT_HYPOTHESIS_PROFILE=ci, which derandomizes
# hypothesis (the examples are a function of each test's source), so the run CI lands on is the run a
# developer reproduces with the same variable.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("SPECCERT_HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("SPECCERT_CORPUS", REPO.parent / "shared" / "onnx-corpus"))

# Tests use tiny tensors: one thread avoids oversubscription (2 threads made small ops ~10x slower
# on a loaded 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"ONNX corpus not found at {CORPUS} (set SPECCERT_CORPUS or check out ../shared)")
    return CORPUS


def corpus_models() -> list[str]:
    if not CORPUS.is_dir():
        return []
    return sorted(p.name for p in CORPUS.iterdir() if (p / "model.onnx").exists())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
