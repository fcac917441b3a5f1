"""Write a fine-tuned graph in the format its input came in.

- ONNX in -> ONNX out (speccert.exporters.onnx_export.save_onnx);
- `.pt2` in -> `.pt2` out (speccert.importers.torch_import.save_pt2);
- `package.module:factory` + state_dict in -> a state_dict with the *same keys* out: every graph
  tensor is mapped back to the original key it came from (`key_map`), untouched keys (BN counters,
  buffers the importer folded) are copied from the input state_dict unchanged.

`key_map` is computed once, before training, by matching every trainable graph tensor to the input
state_dict entry holding exactly the same values and shape (ties broken in order: the importer walks
the module in order), or taken from `graph.source.extra["state_dict_keys"]` (JSON) when the importer
records it. A trainable tensor that maps to no key is refused before any training starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from speccert.errors import InputError, UsageError
from speccert.ir.graph import Graph

Tensor = torch.Tensor
SUFFIXES = {"onnx": (".onnx",), "pt2": (".pt2",), "state_dict": (".pt", ".pth")}


def output_format(graph: Graph) -> str:
    """'onnx', 'pt2' or 'state_dict' from where the graph came from (UsageError otherwise)."""
    fmt = graph.source.format if graph.source is not None else ""
    if fmt in SUFFIXES:
        return fmt
    raise UsageError(
        f"cannot write a fine-tuned model back as {fmt or 'an in-memory graph'}: fine-tune an "
        "ONNX file, a .pt2 archive, or 'package.module:factory' with --weights"
    )


def check_out_suffix(fmt: str, out: Path) -> None:
    if out.suffix.lower() not in SUFFIXES[fmt]:
        raise UsageError(
            f"--out {out}: the input is {fmt}, so the output must end with "
            f"{' or '.join(SUFFIXES[fmt])} (the output keeps the input's format)"
        )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise InputError(f"{path} does not hold a state_dict")
    return sd


def key_map(graph: Graph, state_dict: dict[str, Tensor], trainable: list[str]) -> dict[str, str]:
    """graph parameter name ('node.key') -> state_dict key, for every tensor in `trainable`."""
    src = graph.source
    if src is not None and "state_dict_keys" in src.extra:
        recorded: dict[str, str] = json.loads(src.extra["state_dict_keys"])
        return {k: v for k, v in recorded.items() if v in state_dict}
    params = graph.parameters()
    used: set[str] = set()
    out: dict[str, str] = {}
    for name in trainable:
        t = params[name].detach().cpu()
        found = None
        for key, v in state_dict.items():
            if key in used or not isinstance(v, Tensor) or v.shape != t.shape or not v.is_floating_point():
                continue
            if torch.equal(v.to(t.dtype), t):
                found = key
                break
        if found is None:
            raise UsageError(
                f"cannot map the model's parameter '{name}' back to a key of the weights file; "
                "the fine-tuned state_dict could not keep the input's keys"
            )
        used.add(found)
        out[name] = found
    return out


def save_like_input(
    graph: Graph,
    out: Path,
    *,
    weights: str | os.PathLike[str] | None = None,
    keys: dict[str, str] | None = None,
) -> Path:
    """Write `graph` (any device) to `out` in the input's format, atomically."""
    fmt = output_format(graph)
    check_out_suffix(fmt, out)
    g = graph.to("cpu", graph.dtype)  # Affine constants are float64 in memory: write the graph's dtype
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        from speccert.exporters.onnx_export import save_onnx

        return save_onnx(g, out)
    if fmt == "pt2":
        try:
            from speccert.importers.torch_import import save_pt2
        except ImportError:
            raise UsageError(
                "writing .pt2 needs speccert.importers.torch_import.save_pt2, which this installation lacks"
            ) from None
        save_pt2(g, out)
        return out
    if weights is None or keys is None:
        raise UsageError("a state_dict output needs the input weights file and its key map")
    sd = read_state_dict(weights)
    params = g.parameters()
    new = dict(sd)
    for name, key in keys.items():
        new[key] = params[name].detach().to(sd[key].dtype).reshape(sd[key].shape).clone()
    from speccert.training.checkpoint import atomic_save

    atomic_save(new, out)
    return out
