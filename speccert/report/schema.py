"""Moved to speccert.bounds.schema (the certify result and its schema sit below the renderers); this
name is kept so imports of the old path keep working."""

from speccert.bounds.schema import SCHEMA_PATH, SCHEMA_VERSION, load_schema, validate_report

__all__ = ["SCHEMA_PATH", "SCHEMA_VERSION", "load_schema", "validate_report"]
