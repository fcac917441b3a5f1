"""All-pairs reductions of row differences, D[i, j] = reduce(R_i - R_j), in bounded memory.

The pairwise, margin-aware and second-order certificates need D over all C x C pairs of C rows of
length n (a classifier head's rows, or the merged affine tail's). Forming R_i - R for each i, as
`torch.stack([(R[i] - R).norm(dim=1) for i in ...])` does, allocates C temporaries of C x n: for
shufflenet_v2's 1000 x 1024 head that is 1000 blocks of 8 MB, each freed while a small result allocated
after it stays alive, and glibc's heap keeps the holes: 7.9 GB resident measured for that one line
(docs/architectures.md). For the margin-aware tail of a 1000-class head behind a 1024x7x7 map each
temporary is 0.4 GB, mapped and unmapped 1000 times.

Here the differences of contiguous rows go through one scratch buffer of at most `SCRATCH_BYTES`,
chunked over j, and every reduction writes into the result in place (no small tensor is left between
two large ones). Each entry is computed with the same arithmetic as the one-line expression (one
subtraction per coordinate, then the same reduction kernel over one contiguous row of length n), so D is
bitwise the same; the rounding allowances the certificates add on top are unchanged. Rows that are not
contiguous (a transposed weight, e.g. an ONNX Gemm without transB) are laid out column by column in the
one-line expression, where torch's reduction runs across rows and its order depends on how many rows
there are: for them j is not chunked (one C x n temporary at a time, as before), so the bits stay those
of the expression too.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tensor = torch.Tensor

SCRATCH_BYTES = 8 << 20  # big enough to amortise the per-chunk calls, small enough to stay in cache


def pairwise_reduce(rows: Tensor, reduce: Callable[[Tensor, Tensor], object]) -> Tensor:
    """D[i, j] = reduce(R_i - R_j) for `rows` R [C, n]: `reduce(diff, out)` writes one value per row of
    `diff` [k, n] (which it may overwrite) into `out` [k]."""
    c, n = rows.shape
    out = torch.empty((c, c), dtype=rows.dtype, device=rows.device)
    if not rows.is_contiguous():  # module docstring: one chunk keeps the expression's reduction order
        for i in range(c):
            reduce(rows[i] - rows, out[i])
        return out
    chunk = max(1, min(c, SCRATCH_BYTES // max(1, n * rows.element_size())))
    scratch = torch.empty((chunk, n), dtype=rows.dtype, device=rows.device)
    for i in range(c):
        for a in range(0, c, chunk):
            b = min(c, a + chunk)
            diff = scratch[: b - a]
            torch.sub(rows[i], rows[a:b], out=diff)
            reduce(diff, out[i, a:b])
    return out


def _sum_of_squares(diff: Tensor, out: Tensor) -> None:
    diff.square_()
    torch.sum(diff, -1, out=out)


def _vector_norm(diff: Tensor, out: Tensor) -> None:
    torch.linalg.vector_norm(diff, dim=1, out=out)


def _max_abs(diff: Tensor, out: Tensor) -> None:
    diff.abs_()
    torch.amax(diff, -1, out=out)


def squared_distances(rows: Tensor) -> Tensor:
    """D[i, j] = sum_k (R_ik - R_jk)^2 as computed in floating point (no allowance added)."""
    return pairwise_reduce(rows, _sum_of_squares)


def distances(rows: Tensor) -> Tensor:
    """D[i, j] = ||R_i - R_j||_2 as computed by torch's vector norm (no allowance added)."""
    return pairwise_reduce(rows, _vector_norm)


def max_abs_differences(rows: Tensor) -> Tensor:
    """D[i, j] = max_k |R_ik - R_jk| (exact: a subtraction rounded once, then a max)."""
    return pairwise_reduce(rows, _max_abs)
