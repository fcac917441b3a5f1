"""`python -m speccert.gate.metrics [FILE]`: rewrite the generated metric table in docs/gate.md."""

from __future__ import annotations

import sys
from pathlib import Path

from speccert.gate.metrics import rewrite_docs

target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "docs" / "gate.md"
print(f"{target}: {'rewritten' if rewrite_docs(target) else 'up to date'}")  # noqa: T201
