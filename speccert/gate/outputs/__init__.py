"""The registry of gate output formats (JUnit XML, Markdown, ...): each renders a GateResult to text.
A new format is one module in this package with one `@register_output` function.

`append` says how the file is written: Markdown appends, so `--markdown "$GITHUB_STEP_SUMMARY"` adds to
the job summary other steps wrote; JUnit replaces the file (atomically).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from speccert.errors import UsageError
from speccert.registry import Registry

if TYPE_CHECKING:
    from speccert.gate.workflow import GateResult

Renderer = Callable[["GateResult"], str]


@dataclass(frozen=True)
class Output:
    name: str
    render: Renderer
    append: bool


OUTPUTS: Registry[str, Output] = Registry("gate output format")


def register_output(name: str, *, append: bool) -> Callable[[Renderer], Renderer]:
    def deco(fn: Renderer) -> Renderer:
        OUTPUTS.add(name, Output(name, fn, append))
        return fn

    return deco


def load_outputs() -> Registry[str, Output]:
    """The registry with every format of this package registered: each module of speccert/gate/outputs/
    is one format (imported on first use, so `speccert --help` stays fast)."""
    return OUTPUTS.load_package(__name__)


def write_output(name: str, result: GateResult, target: str | os.PathLike[str]) -> None:
    """Render `result` in format `name` and write it to `target` (append or replace, as the format says)."""
    out = load_outputs().get(name)
    text = out.render(result)
    path = Path(target)
    if path.is_dir():
        raise UsageError(f"--{name} {target}: is a folder")
    try:
        if out.append:
            with path.open("a", encoding="utf-8") as f:
                f.write(text)
        else:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
    except OSError as exc:
        raise UsageError(f"cannot write --{name} {target}: {exc.strerror or exc}") from None
