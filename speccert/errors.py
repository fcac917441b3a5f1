"""Errors the library raises. The CLI maps each to one line on stderr and an exit code.

Exit codes (documented in the README and `speccert --help`):
    0 success / gate passed, 1 gate or target failed, 2 usage error, 3 model not supported,
    4 input file unreadable or invalid, 5 internal error (including a failed certificate audit).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNSUPPORTED = 3
EXIT_INPUT = 4
EXIT_INTERNAL = 5


class SpeccertError(Exception):
    """Base class of every error speccert raises on purpose."""

    exit_code: int = EXIT_INTERNAL


class UsageError(SpeccertError):
    """The user asked for something inconsistent: bad option, wrong input shape, bad policy."""

    exit_code = EXIT_USAGE


class UnsupportedModelError(SpeccertError):
    """The model has operators speccert cannot import or cannot bound.

    `problems` lists every offending node as (op_type, node_name, reason), all at once.
    """

    exit_code = EXIT_UNSUPPORTED

    def __init__(self, message: str, problems: list[tuple[str, str, str]] | None = None) -> None:
        self.problems = group_problems(list(problems or []))
        if self.problems:
            message = f"{message}: {describe_problems(self.problems)}"
        super().__init__(message)


Problem = tuple[str, str, str]
SHOWN = 3


def group_problems(problems: list[Problem]) -> list[Problem]:
    """One entry per (op, reason) in first-seen order; several nodes become 'op ×n' and the first
    SHOWN names followed by 'and k more'. Already grouped entries pass through unchanged."""
    groups: dict[tuple[str, str], list[str]] = {}
    for op, name, why in problems:
        groups.setdefault((op, why), []).append(name)
    out: list[Problem] = []
    for (op, why), names in groups.items():
        if len(names) == 1:
            out.append((op, names[0], why))
            continue
        shown = ", ".join(names[:SHOWN]) + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")
        out.append((f"{op} ×{len(names)}", shown, why))
    return out


def describe_problems(problems: list[Problem]) -> str:
    """The problems as one line, one entry per kind of node."""
    return "; ".join(_describe(op, name, why) for op, name, why in group_problems(problems))


def _describe(op: str, names: str, why: str) -> str:
    """One problem as text: "Sign node 'f': ..." for one node, "Mul ×12 nodes (a, b, c and 9 more): ..."
    for a group of nodes of one kind (importers/problems.py groups them)."""
    if " ×" in op:
        return f"{op} nodes ({names}): {why}"
    return f"{op} node '{names}': {why}"


class InputError(SpeccertError):
    """A file (model, weights, data, report) is missing, unreadable, corrupt or invalid."""

    exit_code = EXIT_INPUT


class InternalError(SpeccertError):
    """A bug in speccert, e.g. an attack broke a certificate or an import is not faithful."""

    exit_code = EXIT_INTERNAL
