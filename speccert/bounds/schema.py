"""The versioned JSON report schema (report.schema.json beside this file) and its validation.

SCHEMA_VERSION follows semantic versioning: a new optional field bumps the minor version, a removed or
renamed field the major version. Consumers (gate, finetune) check the major version.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from speccert.errors import InputError

SCHEMA_VERSION = "1.1.0"
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of certify reports."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return schema


def validate_report(report: dict[str, Any]) -> None:
    """Raise InputError (one line: the first problem and where) if `report` does not match the schema.

    Needs the `jsonschema` package (in the `test` extra)."""
    try:
        import jsonschema
    except ImportError:
        raise InputError(
            "validating a report needs the jsonschema package (pip install jsonschema)"
        ) from None
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(root)"
        raise InputError(f"report does not match schema {SCHEMA_VERSION} at {where}: {e.message}")
    major = str(report.get("schema_version", "")).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise InputError(
            f"report schema version {report.get('schema_version')} is not compatible with {SCHEMA_VERSION}"
        )
