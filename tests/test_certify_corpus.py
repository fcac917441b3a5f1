"""certify() on the VNN-COMP corpus (../shared/onnx-corpus): sound against published falsifications.

An L2 radius r at x proves L-inf robustness at r / sqrt(d). So no point that a complete verifier
falsified at L-inf eps may get r >= eps * sqrt(d) (eps measured in the model's input space). The corpus
gives counts, not which points: over n points and k eps values with F falsified instances, at least
ceil(F / k) points are falsified at the largest eps, so at most n - ceil(F / k) points may have
r >= eps_max * sqrt(d). Every certified point is also attacked with PGD-L2 at its radius (the audit).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import corpus_models

import speccert
from speccert.bounds import certify
from speccert.errors import UnsupportedModelError

pytestmark = [pytest.mark.corpus, pytest.mark.slow]

CIFAR_STD_RESNET = (0.2471, 0.2435, 0.2616)
# name: (largest L-inf eps per input channel in the model's input space, number of eps values, fewest
# falsified instances over the published years)
PUBLISHED: dict[str, tuple[tuple[float, ...], int, int]] = {
    "mnistfc_256x2": ((0.05,), 2, 11),
    "eran_ffnnSIGMOID_6x200": ((0.012,), 1, 1),
    "verivital_maxpool": ((0.004,), 1, 1),
    "marabou_cifar10_small": ((0.024,), 2, 14),
    "oval21_cifar_base_kw": ((0.047 / 0.225,), 1, 0),  # inputs normalised outside: eps / std
    "cifar10_resnet_2b": (tuple(2 / 255 / s for s in CIFAR_STD_RESNET), 1, 0),
}


def linf_box_l2_diameter(eps: tuple[float, ...], shape: tuple[int, ...]) -> float:
    """The L2 norm of the corner of the L-inf box: eps per channel (axis 0) or one eps for all."""
    d = math.prod(shape)
    if len(eps) == 1:
        return eps[0] * math.sqrt(d)
    per = d // len(eps)
    return math.sqrt(sum(e * e * per for e in eps))


@pytest.mark.parametrize("name", [m for m in corpus_models() if m != "gtsrb_bnn_48"])
def test_corpus_certificates_consistent_with_falsifications(corpus_dir: Path, name: str) -> None:
    folder = corpus_dir / name
    g = speccert.load(folder / "model.onnx")
    rep = certify(
        g, folder, eps=[0.001, 0.01, 0.1], audit=8, audit_steps=20, audit_restarts=3, lower_bound=False
    )  # the audit raises InternalError if PGD breaks a certificate
    assert rep.n == len(np.load(folder / "y.npy"))
    assert rep.audit is not None and rep.audit.successes == 0
    if name in PUBLISHED:
        eps, k, falsified = PUBLISHED[name]
        bound = linf_box_l2_diameter(eps, g.input_shape)
        certified_linf = int(((rep.radius >= bound) & rep.correct).sum())
        assert certified_linf <= rep.n - math.ceil(falsified / k)


def test_binarised_net_is_refused_naming_the_sign_nodes(corpus_dir: Path) -> None:
    path = corpus_dir / "gtsrb_bnn_48" / "model.onnx"
    if not path.exists():
        pytest.skip("gtsrb_bnn_48 not in the corpus")
    with pytest.raises(UnsupportedModelError, match="Sign") as info:
        g = speccert.load(path, allow_unsupported=True)
        certify(g, corpus_dir / "gtsrb_bnn_48", eps=[1.0])
    assert info.value.exit_code == 3
