"""PyTorch import: `torch.export` archives (.pt2), TorchScript files, `package.module:factory` plus a
state_dict read with `weights_only=True`, and (only with `trust_pickle=True`) whole pickled modules.

Route (see `aten_ops/walk.py` for why): every source becomes a `torch.export.ExportedProgram`
- .pt2: `torch.export.load`;
- `nn.Module` (factory, trusted pickle, `from_module`): `torch.export.export` in eval mode;
- TorchScript: `torch.jit.load`, then torch's own TorchScript -> ExportedProgram converter
  (`torch._export.converter.TS2EPConverter`), which replays the scripted graph as ATen ops. It is a
  private torch API; if it cannot convert a construct (e.g. data-dependent control flow), the error
  says so and suggests saving with `torch.export` instead;
then it is converted op by op into the IR (`torch_module.convert`; decomposed to core ATen ops only
when some op has no converter), and the IR is checked against the original (eval mode) on seeded random inputs
(`torch_check.check_faithful`): max |IR - original| <= 1e-4 * max |original| + 1e-6.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from speccert.errors import InputError, UnsupportedModelError, UsageError
from speccert.importers.pt2_archive import load_exported
from speccert.importers.torch_check import TRACE_BATCH, check_faithful, first_line, quiet
from speccert.importers.torch_module import _has_mutation as _has_mutation  # re-exported (tests)
from speccert.importers.torch_module import convert, from_module
from speccert.importers.torch_safety import check_archive_sizes, no_code_unpickling
from speccert.ir.graph import Graph, ModelSource, file_sha256
from speccert.ir.ops import FIXED_METADATA, fixed_names, is_fixed

Tensor = torch.Tensor

PICKLE_REFUSED = (
    "{path} is a pickled Python object (torch.save of a whole model): unpickling it runs code stored in the "
    "file, so speccert refuses by default. Save the model with torch.export.save (.pt2) or torch.jit.save, "
    "or as a state_dict for 'package.module:factory' --weights; pass --trust-pickle only for a file you trust"
)


# ---- package.module:factory + state_dict -----------------------------------------------------------
def _safe_load(path: Path) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary code."""
    if not path.is_file():
        raise InputError(f"weights file not found: {path}")
    if zipfile.is_zipfile(path):
        check_archive_sizes(path)  # members' declared sizes, before torch.load inflates them
    try:
        with quiet():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(PICKLE_REFUSED.format(path=path)) from None
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, not a torch file
        raise InputError(f"cannot read {path} with torch.load: {first_line(exc)}") from None


def _state_dict_of(obj: Any, path: Path) -> dict[str, Tensor]:
    for key in (
        "state_dict",
        "model_state_dict",
        "model",
    ):  # a training checkpoint {"state_dict": ..., "epoch": ...}
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise InputError(f"{path} is not a state_dict (a mapping from parameter names to tensors)")
    return obj


def _load_state_dict(module: nn.Module, sd: dict[str, Tensor], path: Path) -> None:
    expected = set(module.state_dict())
    if sd and all(k.startswith("module.") for k in sd) and not expected & set(sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}  # saved from DistributedDataParallel
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        parts = ([f"missing {show(missing)}"] if missing else []) + (
            [f"unexpected {show(unexpected)}"] if unexpected else []
        )
        raise InputError(f"state_dict {path} does not match the model: {'; '.join(parts)}")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split("\n\t")[1:2]) or first_line(exc)
        raise InputError(f"state_dict {path} does not match the model: {detail.strip()}") from None


def _cwd_on_path() -> None:
    """A user's own package in the working folder must import, as it does with `python -m`."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def _import_factory(spec: str) -> Callable[[], Any]:
    mod_name, _, fn_name = spec.partition(":")
    _cwd_on_path()
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        raise InputError(
            f"cannot import '{mod_name}' for '{spec}': {exc} (run from the folder that holds the "
            "package, or install it)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - errors in the user's module
        raise InputError(f"importing '{mod_name}' for '{spec}' failed: {first_line(exc)}") from None
    factory = getattr(mod, fn_name, None)
    if factory is None or not callable(factory):
        raise InputError(f"'{mod_name}' has no callable '{fn_name}' (model spec '{spec}')")
    return factory  # type: ignore[no-any-return]


def load_factory(
    spec: str,
    weights: str | os.PathLike[str] | None,
    input_shape: tuple[int, ...] | None,
    *,
    check: bool = True,
    allow_unsupported: bool = False,
) -> Graph:
    """Build a model with `factory()` from 'package.module:factory', load `weights` (a state_dict read with
    `torch.load(weights_only=True)`; keys must match exactly) and convert it. `input_shape` is required.
    Without `weights`, the factory's own parameters are used."""
    if input_shape is None:
        raise UsageError(
            f"'{spec}' needs --input-shape (e.g. --input-shape 1,28,28): a Python factory does not "
            "say what input it takes"
        )
    factory = _import_factory(spec)
    try:
        module = factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise InputError(f"'{spec}()' raised {first_line(exc)}") from None
    if not isinstance(module, nn.Module):
        raise InputError(f"'{spec}()' returned {type(module).__name__}, not a torch.nn.Module")
    source = ModelSource(spec, "python")
    if weights is not None:
        wpath = Path(weights)
        _load_state_dict(module, _state_dict_of(_safe_load(wpath), wpath), wpath)
        source = ModelSource(str(wpath), "state_dict", file_sha256(wpath), {"factory": spec})
    return from_module(module, input_shape, check=check, allow_unsupported=allow_unsupported, source=source)


# ---- files ----------------------------------------------------------------------------------------
def detect_format(path: Path) -> str:
    """'pt2', 'torchscript', 'pickle' (torch.save zip or legacy pickle) from the file's layout."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:  # unreadable (permissions, I/O error): the file's problem, not an internal error
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not zipfile.is_zipfile(path):
        if head[:2] == b"PK":
            raise InputError(f"{path} is a truncated or corrupt zip archive")
        if head[:1] == b"\x80":
            return "pickle"
        raise InputError(f"{path} is not a PyTorch file (neither a zip archive nor a pickle)")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path} is a corrupt zip archive: {exc}") from None
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "pt2"
    if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
        check_archive_sizes(path)
        return "torchscript"
    if any(n.endswith("/data.pkl") for n in names):
        return "pickle"
    raise InputError(f"{path} is a zip archive but not one PyTorch writes (.pt2, TorchScript or torch.save)")


def _example_shape(
    ep: torch.export.ExportedProgram, user_shape: tuple[int, ...] | None, path: Path
) -> tuple[tuple[int, ...], int]:
    """(input shape without batch, trace batch) from the archive's input placeholder and example inputs."""
    phs = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = (
        [s.arg.name for s in ep.graph_signature.user_inputs_spec()]
        if hasattr(ep.graph_signature, "user_inputs_spec")
        else list(ep.graph_signature.user_inputs)
    )
    val = next((n.meta.get("val") for n in phs if n.name in user), None)
    if len(user) != 1 or not isinstance(val, Tensor):
        raise UnsupportedModelError(
            f"{path} takes {len(user)} inputs; speccert needs exactly one tensor input"
        )
    dims = list(val.shape)
    static = [d if isinstance(d, int) else None for d in dims]
    batch = static[0]
    ex = getattr(ep, "example_inputs", None)
    if batch is None and ex and isinstance(ex[0][0], Tensor):
        batch = int(ex[0][0].shape[0])
    batch = batch if batch is not None else TRACE_BATCH
    if user_shape is not None:
        if len(user_shape) != len(dims) - 1 or any(
            s is not None and s != u for s, u in zip(static[1:], user_shape, strict=True)
        ):
            want = [s if s is not None else "?" for s in static[1:]]
            raise UsageError(
                f"--input-shape {','.join(map(str, user_shape))} does not fit {path}, which takes {want} "
                "(without the batch axis)"
            )
        return user_shape, batch
    if any(s is None for s in static[1:]):
        raise UsageError(f"{path} has dynamic input dimensions {dims[1:]}: give --input-shape")
    return tuple(int(s) for s in static[1:]), batch  # type: ignore[arg-type]


def _load_pt2(
    path: Path,
    input_shape: tuple[int, ...] | None,
    check: bool,
    allow_unsupported: bool,
    trust_pickle: bool = False,
) -> Graph:
    check_archive_sizes(path)
    guard = contextlib.nullcontext() if trust_pickle else no_code_unpickling()
    extra = {FIXED_METADATA: ""}
    try:
        with quiet(), guard:
            ep = load_exported(str(path), extra)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path} is a torch.export archive holding pickled Python objects (weights, constants or example "
            "inputs); unpickling them could run code from the file, so speccert refuses by default. Re-save it "
            "with torch.export.save from plain tensors, or pass --trust-pickle only for a file you trust"
        ) from None
    except Exception as exc:  # noqa: BLE001 - corrupt or incompatible archive
        raise InputError(f"cannot read {path} as a torch.export archive: {first_line(exc)}") from None
    shape, batch = _example_shape(ep, input_shape, path)
    source = ModelSource(str(path), "pt2", file_sha256(path), _fixed_record(path, extra[FIXED_METADATA]))
    graph = convert(ep, shape, batch, allow_unsupported, source, share_constants=True)
    if check:
        module = ep.module()
        check_faithful(graph, module, batches=(batch, batch), what=f"{path.name} (torch.export)")
    return graph


def _fixed_record(path: Path, raw: Any) -> dict[str, str]:
    """The archive's record of fixed layers' weights (speccert's writer: an upsampling's constants), as
    ModelSource.extra; an InputError when it is not a JSON list of names."""
    if not raw:
        return {}
    names = fixed_names(raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))
    if names is None:
        raise InputError(f"{path}: its '{FIXED_METADATA}' record is not a JSON list of weight names")
    return {FIXED_METADATA: json.dumps(names)}


def _load_torchscript(
    path: Path, input_shape: tuple[int, ...] | None, check: bool, allow_unsupported: bool
) -> Graph:
    if input_shape is None:
        raise UsageError(
            f"{path} is a TorchScript file, which does not record its input shape: give --input-shape"
        )
    try:
        with quiet():
            sm = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot read {path} as a TorchScript file: {first_line(exc)}") from None
    x = torch.randn((TRACE_BATCH, *input_shape), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            sm(x)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(
            f"{path} does not accept input shape {list(input_shape)}: {first_line(exc)}"
        ) from None
    try:
        from torch._export.converter import TS2EPConverter

        with quiet():
            ep = TS2EPConverter(sm, (x,)).convert()
    except Exception as exc:  # noqa: BLE001 - a TorchScript construct without an ATen equivalent
        raise UnsupportedModelError(
            f"cannot convert TorchScript {path} to ATen ops ({first_line(exc)}); constructs such as "
            "data-dependent control flow cannot be converted: save the model with torch.export (.pt2) instead"
        ) from None
    source = ModelSource(str(path), "torchscript", file_sha256(path))
    graph = convert(ep, tuple(input_shape), TRACE_BATCH, allow_unsupported, source)
    if check:
        check_faithful(graph, sm, what=f"{path.name} (TorchScript)")
    return graph


def load_torch_file(
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...] | None = None,
    *,
    trust_pickle: bool = False,
    check: bool = True,
    allow_unsupported: bool = False,
) -> Graph:
    """Load a .pt2 archive, a TorchScript file or (with `trust_pickle`) a pickled whole module into a Graph.

    The format is told by the file's zip layout, not its suffix. `input_shape` (without the batch axis) is
    read from a .pt2's input when static and required otherwise. A pickled module is refused unless
    `trust_pickle`, since unpickling runs code from the file; a bare state_dict is refused with a hint to
    use 'package.module:factory' --weights.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    fmt = detect_format(path)
    if fmt == "pt2":
        return _load_pt2(path, input_shape, check, allow_unsupported, trust_pickle)
    if fmt == "torchscript":
        return _load_torchscript(path, input_shape, check, allow_unsupported)
    if not trust_pickle:
        try:
            with quiet():
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - anything beyond plain tensors: refuse without running it
            raise InputError(PICKLE_REFUSED.format(path=path)) from None
        if isinstance(obj, dict):
            raise InputError(
                f"{path} holds a state_dict (weights only), not a model: load it as "
                f"'package.module:factory' --weights {path}"
            )
        raise InputError(f"{path} holds a {type(obj).__name__}, not a model")
    _cwd_on_path()  # the pickled classes must be importable
    try:
        with quiet():
            obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"cannot unpickle {path}: {first_line(exc)}") from None
    if not isinstance(obj, nn.Module):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    if input_shape is None:
        raise UsageError(
            f"{path} is a pickled module, which does not record its input shape: give --input-shape"
        )
    return from_module(
        obj,
        input_shape,
        check=check,
        allow_unsupported=allow_unsupported,
        source=ModelSource(str(path), "pickle", file_sha256(path)),
    )


# ---- export ---------------------------------------------------------------------------------------
def save_pt2(graph: Graph, path: str | os.PathLike[str], example_batch: int = 2) -> Path:
    """Write `graph.to_torch()` as a `torch.export` archive (dynamic batch axis when torch can export it so,
    else fixed at `example_batch`); written to a temporary file first, then renamed."""
    path = Path(path)
    module = graph.to_torch().eval()
    fixed = {id(t) for n in graph.nodes if is_fixed(n.op) for t in n.op.parameters().values()}
    record = [name for name, t in module.named_buffers() if id(t) in fixed]
    x = torch.randn((example_batch, *graph.input_shape), generator=torch.Generator().manual_seed(0)).to(
        graph.dtype
    )
    with quiet():
        try:
            ep = torch.export.export(
                module, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},)
            )
        except Exception:  # noqa: BLE001 - some graphs specialise the batch; a fixed batch still loads
            ep = torch.export.export(module, (x,))
        tmp = path.with_name(f".{path.stem}.tmp.pt2")
        torch.export.save(ep, str(tmp), extra_files={FIXED_METADATA: json.dumps(record)} if record else None)
    tmp.replace(path)
    return path


__all__ = ["check_faithful", "detect_format", "from_module", "load_factory", "load_torch_file", "save_pt2"]
