"""lmt's `la_beta` (logit annealing, BRONet): -(1 - p_y)^beta log p_y on the margin-shifted logits,
checked against the formula computed by hand; beta = 0 is the plain LMT cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from speccert.errors import UsageError
from speccert.training.penalties import make_penalty
from speccert.training.toy import toy_mlp


def test_logit_annealing_matches_its_formula() -> None:
    g = toy_mlp()
    plain = make_penalty("lmt", g, eps=0.3)
    la = make_penalty("lmt", g, eps=0.3, la_beta=2.0)
    plain.eval(), la.eval()  # no power-iteration steps: both use the same seeded vectors
    logits = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    shifted = logits + plain.shift(y, 3)
    p = F.softmax(shifted, dim=1)[torch.arange(7), y]
    want = (-((1 - p) ** 2) * torch.log(p)).mean()
    assert float(la.loss(logits, y, logits, None)) == pytest.approx(float(want), rel=1e-12)
    assert float(plain.loss(logits, y, logits, None)) == pytest.approx(
        float(F.cross_entropy(shifted, y)), rel=1e-12
    )
    assert float(la.loss(logits, y, logits, None)) < float(plain.loss(logits, y, logits, None))
    with pytest.raises(UsageError, match="la_beta"):
        make_penalty("lmt", g, la_beta=-1.0)


def test_gloro_scores_the_plain_logits_and_the_worst_shifted_non_target() -> None:
    g = toy_mlp()
    plain = make_penalty("lmt", g, eps=0.3)
    gl = make_penalty("lmt", g, eps=0.3, gloro=1)
    plain.eval(), gl.eval()
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    shifted = logits + plain.shift(y, 3)
    want = 0.0
    for i in range(6):  # by hand: log-sum-exp over the 3 plain logits and the worst shifted other class
        bot = max(float(shifted[i, j]) for j in range(3) if j != int(y[i]))
        row = [float(v) for v in logits[i]] + [bot]
        want += -row[int(y[i])] + float(torch.logsumexp(torch.tensor(row, dtype=torch.float64), 0))
    assert float(gl.loss(logits, y, logits, None)) == pytest.approx(want / 6, rel=1e-12)
    with pytest.raises(UsageError, match="gloro"):
        make_penalty("lmt", g, gloro=2)
