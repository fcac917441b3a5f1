"""Importers: the only code that knows file formats. `load()` picks one by the file or spec given.

Formats: ONNX (`.onnx`); `torch.export` archives (`.pt2`); TorchScript (`.pt`/`.pth`/`.ts`/`.jit`
saved by `torch.jit.save`); `package.module:factory` plus a state_dict read with `weights_only=True`;
whole pickled modules only with `trust_pickle=True`.
"""

from __future__ import annotations

import os
from pathlib import Path

from speccert.errors import InputError, UsageError
from speccert.ir.graph import Graph

TORCH_SUFFIXES = (".pt2", ".pt", ".pth", ".ts", ".jit", ".ptl")


def parse_input_shape(text: str | None) -> tuple[int, ...] | None:
    """'1,28,28' -> (1, 28, 28): the input shape without the batch dimension."""
    if text is None or text == "":
        return None
    try:
        shape = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise UsageError(f"--input-shape must be integers separated by commas, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape must be positive integers (without the batch axis), got {text!r}")
    return shape


def is_factory_spec(spec: str) -> bool:
    """'pkg.module:factory' (a Python callable that builds the module), not a file path."""
    if os.path.exists(spec) or ":" not in spec:
        return False
    mod, _, fn = spec.partition(":")
    return bool(mod) and bool(fn) and "/" not in mod and "\\" not in mod and fn.isidentifier()


def _explain_factory_path(spec: str) -> None:
    """'mine/mynet.py:SmallNet' is a file path plus a factory name, which the factory form does not take."""
    mod, sep, fn = spec.rpartition(":")
    if not sep or not mod or not fn.isidentifier():
        return
    if mod.endswith(".py") or "/" in mod or "\\" in mod:
        dotted = mod.removesuffix(".py").replace("\\", "/").strip("/").replace("/", ".")
        raise UsageError(
            f"'{spec}' is not a model file; a Python model is named 'package.module:factory' with dots, not "
            f"a path: e.g. '{dotted}:{fn}', run from the folder that holds '{dotted.split('.')[0]}' (or "
            "with it installed), plus --weights STATE_DICT and --input-shape"
        )


def load(
    spec: str | os.PathLike[str],
    input_shape: tuple[int, ...] | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    check: bool = True,
    allow_unsupported: bool = False,
    random_weights: bool = False,
) -> Graph:
    """Load a model into the graph IR and check it computes what the original computes.

    >>> g = speccert.load("models/mlp.onnx")            # doctest: +SKIP
    >>> g.forward(torch.rand(4, *g.input_shape)).shape  # doctest: +SKIP

    `check` runs the faithfulness check (IR vs onnxruntime or the original module on random inputs).
    `allow_unsupported` returns graphs with `Opaque` nodes (for `inspect`) instead of raising
    UnsupportedModelError.
    A 'package.module:factory' spec needs `weights` (a state_dict); without them the factory's random
    initialisation would be certified, so that takes `random_weights=True`.
    """
    spec = os.fspath(spec)
    if not spec:  # Path("") is ".": it was reported as "model path is a folder"
        raise UsageError("MODEL: empty path (is the variable you passed set?)")
    if is_factory_spec(spec):
        from speccert.importers.torch_import import _import_factory, load_factory

        if weights is None and not random_weights and input_shape is not None:
            _import_factory(spec)  # a spec that does not import is the first thing to report
            raise UsageError(
                f"'{spec}' without --weights would be the factory's untrained, random initialisation: pass "
                "--weights STATE_DICT (the trained parameters), or --random-weights to use it on purpose "
                "(certify, inspect and norms)"
            )
        return load_factory(spec, weights, input_shape, check=check, allow_unsupported=allow_unsupported)
    path = Path(spec)
    exists = path.exists()
    if not exists:
        _explain_factory_path(spec)  # 'my_pkg/nets.py:Net': a path where the factory form was meant
    if weights is not None:  # silently ignored before: the file's own weights were certified
        raise UsageError(
            f"--weights {os.fspath(weights)}: only a 'package.module:factory' model takes a state_dict; "
            f"{spec} holds its own weights (leave --weights out)"
        )
    if not exists:
        raise InputError(f"model file not found: {spec}")
    if path.is_dir():
        raise InputError(f"model path is a folder, not a file: {spec}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from speccert.importers.onnx_import import load_onnx

        return load_onnx(path, input_shape, check=check, allow_unsupported=allow_unsupported)
    if suffix in TORCH_SUFFIXES:
        from speccert.importers.torch_import import load_torch_file

        return load_torch_file(
            path, input_shape, trust_pickle=trust_pickle, check=check, allow_unsupported=allow_unsupported
        )
    raise UsageError(
        f"cannot tell the format of {spec!r}: expected .onnx, .pt2, a TorchScript file "
        f"({', '.join(TORCH_SUFFIXES[1:])}) or 'package.module:factory' with --weights"
    )
