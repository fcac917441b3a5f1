"""Progress inside a model's norms: the callback hears each layer and what runs inside it (the method, a
Lanczos step), the last call says the model is done, and listening never changes a result."""

from __future__ import annotations

import math
import re

import torch

from speccert.ir import Conv, Graph, Node
from speccert.norms import layer_norms


def test_progress_reports_methods_and_lanczos_steps_without_changing_results() -> None:
    gen = torch.Generator().manual_seed(0)
    # 24 channels on 10x10: both Gram sides 2400 > 2048, so auto runs the torus bound, then Lanczos, then
    # (the bracket is over 1%) the deflated bound; without the light tier, which the geometry would
    # predict here and run first instead of the torus bound.
    conv = Conv(torch.randn(24, 24, 3, 3, generator=gen), None, (1, 1), ((1, 1), (1, 1)), (1, 1))
    g = Graph((24, 10, 10), [Node("c", conv, ("input",))])
    calls: list[tuple[int, int, str]] = []
    (heard,) = layer_norms(g, progress=lambda i, n, text: calls.append((i, n, text)), tighten_above=math.inf)
    (quiet,) = layer_norms(g, tighten_above=math.inf)
    assert heard.upper.value == quiet.upper.value and heard.lower is not None and quiet.lower is not None
    assert heard.lower.value == quiet.lower.value and heard.method == "deflated"
    texts = [t for _, _, t in calls]
    assert texts[0] == "c" and "c: fft" in texts and calls[-1] == (1, 1, "")
    refine = texts[texts.index("c: deflated") :]
    assert refine[1:5] == [
        "c: deflated: frequency blocks",
        "c: deflated: eigenvectors of 66 blocks",
        "c: deflated: Cholesky of 41 deflated blocks",  # the other 25 cleared by the eigenvector screen
        "c: deflated: output crop, 50 vectors",
    ], refine
    steps = [t for t in texts if re.fullmatch(r"c: lanczos \d+/\d+", t)]
    assert steps and steps[0] == "c: lanczos 0/100"
    assert all(i == 0 and n == 1 for i, n, _ in calls[:-1])
