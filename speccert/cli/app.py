"""`speccert` console script. Each command lives in its own module; this file wires them and maps
SpeccertError subclasses to one styled line on stderr and the documented exit code."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Annotated

import typer

from speccert import __version__
from speccert.errors import EXIT_INPUT, EXIT_INTERNAL, SpeccertError

EXIT_INTERRUPTED = 130  # the shell's code for a process ended by SIGINT (Ctrl-C)
EXIT_CODES_HELP = (
    "Exit codes: 0 success (gate passed), 1 gate/target failed, 2 usage error, 3 model not supported, "
    "4 input file unreadable or invalid, 5 internal error (including a certificate broken by the audit), "
    "130 interrupted (Ctrl-C)."
)

app = typer.Typer(
    name="speccert",
    help="Certify the L2 robustness of neural networks with sound spectral-norm bounds, and fine-tune "
    "them until a certificate holds.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"speccert {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version.", metavar=""),
    ] = False,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            help="Memory budget, e.g. 8G (default: SPECCERT_MAX_MEMORY, else half the available memory). "
            "Files declaring more are refused; a norm method or certificate that would need more falls "
            "back to a cheaper sound bound, with a note. Goes before the command: speccert --max-memory "
            "8G certify ...",
        ),
    ] = None,
) -> None:
    from speccert.limits import set_max_memory

    set_max_memory(max_memory)  # None: the default (each run of main starts from it)


def _register() -> None:
    from speccert.cli import bench_cmd, certify_cmd, finetune_cmd, gate_cmd, inspect_cmd, norms_cmd
    from speccert.cli.common import short_help

    for name, cmd in (
        ("inspect", inspect_cmd),
        ("norms", norms_cmd),
        ("certify", certify_cmd),
        ("finetune", finetune_cmd),
        ("gate", gate_cmd),
    ):
        app.command(name, help=cmd.__doc__, short_help=short_help(cmd.__doc__))(cmd.command)
    app.add_typer(
        bench_cmd.bench_app, name="bench", help=bench_cmd.__doc__, short_help=short_help(bench_cmd.__doc__)
    )


_register()


def _one_line_warning(  # noqa: PLR0913 - the signature of warnings.showwarning
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: object = None,
    line: str | None = None,
) -> None:
    """A Python warning from a library (numpy, torch) as one styled line, not a source excerpt."""
    from speccert.cli.console import err, styled

    err.print(
        styled("[yellow]warning:[/] {}", str(message).splitlines()[0] if str(message) else category.__name__)
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning library errors into one line and an exit code."""
    from speccert.cli.console import err, styled

    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into a silent Exit(130): say why the run ended
            err.print("interrupted")
        return code if isinstance(code, int) else (0 if code is None else 1)
    except SpeccertError as exc:
        err.print(styled("[bold red]error:[/] {}", exc), highlight=False)
        return exc.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return EXIT_INTERRUPTED
    except OSError as exc:  # a file the system would not read or write (EACCES, EIO, ENOSPC): not a bug
        where = f"{exc.filename}: " if exc.filename else ""
        err.print(styled("[bold red]error:[/] {}{}", where, exc.strerror or exc), highlight=False)
        return EXIT_INPUT
    except Exception as exc:  # a bug: keep the user's screen clean unless asked for details
        if os.environ.get("SPECCERT_DEBUG"):
            raise
        err.print(
            styled(
                "[bold red]internal error:[/] {}: {} (set SPECCERT_DEBUG=1 for a traceback)",
                type(exc).__name__,
                exc,
            ),
            highlight=False,
        )
        return EXIT_INTERNAL
    finally:
        warnings.showwarning = shown
    return 0


def run() -> None:
    from speccert.cli.pipe import ReaderTolerantStdout

    if sys.stdout is not None:
        sys.stdout = ReaderTolerantStdout(sys.stdout)  # type: ignore[assignment]
    sys.exit(main())
