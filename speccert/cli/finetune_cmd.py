"""(not yet written)"""

from __future__ import annotations

from speccert.errors import UsageError


def command() -> None:
    raise UsageError("'finetune' is not available yet")
