"""The README's support tables are generated from the registries and must not drift."""

from __future__ import annotations

from pathlib import Path

from speccert.support import BEGIN, END, support_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_support_block_is_current() -> None:
    text = README.read_text()
    assert BEGIN in text and END in text
    current = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert current == support_markdown(), "README support tables are stale: run `python -m speccert.support`"


def test_every_registry_entry_is_listed() -> None:
    from speccert.importers.onnx_ops import supported_onnx_ops
    from speccert.norms.method import load_methods
    from speccert.training.penalties import PENALTIES

    block = support_markdown()
    for op, _ in supported_onnx_ops():
        assert op in block
    for name in load_methods():
        assert f"`{name}`" in block
    for name in PENALTIES:
        assert f"`{name}`" in block
