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
        self.problems = list(problems or [])
        if self.problems:
            listing = "; ".join(f"{op} node '{name}': {why}" for op, name, why in self.problems)
            message = f"{message}: {listing}"
        super().__init__(message)


class InputError(SpeccertError):
    """A file (model, weights, data, report) is missing, unreadable, corrupt or invalid."""

    exit_code = EXIT_INPUT


class InternalError(SpeccertError):
    """A bug in speccert, e.g. an attack broke a certificate or an import is not faithful."""

    exit_code = EXIT_INTERNAL
