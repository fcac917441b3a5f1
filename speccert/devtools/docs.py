"""Executed docs: re-run every shell session shown in README.md and docs/*.md and compare its output.

A session is a fenced block with no language (or `console`) whose first line starts with `$ `. Each
`$ ` line is a command (continued by a trailing backslash, or by a heredoc up to its terminator); the
lines up to the next `$ ` are its output (stdout and stderr together). `echo $?` shows the exit code of
the command before it. The commands of one file run in order in one scratch folder that sees the
checkout's files (models/, docs/, ...) and `../shared/onnx-corpus` (SPECCERT_CORPUS when set), so a
session can build files for the next one without touching the checkout. `speccert` and `python` are
this interpreter.

Comparison masks what differs between machines or runs: timings ("2.31 s", a table column headed
`s`), throughputs ("18392 samples/s"), sha256 prefixes; numbers are compared to 1e-4 relative; table
borders and column padding are ignored. Anything else that differs is a stale document.

An HTML comment on the line before a block marks it: `<!-- docs: slow -->` (run only with --all: too
slow for CI's fast form) or `<!-- docs: skip REASON -->` (never run); `<!-- docs: setup CMD -->`
anywhere before a session runs CMD in the scratch folder first (e.g. `cp models/*.onnx .`). A fenced
block whose first line names a file (`# speccert.toml`) is written to the scratch folder under that
name before the next session, so the files a document shows are the files its commands use. A session that reads the ONNX
corpus is skipped, and counted, when the corpus is absent.

    python -m speccert.devtools.docs            # fast form: compare, print a summary, exit 1 on drift
    python -m speccert.devtools.docs --all      # also the slow blocks
    python -m speccert.devtools.docs --update   # rewrite the shown outputs from real runs (with --all: all)

`--update` keeps a command's shown output when the new run fails (exit != 0 and a first line
"error:"/"Traceback") but the document did not show a failure (an error, or a non-zero `echo $?` right
after the command): it prints the failure instead, so a missing file never becomes documentation.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!--\s*docs:\s*(slow|skip|setup)\b\s*(.*?)\s*-->\s*$")
FILE_NAME = re.compile(r"^(?:#|//|--)\s*([\w./-]+\.\w+)\s*$")
FENCE = re.compile(r"^(`{3,})\s*([\w-]*)\s*$")
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
TIMEOUT_S = 600


@dataclass
class Command:
    text: str  # the shell command, continuation lines and heredoc included
    first: int  # index in the file's lines of the command's first line
    out_start: int  # output lines are lines[out_start:out_end]
    out_end: int
    expected: list[str] = field(default_factory=list)


@dataclass
class Session:
    path: Path
    line: int  # 1-based line of the opening fence
    marker: str  # "", "slow" or "skip"
    reason: str
    commands: list[Command]
    setup: list[str] = field(default_factory=list)  # `<!-- docs: setup CMD -->` commands, run first
    files: dict[str, str] = field(default_factory=dict)  # blocks shown since the last session

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path}:{self.line}"

    @property
    def needs_corpus(self) -> bool:
        return any("onnx-corpus" in c.text for c in self.commands)


def doc_files(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _commands(lines: list[str], start: int, end: int) -> list[Command]:
    """The `$ ` commands of the block lines[start:end] with their output ranges."""
    cmds: list[Command] = []
    i = start
    while i < end:
        if not lines[i].startswith("$ "):
            i += 1
            continue
        first, text = i, [lines[i][2:]]
        tag = HEREDOC.search(lines[i])
        while text[-1].endswith("\\") and i + 1 < end:
            i += 1
            text.append(lines[i])
        if tag:
            while i + 1 < end and lines[i].strip() != tag.group(1):
                i += 1
                text.append(lines[i])
        i += 1
        out_start = i
        while i < end and not lines[i].startswith("$ "):
            i += 1
        cmds.append(Command("\n".join(text), first, out_start, i, lines[out_start:i]))
    return cmds


def parse(path: Path) -> list[Session]:
    """Every shell session in the markdown file `path`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    sessions: list[Session] = []
    files: dict[str, str] = {}
    setup: list[str] = []
    i = 0
    while i < len(lines):
        mk = MARKER.match(lines[i])
        if mk and mk.group(1) == "setup":
            setup.append(mk.group(2))
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and lines[j].rstrip() != m.group(1):
            j += 1
        named = FILE_NAME.match(lines[i + 1]) if i + 1 < j and m.group(2) else None
        if named:  # a block showing a file (`# speccert.toml` first): later sessions can use it
            files[named.group(1)] = "\n".join(lines[i + 1 : j]) + "\n"
        if m.group(2) in ("", "console") and i + 1 < j and lines[i + 1].startswith("$ "):
            mk = MARKER.match(lines[i - 1]) if i > 0 else None
            kind = mk.group(1) if mk and mk.group(1) != "setup" else ""
            sessions.append(
                Session(
                    path,
                    i + 1,
                    kind,
                    mk.group(2) if mk and kind else "",
                    _commands(lines, i + 1, j),
                    setup,
                    files,
                )
            )
            files, setup = {}, []
        i = j + 1
    return sessions


# ---- masking and comparison ---------------------------------------------------------------------
TIME = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?=\s?(?:s|ms|min)\b)")
RATE = re.compile(r"\d+(?:\.\d+)?(?=\s?(?:samples|steps|points)/s\b)")
SHA = re.compile(r"(sha256\s+)[0-9a-f]{8,64}")
TIME_COLUMNS = {"s", "seconds", "time", "time (s)", "throughput"}
BOX = re.compile(r"[\u2500-\u257f]")
TOKEN = re.compile(r"<t>|-?\d+(?:\.\d+)?(?:e[-+]?\d+)?|\w+|\S")


def _mask_columns(lines: list[str]) -> list[str]:
    """Mask the cells of rich-table columns whose header is a time (the `s` column of `norms`)."""
    out: list[str] = []
    cols: set[int] = set()
    for line in lines:
        if line.startswith("┃"):
            heads = [c.strip() for c in line.strip("┃").split("┃")]
            cols = {k for k, h in enumerate(heads) if h in TIME_COLUMNS}
        elif line.startswith("│") and cols:
            cells = line.strip("│").split("│")
            line = "│" + "│".join("<t>" if k in cols else c for k, c in enumerate(cells)) + "│"
        elif line.startswith("└"):
            cols = set()
        out.append(line)
    return out


def tokens(text: str) -> list[str]:
    """The comparable content of an output: masked, without borders and padding."""
    lines = _mask_columns(text.splitlines())
    masked = "\n".join(lines)
    masked = SHA.sub(r"\1<t>", masked)
    masked = RATE.sub("<t>", masked)
    masked = TIME.sub("<t>", masked)
    return TOKEN.findall(BOX.sub(" ", masked))


def _same(a: str, b: str, rtol: float) -> bool:
    if a == b:
        return True
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=rtol, abs_tol=1e-12)


def difference(expected: str, actual: str, rtol: float = 1e-4) -> str | None:
    """None when `actual` shows what `expected` shows (after masking), else where they first differ."""
    e, a = tokens(expected), tokens(actual)
    for k, (x, y) in enumerate(zip(e, a, strict=False)):
        if not _same(x, y, rtol):
            return f"token {k}: shown {' '.join(e[max(0, k - 6) : k + 4])!r}, got {' '.join(a[max(0, k - 6) : k + 4])!r}"
    if len(e) != len(a):
        extra = e[len(a) :] if len(e) > len(a) else a[len(e) :]
        which = "shown but not printed" if len(e) > len(a) else "printed but not shown"
        return f"{which}: {' '.join(extra[:12])!r}"
    return None


# ---- running ------------------------------------------------------------------------------------
def corpus_dir() -> Path:
    return Path(os.environ.get("SPECCERT_CORPUS", REPO.parent / "shared" / "onnx-corpus"))


def scratch(base: Path) -> Path:
    """A folder `base/repo` that sees the checkout's top-level entries (symlinks) and `../shared`."""
    work = base / "repo"
    work.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name not in (".git", ".venv") and not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    if corpus_dir().is_dir():
        (base / "shared").mkdir()
        (base / "shared" / "onnx-corpus").symlink_to(corpus_dir())
    bin_dir = base / "bin"
    bin_dir.mkdir()
    for name, target in (("speccert", f'"{sys.executable}" -m speccert'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python3").symlink_to(bin_dir / "python")
    return work


def _env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{base / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"  # stdout and stderr interleave as written
    env["COLUMNS"] = "160"
    env["SPECCERT_PROGRESS_EVERY"] = "inf"  # a progress line in a log depends on the machine's speed
    env.pop("SPECCERT_DEBUG", None)
    return env


def prepare(session: Session, work: Path) -> None:
    """Write the files shown before the session and run its setup commands (even when it is skipped:
    later sessions may need them)."""
    for name, text in session.files.items():
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    for cmd in session.setup:
        subprocess.run(["bash", "-c", cmd], cwd=work, env=_env(work.parent), timeout=TIMEOUT_S, check=False)


def run_session(session: Session, work: Path) -> list[tuple[Command, str, int]]:
    """Run each command of `session` in `work`; (command, output, exit code) per command."""
    results: list[tuple[Command, str, int]] = []
    last = 0
    for cmd in session.commands:
        if cmd.text.strip() == "echo $?":
            out, rc = f"{last}\n", 0
        else:
            proc = subprocess.run(
                ["bash", "-c", cmd.text],
                cwd=work,
                env=_env(work.parent),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
            out, rc = proc.stdout, proc.returncode
            last = rc
        results.append((cmd, out, rc))
    return results


def _failed(out: str, rc: int) -> bool:
    first = next((ln for ln in out.splitlines() if ln.strip()), "")
    return rc != 0 and (first.startswith(("error:", "internal error:", "Traceback")) or not first)


def _shows_failure(results: list[tuple[Command, str, int]], k: int) -> bool:
    """The document expects command k to fail: an `echo $?` right after it shows a non-zero code."""
    if k + 1 >= len(results):
        return False
    nxt = results[k + 1][0]
    return nxt.text.strip() == "echo $?" and nxt.expected[:1] not in ([], ["0"])


@dataclass
class Outcome:
    session: Session
    skipped: str = ""  # why, when not run
    problems: list[str] = field(default_factory=list)
    updates: dict[int, list[str]] = field(default_factory=dict)  # out_start -> new output lines
    seconds: float = 0.0


def check_session(session: Session, work: Path, run_slow: bool, update: bool) -> Outcome:
    prepare(session, work)
    if session.marker == "skip":
        return Outcome(session, f"marked skip ({session.reason or 'no reason given'})")
    if session.marker == "slow" and not run_slow:
        return Outcome(session, "slow (run with --all)")
    if session.needs_corpus and not corpus_dir().is_dir():
        return Outcome(session, f"needs the ONNX corpus (not found at {corpus_dir()}; set SPECCERT_CORPUS)")
    outcome = Outcome(session)
    t0 = time.perf_counter()
    results = run_session(session, work)
    outcome.seconds = time.perf_counter() - t0
    for k, (cmd, out, rc) in enumerate(results):
        shown = "\n".join(cmd.expected)
        new = [ln.rstrip() for ln in out.rstrip("\n").splitlines()]
        if update:
            if _failed(out, rc) and not (_failed(shown, 1 if shown else 0) or _shows_failure(results, k)):
                outcome.problems.append(
                    f"`{cmd.text.splitlines()[0]}` failed (kept the shown output): {out.strip()[:300]}"
                )
            else:
                outcome.updates[cmd.out_start] = new
            continue
        diff = difference(shown, out)
        if diff is not None:
            outcome.problems.append(f"`{cmd.text.splitlines()[0]}` (exit {rc}): {diff}")
    return outcome


def apply_updates(path: Path, outcomes: list[Outcome]) -> bool:
    """Write the new outputs into `path`; True when the file changed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    spans = sorted(
        (
            (c.out_start, c.out_end, o.updates[c.out_start])
            for o in outcomes
            for c in o.session.commands
            if c.out_start in o.updates
        ),
        reverse=True,
    )
    new_lines = list(lines)
    for start, end, new in spans:
        keep_blank = end > start and lines[end - 1] == "" and end < len(lines) and lines[end].startswith("$ ")
        new_lines[start:end] = new + ([""] if keep_blank else [])
    if new_lines == lines:
        return False
    path.write_text("\n".join(new_lines) + "\n", encoding="utf-8")
    return True


def check_file(path: Path, run_slow: bool = False, update: bool = False) -> Iterator[Outcome]:
    """Run every session of one document in a fresh scratch folder, in order."""
    with tempfile.TemporaryDirectory(prefix="speccert-docs-") as tmp:
        work = scratch(Path(tmp))
        outcomes = [check_session(s, work, run_slow, update) for s in parse(path)]
    if update:
        apply_updates(path, outcomes)
    yield from outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m speccert.devtools.docs", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md and docs/*.md)")
    ap.add_argument("--all", action="store_true", help="also run the blocks marked slow")
    ap.add_argument("--update", action="store_true", help="rewrite the shown outputs from real runs")
    args = ap.parse_args(argv)
    ran, skipped, failed = 0, 0, 0
    for path in args.files or doc_files():
        for o in check_file(path.resolve(), run_slow=args.all, update=args.update):
            if o.skipped:
                skipped += 1
                print(f"skip {o.session.name}: {o.skipped}")
                continue
            ran += 1
            print(f"{'ok  ' if not o.problems else 'FAIL'} {o.session.name} ({o.seconds:.1f} s)")
            for p in o.problems:
                failed += 1
                print(f"{'FAIL' if not args.update else 'kept'} {o.session.name}: {p}")
    verb = "updated" if args.update else "checked"
    print(f"{ran} sessions {verb}, {skipped} skipped, {failed} problem(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
