"""Benchmarks: methods side by side, tightness and time."""

from __future__ import annotations

import typer

bench_app = typer.Typer(no_args_is_help=True)
