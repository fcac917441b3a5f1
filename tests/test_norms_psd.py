"""The Cholesky-certified maximum of block norms (speccert.norms.psd) against float64 SVD."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speccert.norms.psd import max_block_norm


def _truth(b: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(b, ord=2).max())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 40), st.integers(1, 40), st.booleans(), st.integers(0, 10**6))
def test_upper_and_tight(batch: int, rows: int, cols: int, complex_: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    b = torch.randn(batch, rows, cols, generator=gen, dtype=torch.float64)
    if complex_:
        b = torch.complex(b, torch.randn(batch, rows, cols, generator=gen, dtype=torch.float64))
    got, top = max_block_norm(b)
    truth = _truth(b)
    assert truth <= got <= truth * (1 + 1e-8)
    assert 0 <= top < batch


def test_maximum_hidden_among_near_ties() -> None:
    """Many blocks with almost the same norm and the largest one not first: the max is still found."""
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(64, 64, 64, generator=gen, dtype=torch.float64))
    s = torch.linspace(1.0, 0.5, 64, dtype=torch.float64)
    scale = 1.0 + 1e-7 * torch.rand(64, generator=gen, dtype=torch.float64)
    b = q * (s[None, :] * scale[:, None])[:, None, :] @ q.mT  # block i has norm scale[i]
    got, top = max_block_norm(b)
    truth = _truth(b)
    assert truth <= got <= truth * (1 + 1e-9)
    assert top == int(torch.argmax(scale))


def test_floor_is_respected_and_zero_blocks() -> None:
    b = torch.zeros(3, 5, 4, dtype=torch.float64)
    got, _ = max_block_norm(b)
    assert 0.0 <= got < 1e-149
    got, _ = max_block_norm(b, floor=2.0)
    assert 2.0 <= got <= 2.0 * (1 + 1e-9)


def test_rank_one_with_huge_dynamic_range() -> None:
    u = torch.tensor([1e8, 1.0, 1e-8], dtype=torch.float64)
    b = (u[:, None] * u[None, :])[None]
    got, _ = max_block_norm(b)
    assert float(torch.linalg.norm(u)) ** 2 <= got == pytest.approx(float(torch.linalg.norm(u)) ** 2, rel=1e-9)
