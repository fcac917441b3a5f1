"""Where the benchmarks find their models: the checkout's root and the VNN-COMP ONNX corpus beside it."""

from __future__ import annotations

from pathlib import Path

from speccert.cli.common import err

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = REPO.parent / "shared" / "onnx-corpus"


def corpus_folder(option: Path | None) -> Path:
    """--corpus, else $SPECCERT_CORPUS, else ../shared/onnx-corpus beside the checkout."""
    import os

    return option or Path(os.environ.get("SPECCERT_CORPUS") or DEFAULT_CORPUS)


def missing_corpus_note(folder: Path, what: str) -> None:
    err.print(
        f"note: ONNX corpus not found at {folder} (set --corpus or SPECCERT_CORPUS; see README.md); {what}",
        highlight=False,
    )
