"""Faithfulness of a PyTorch import: the IR must compute what the original computes, checked at every
load on seeded random inputs; and quiet calls into torch (the library never prints)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from speccert.errors import InternalError, UsageError
from speccert.ir.graph import Graph

Tensor = torch.Tensor
TRACE_BATCH = 2  # batch size of the traces the importer makes; the IR's batch axis stays symbolic
RTOL, ATOL = 1e-4, 1e-6


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.export and the TorchScript converter warn and log to stderr; the library never prints."""
    loggers = [
        lg
        for name, lg in logging.root.manager.loggerDict.items()
        if name.startswith("torch") and isinstance(lg, logging.Logger) and not lg.disabled
    ]
    for lg in loggers:
        lg.disabled = True
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")  # torch.export also prints partial graphs to sys.stderr
            yield
    finally:
        for lg in loggers:
            lg.disabled = False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


# ---- faithfulness ---------------------------------------------------------------------------------
def check_faithful(
    graph: Graph,
    reference: Callable[[Tensor], Any],
    batches: tuple[int, ...] = (TRACE_BATCH, 3),
    ref_dtype: torch.dtype = torch.float32,
    what: str = "the original module",
) -> None:
    """Raise InternalError unless graph(x) matches reference(x) on seeded random inputs:
    max |graph(x) - ref(x)| <= RTOL * max |ref(x)| + ATOL (NaN must match NaN)."""
    gen = torch.Generator().manual_seed(20261122)
    for i, b in enumerate(batches):
        x = torch.randn((b, *graph.input_shape), generator=gen)
        if i % 2:
            x = torch.rand((b, *graph.input_shape), generator=gen)
        with torch.no_grad():
            try:
                ref = reference(x.to(ref_dtype))
            except Exception as exc:  # noqa: BLE001 - e.g. a shape outside an archive's dynamic range
                raise UsageError(
                    f"{what} does not accept input shape {list(graph.input_shape)}: {first_line(exc)}"
                ) from None
            if isinstance(ref, (tuple, list)) and len(ref) == 1:
                ref = ref[0]
            try:
                got = graph.forward(x.to(graph.dtype))
            except NotImplementedError:
                return  # an Opaque node that cannot run on this batch (allow_unsupported graphs only)
        if not isinstance(ref, Tensor) or tuple(ref.shape) != tuple(got.shape):
            shape = list(ref.shape) if isinstance(ref, Tensor) else type(ref).__name__
            raise InternalError(
                f"import is not faithful: output shape {list(got.shape)} vs {shape} from {what}"
            )
        ref64, got64 = ref.detach().double(), got.detach().double()
        nan = torch.isnan(ref64)
        if not torch.equal(nan, torch.isnan(got64)):
            raise InternalError(f"import is not faithful: NaN outputs differ from {what}")
        scale = float(ref64[~nan].abs().max()) if bool((~nan).any()) else 0.0
        err = float((ref64 - got64)[~nan].abs().max()) if bool((~nan).any()) else 0.0
        if not err <= RTOL * scale + ATOL:
            raise InternalError(
                f"import is not faithful: max |IR - {what}| = {err:.3g} on a random batch of {b} "
                f"(output scale {scale:.3g}, tolerance {RTOL * scale + ATOL:.3g}); please report this model"
            )
