"""(not yet written)"""

from __future__ import annotations

from speccert.errors import UsageError


def command() -> None:
    raise UsageError("'inspect' is not available yet")
