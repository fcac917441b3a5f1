"""Benchmarks: norm methods side by side, tightness and time (`speccert bench norms`); certify figures and
throughput per model (`speccert bench certify`)."""

from __future__ import annotations

import typer

from speccert.cli.bench_certify_cmd import certify_bench
from speccert.cli.bench_norms_cmd import bench_graph, norms, summarise
from speccert.cli.common import short_help

__all__ = ["bench_app", "bench_graph", "certify_bench", "norms", "summarise"]

bench_app = typer.Typer(no_args_is_help=True)
bench_app.command("norms", short_help=short_help(norms.__doc__))(norms)
bench_app.command("certify", short_help=short_help(certify_bench.__doc__))(certify_bench)
