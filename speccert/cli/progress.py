"""Progress of long commands on stderr: rich's transient bars on a terminal; in logs and pipes (CI jobs,
`2> log`), where a bar cannot draw and used to leave nothing at all, one plain line at most every
SPECCERT_PROGRESS_EVERY seconds (default 30; 0: every update; inf: never), the first only after that
long, so a short run prints nothing. A line says what runs and for how long:

    speccert certify: local 16/48, ~4m 20s left (2m 10s elapsed)

Stage and layer names are user text (node names from the model file): printed literally, never read as
console markup (speccert.cli.console).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from speccert.cli.console import err
from speccert.errors import UsageError

EVERY_ENV = "SPECCERT_PROGRESS_EVERY"
DEFAULT_EVERY = 30.0


def progress_every() -> float:
    """Seconds between two progress lines in a log: SPECCERT_PROGRESS_EVERY (>= 0), else 30."""
    raw = os.environ.get(EVERY_ENV, "").strip()
    if not raw:
        return DEFAULT_EVERY
    try:
        every = float(raw)
    except ValueError:
        every = math.nan
    if math.isnan(every) or every < 0:
        raise UsageError(
            f"{EVERY_ENV}={raw!r}: expected seconds between progress lines, a number >= 0 (inf: none)"
        )
    return every


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h {s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


class LogLines:
    """`tell(text)` prints "label: text (elapsed)" on stderr when `every` seconds have passed since the
    start or the last line, and the text is not the last line's; otherwise nothing."""

    def __init__(self, label: str, every: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.label = label
        self.every = progress_every() if every is None else every
        self.clock = clock
        self.start = self.last = clock()
        self.said = ""
        self.stages: dict[str, tuple[float, int]] = {}  # stage -> (when first told, done then)

    def tell(self, text: str) -> None:
        now = self.clock()
        if now - self.last < self.every or text == self.said:
            return
        self.last, self.said = now, text
        err.print(f"{self.label}: {text} ({_clock(now - self.start)} elapsed)", highlight=False)

    def count(self, stage: str, done: int, total: int) -> None:
        """tell "stage done/total", with the time left at the stage's rate so far once it has one."""
        t0, done0 = self.stages.setdefault(stage, (self.clock(), done))
        text = f"{stage} {done}/{total}"
        rate = (done - done0) / max(self.clock() - t0, 1e-9)
        if 0 < done < total and rate > 0:
            text += f", ~{_clock((total - done) / rate)} left"
        self.tell(text)


def log_lines(label: str) -> LogLines | None:
    """LogLines for `label` where stderr is not a terminal (a bar draws there instead), else None."""
    return None if err.is_terminal else LogLines(label)


@contextmanager
def stage_progress(label: str) -> Iterator[Callable[[str, int, int], None]]:
    """Yields progress(stage, done, total): one transient bar per stage on a terminal, LogLines in logs."""
    lines = log_lines(label)
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=lines is not None,  # a finished bar leaves a blank line in logs and pipes
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if lines is not None:
                lines.count(stage, done, total)
                return
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress


@contextmanager
def layer_progress(label: str) -> Iterator[Callable[[int, int, str], None]]:
    """A transient bar on stderr over the layers of one model (LogLines in logs); the callback is
    `layer_norms`'s `progress` (layer i of n, and what runs inside it now)."""
    lines = log_lines(label)
    with Progress(
        TextColumn(escape(label)),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=lines is not None,
    ) as bar:
        task = bar.add_task("", total=None)

        def progress(i: int, n: int, text: str) -> None:
            if lines is not None:
                lines.tell(f"layer {min(i + 1, n)}/{n}" + (f": {text}" if text else ""))
                return
            bar.update(task, completed=i, total=n, description=escape(text))

        yield progress
