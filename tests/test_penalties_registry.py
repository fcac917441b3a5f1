"""The penalties registry: duplicate keys refused, unknown names a UsageError, docs table generated from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from speccert.errors import UsageError
from speccert.training.penalties import PENALTIES, make_penalty, penalty_table_markdown
from speccert.training.penalties.base import Penalty
from speccert.training.toy import toy_mlp

DOCS = Path(__file__).resolve().parents[1] / "docs" / "finetune.md"


def test_duplicate_registration_raises() -> None:
    with pytest.raises(KeyError, match="already registered"):
        PENALTIES.register("spectral")(Penalty)


def test_unknown_penalty_and_bad_options_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="choose one of: curvature, fantastic4"):
        make_penalty("nope", toy_mlp())
    with pytest.raises(UsageError):
        make_penalty("lmt", toy_mlp(), form="diagonal")
    with pytest.raises(UsageError):
        make_penalty("spectral", toy_mlp(), conv_mode="fft")
    with pytest.raises(UsageError):
        make_penalty("spectral", toy_mlp(), weight=-1.0)


def test_docs_table_is_the_registry() -> None:
    assert penalty_table_markdown() in DOCS.read_text()


@pytest.mark.parametrize("name", PENALTIES.keys())
def test_every_penalty_documents_itself(name: str) -> None:
    cls = PENALTIES.get(name)
    assert cls.name == name and cls.summary and cls.__doc__
    assert (cls.__module__.rsplit(".", 1)[-1] == name) or name == "none"


def test_cli_help_lists_every_registered_penalty(capsys: pytest.CaptureFixture[str]) -> None:
    from speccert.cli.app import main

    assert main(["finetune", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for name in PENALTIES:
        assert name in text
