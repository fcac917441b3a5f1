"""Output paths are checked before any work starts: never after a long run, never over the user's files.

`check_outputs` refuses, each with one line and before the model is even loaded:

- an empty path (an unset variable such as $GITHUB_STEP_SUMMARY): exit 2;
- `-` for an option that writes a file (only `--json` can go to stdout; `--plot -`, `--junit -`
  and `--markdown -` used to create a file named "-"): exit 2;
- an output that is one of the command's inputs (`--json` equal to the model, `--markdown` appending
  to the data, `--junit` over the baseline): the input would be destroyed; exit 2, as finetune's
  `--out` does. Each command names its inputs (MODEL, --data, --val, --weights, --policy, --baseline;
  the gate adds the paths its policy file names);
- two outputs on one path (`--json r.json --junit r.json`: one report would replace the other): exit 2;
- a folder, a missing folder or an unwritable folder: exit 4.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from speccert.errors import InputError, UsageError

PathArg = str | os.PathLike[str] | None
STDOUT_OPTIONS = frozenset({"--json"})  # the options that take '-' for stdout


def _same(a: Path, b: Path) -> bool:
    """True when `a` and `b` are one file (symlinks and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_inputs(targets: Mapping[str, PathArg], inputs: Mapping[str, PathArg]) -> None:
    """UsageError when an output path is an existing input file (writing it would destroy the input)."""
    for opt, target in targets.items():
        if target is None or str(target) in ("", "-"):
            continue
        for what, source in inputs.items():
            if source is None or str(source) in ("", "-") or not Path(source).is_file():
                continue
            if _same(Path(target), Path(source)):
                raise UsageError(
                    f"{opt} {target} is the {what} file {source}; refusing to overwrite the input "
                    "(write the output elsewhere)"
                )


def _check_distinct(targets: Mapping[str, PathArg]) -> None:
    seen: dict[str, str] = {}
    for opt, target in targets.items():
        if target is None or str(target) in ("", "-"):
            continue
        key = os.path.realpath(target)
        if key in seen:
            raise UsageError(f"{seen[key]} and {opt} both write {target}: give each output its own path")
        seen[key] = opt


def check_outputs(
    targets: Mapping[str, PathArg],
    create_folders: frozenset[str] = frozenset(),
    inputs: Mapping[str, PathArg] | None = None,
) -> None:
    """Refuse an unusable output path before any work starts (not after a long run, as exit 5).

    `targets` maps an option ('--json') to its path (None: not given; '-': stdout, for --json). A
    missing folder is exit 4, except for options in `create_folders` (finetune's --out makes its
    folder), which need the nearest existing folder above them to be writable. `inputs` maps the
    command's input files (as the user wrote them: 'MODEL', '--data') to their paths. See the module doc.
    """
    for opt, target in targets.items():
        if target is None:
            continue
        if str(target) == "-":
            if opt not in STDOUT_OPTIONS:
                raise UsageError(f"{opt} -: {opt} writes a file; only --json can write to stdout ('-')")
            continue
        if str(target) == "":
            raise UsageError(
                f"{opt}: empty path (is the variable you passed, e.g. $GITHUB_STEP_SUMMARY, set?)"
            )
        path = Path(target)
        if path.is_dir():
            raise InputError(f"{opt} {target}: is a folder, not a file")
        folder = path.parent
        if opt in create_folders:
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
        if not folder.is_dir():
            raise InputError(f"{opt} {target}: folder {path.parent} does not exist")
        if not os.access(folder, os.W_OK):
            raise InputError(f"{opt} {target}: folder {folder} is not writable")
    check_not_inputs(targets, inputs or {})
    _check_distinct(targets)
