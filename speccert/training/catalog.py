"""The penalties and recipes described for people, generated from their registries: `penalties.json`
(read by the CLI for `--penalty` help without importing torch, so `speccert --help` stays fast) and
the two tables of docs/finetune.md. `python -m speccert.training.catalog` rewrites all three;
tests/test_finetune_recipes.py fails when any is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CATALOG_JSON = Path(__file__).with_name("penalties.json")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "finetune.md"


def catalog_json() -> str:
    """{"penalties": [{name, summary, default_weight}, ...]} in registry order."""
    from speccert.training.penalties import PENALTIES

    rows = [
        {"name": k, "summary": v.summary, "default_weight": v.default_weight} for k, v in PENALTIES.items()
    ]
    return json.dumps({"penalties": rows}, indent=1, ensure_ascii=False) + "\n"


def read_catalog() -> list[dict[str, object]]:
    """The penalties as written in penalties.json (no torch import)."""
    rows: list[dict[str, object]] = json.loads(CATALOG_JSON.read_text(encoding="utf-8"))["penalties"]
    return rows


def penalty_help() -> str:
    """The `--penalty` help text of the CLI, from penalties.json."""
    return "Single penalty: " + "; ".join(f"{r['name']} = {r['summary']}" for r in read_catalog()) + "."


def _replace_table(text: str, header: str, table: str) -> str:
    """Replace the Markdown table starting with the line `header` by `table`."""
    start = text.index(header)
    end = start
    lines = text[start:].split("\n")
    for line in lines:
        if not line.startswith("|"):
            break
        end += len(line) + 1
    return text[:start] + table + "\n" + text[end:]


def docs_text() -> str:
    """docs/finetune.md with its penalties and recipes tables regenerated."""
    from speccert.training.penalties import penalty_table_markdown
    from speccert.training.recipes import recipe_table_markdown

    text = DOCS.read_text(encoding="utf-8")
    for table in (penalty_table_markdown(), recipe_table_markdown()):
        text = _replace_table(text, table.split("\n", 1)[0], table)
    return text


def main() -> int:
    CATALOG_JSON.write_text(catalog_json(), encoding="utf-8")
    DOCS.write_text(docs_text(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
