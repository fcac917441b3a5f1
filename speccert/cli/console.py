"""The CLI's consoles, built so that user text can never be read as rich console markup.

Rich parses "[...]" in every printed string, table cell and title as markup: a model named
`net[best].onnx` lost its "[best]", `--eps inf` lost its value ("got [inf]") and a path containing
`[/v2]` raised MarkupError (a traceback, and an exit code a CI pipeline reads as a failed gate). So the
consoles here parse nothing (`markup=False`, `emoji=False`): a plain `str` is always printed as
written, wherever it comes from. Styling is opt-in and explicit: `styled(template, *values)` parses
only the template (a literal in our source) and escapes every value, and `Text(...)` cells carry a
style without markup. Rich widgets that parse markup themselves (Progress text columns, status
spinners) get `Text` objects or `markup=False` columns.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

__all__ = ["SafeConsole", "err", "make_console", "out", "styled"]


class SafeConsole(Console):
    """A rich Console that prints strings literally: no markup, no :emoji: codes."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        super().__init__(**kwargs)


def styled(template: str, *values: object) -> Text:
    """Rich text from a markup `template` (a literal in our code) with `{}` slots filled by `values`.

    Only the template is markup: each value is escaped first, so "[/v2]" or "[plot]" in a value prints
    as written. Example: ``styled("[bold red]error:[/] {}", message)``.
    """
    return Text.from_markup(template.format(*(escape(str(v)) for v in values)), emoji=False)


def make_console(**kwargs: Any) -> SafeConsole:
    """A further console (e.g. a wider one for a pipe) with the same literal-text rules."""
    return SafeConsole(**kwargs)


# Results go to stdout; progress and errors to stderr, so `--json -` output stays parseable.
# Piped or redirected output (CI logs, files) gets a wide fixed width instead of rich's 80 columns, so
# tables are not folded into unreadable cells; COLUMNS still wins when set.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
out = SafeConsole(soft_wrap=True, width=_WIDTH)
err = SafeConsole(stderr=True, soft_wrap=True)
