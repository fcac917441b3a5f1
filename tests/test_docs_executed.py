"""The docs are executed: every shell session in README.md and docs/*.md is re-run and its shown output
compared with the real one (speccert.devtools.docs; `--update` rewrites the outputs). Sessions marked
slow run only with `python -m speccert.devtools.docs --all`; the skipped ones are counted here."""

from __future__ import annotations

from pathlib import Path

import pytest

from speccert.devtools import docs

REPO = Path(__file__).resolve().parents[1]

TABLE = """\
┏━━━━━━┳━━━━━━━┳━━━━━━┓
┃ name ┃ upper ┃    s ┃
┡━━━━━━╇━━━━━━━╇━━━━━━┩
│ c1   │ 1.5   │ 0.02 │
└──────┴───────┴──────┘
time 2.31 s (norms 1.74 s); 18392 samples/s   sha256 0e1732bfebe16a87…
"""


def test_masking_ignores_timings_widths_and_hashes() -> None:
    other = (
        TABLE.replace("0.02", "12.50")
        .replace("━━━━━━┓", "━━━━━━━┓")
        .replace("2.31 s", "9 s")
        .replace("18392", "7")
        .replace("0e1732bfebe16a87", "ffffffffffffffff")
    )
    assert docs.difference(TABLE, other) is None
    assert docs.difference("upper 1.39417", "upper 1.394171") is None  # last-digit noise: 1e-4 relative


@pytest.mark.parametrize(
    ("old", "new"),
    [("1.5", "1.6"), ("c1", "c2"), ("upper 1.44673", "upper 1.4565"), ("73.70%", "73.60%")],
)
def test_a_stale_figure_is_a_difference(old: str, new: str) -> None:
    text = TABLE + "upper 1.44673 certified 73.70%\n"
    assert docs.difference(text, text.replace(old, new, 1)) is not None
    assert docs.difference(text, text + "one more line\n") is not None


def test_update_rewrites_outputs_but_never_writes_a_failure(tmp_path: Path) -> None:
    md = tmp_path / "d.md"
    md.write_text(
        "text\n\n```toml\n# greeting.txt\nhello from a file\n```\n\n"
        "```\n$ cat greeting.txt\nstale\n$ echo two; echo $((1+1))\nold\n$ false\n$ echo $?\n0\n```\n\n"
        "<!-- docs: skip needs a GPU -->\n```\n$ nvidia-smi\nGPU 0\n```\n"
        "```\n$ speccert inspect no_such_model.onnx\nshown\n```\n",
    )
    outcomes = list(docs.check_file(md))
    assert [bool(o.problems) for o in outcomes] == [True, False, True] and outcomes[1].skipped
    outcomes = list(docs.check_file(md, update=True))
    text = md.read_text()
    assert "$ cat greeting.txt\n# greeting.txt\nhello from a file\n$ echo two" in text
    assert "two\n2\n$ false\n$ echo $?\n1\n```" in text
    assert "GPU 0" in text and "shown" in text  # skipped, and a failing run that showed success: kept
    assert outcomes[2].problems and "failed" in outcomes[2].problems[0]
    assert all(not o.problems for o in list(docs.check_file(md))[:2])


@pytest.mark.parametrize("path", docs.doc_files(REPO), ids=lambda p: p.name)
def test_docs_show_real_output(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = list(docs.check_file(path))
    skipped = [f"{o.session.name}: {o.skipped}" for o in outcomes if o.skipped]
    with capsys.disabled():
        if skipped:
            print(f"\n{path.name}: {len(skipped)} session(s) skipped: " + "; ".join(skipped))
    problems = [f"{o.session.name}: {p}" for o in outcomes for p in o.problems]
    assert not problems, (
        "stale docs (python -m speccert.devtools.docs --update rewrites them):\n" + "\n".join(problems)
    )
