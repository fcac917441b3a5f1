"""`nn.Module` -> graph IR: capture with `torch.export`, convert op by op, check against the module.

`from_module` is the route every PyTorch source ends in (`torch_import.py` turns .pt2 archives,
TorchScript files, factories and pickled modules into an `ExportedProgram` or a module first);
`convert` is the shared ExportedProgram -> Graph step, decomposing to core ATen ops only when needed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from speccert.errors import UnsupportedModelError, UsageError
from speccert.importers.aten_ops import exported_to_graph
from speccert.importers.attention import aten_attention
from speccert.importers.torch_check import TRACE_BATCH, check_faithful, first_line, quiet
from speccert.importers.torch_inplace import functional_copy
from speccert.ir.graph import Graph, ModelSource

Tensor = torch.Tensor


def _module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.float32, torch.device("cpu")


def _export(module: nn.Module, x: Tensor) -> torch.export.ExportedProgram:
    try:
        with quiet():
            return torch.export.export(module, (x,), strict=False)
    except Exception as exc:  # noqa: BLE001 - any export failure is a model torch.export cannot capture
        raise UnsupportedModelError(
            f"torch.export cannot capture this model ({first_line(exc)}); data-dependent control flow and "
            "Python side effects in forward() are not supported"
        ) from None


def from_module(
    module: nn.Module,
    input_shape: tuple[int, ...],
    *,
    check: bool = True,
    allow_unsupported: bool = False,
    source: ModelSource | None = None,
) -> Graph:
    """Convert an `nn.Module` (put in eval mode) taking one tensor of shape [N, *input_shape] to a Graph.

    The module is captured with `torch.export` at batch size 2, decomposed to core ATen ops, converted op
    by op, and (with `check`) compared with `module(x)` on random batches of 2 and 3.

    >>> g = from_module(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), (4,))
    >>> [n.op_type for n in g.nodes]
    ['Linear', 'Activation']
    """
    if not isinstance(module, nn.Module):
        raise UsageError(f"expected a torch.nn.Module, got {type(module).__name__}")
    input_shape = tuple(int(d) for d in input_shape)
    module = module.eval()
    dtype, device = _module_dtype_device(module)
    x = torch.randn((TRACE_BATCH, *input_shape), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    try:
        with torch.no_grad():
            module(x)
    except Exception as exc:  # noqa: BLE001 - the user's module rejects the shape
        raise UsageError(
            f"the model does not accept input shape {list(input_shape)} "
            f"(without the batch axis): {first_line(exc)}"
        ) from None
    ep = _export(module, x)
    graph = convert(
        ep, input_shape, TRACE_BATCH, allow_unsupported, source or ModelSource("<module>", "python")
    )
    if check:

        def reference(x: Tensor) -> Any:
            y = module(x.to(device))
            return y.cpu() if isinstance(y, Tensor) else y

        check_faithful(graph, reference, ref_dtype=dtype)
    return graph


def convert(
    ep: torch.export.ExportedProgram,
    input_shape: tuple[int, ...],
    batch: int,
    allow_unsupported: bool,
    source: ModelSource,
    *,
    share_constants: bool = False,
) -> Graph:
    """Convert the program as exported (common layers appear as aten.conv2d, aten.linear, ...); only if
    some op has no converter, decompose to the core ATen set and convert that (it costs ~0.5 s per call).
    If both fail, the ops are reported (or kept as Opaque nodes) as exported: they name what the user
    wrote (`aten.pad` with mode 'reflect', not the `aten.index` it decomposes into). A program with
    in-place ops (`relu_`, `hardtanh_`, `add_`: archives saved from a training-IR export) reads them as
    their functional twins when no other node sees the write (`torch_inplace.py`), else it is
    functionalised first (decompositions with an empty table), so every value is used as computed."""
    attention = aten_attention(ep)
    if attention:  # one line naming it, not the permutes and unbinds around it (attention.py)
        raise UnsupportedModelError("the model uses attention", attention)
    if _has_mutation(ep):
        local = functional_copy(ep)  # in-place ops nothing else reads: retargeted, no re-trace
        if local is not None:
            ep = local
    if _has_mutation(ep):
        try:
            with quiet():
                ep = ep.run_decompositions({})
        except Exception as exc:  # noqa: BLE001 - functionalisation failed: the ops cannot be read safely
            raise UnsupportedModelError(
                f"cannot functionalise the in-place ops of this program: {first_line(exc)}"
            ) from None
    try:
        return exported_to_graph(
            ep, input_shape, batch, allow_unsupported=False, source=source, share_constants=share_constants
        )
    except UnsupportedModelError as exc:
        first = exc
    try:
        with quiet():
            decomposed = ep.run_decompositions()
        return exported_to_graph(
            decomposed,
            input_shape,
            batch,
            allow_unsupported=False,
            source=source,
            share_constants=share_constants,
        )
    except UnsupportedModelError:
        pass
    except Exception:  # noqa: BLE001 - decomposition itself failed: report the ops as exported
        pass
    if not allow_unsupported or not first.problems:
        raise first
    return exported_to_graph(
        ep, input_shape, batch, allow_unsupported=True, source=source, share_constants=share_constants
    )


def _has_mutation(ep: torch.export.ExportedProgram) -> bool:
    """True when a call in the program mutates a tensor in place (a mutable ATen schema)."""
    for n in ep.graph.nodes:
        schema = getattr(n.target, "_schema", None) if n.op == "call_function" else None
        if schema is not None and schema.is_mutable:
            return True
    return False


__all__ = ["convert", "from_module"]
