"""Atomic checkpoints of a fine-tuning run, in a run folder next to the output (`<out>.run/`).

`last.pt` is rewritten every epoch and every N steps; `best.pt` when the certifier's measurement is
the best so far. Each write goes to a temporary file in the same folder, is flushed and fsync'ed,
then `os.replace`d over the old one, so a `kill -9` at any instant leaves either the old or the new
checkpoint, never a torn one. Files are read back with `torch.load(weights_only=True)` (no pickled code).

A kill between `mkstemp` and `os.replace` leaves a `<name>.*.tmp` file: never a valid checkpoint, so
`remove_stale_temp` deletes them when a run starts or resumes. Each checkpoint records the run's
configuration (`run_config` in speccert.training.run_setup); `check_same_config` refuses to resume with a
different one and names the keys that differ.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import torch

from speccert.errors import InputError, UsageError

LAST = "last.pt"
BEST = "best.pt"


def run_dir_for(out: str | os.PathLike[str]) -> Path:
    p = Path(out)
    return p.with_name(p.name + ".run")


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then os.replace (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def remove_stale_temp(run_dir: Path) -> list[Path]:
    """Delete the temporary files an interrupted `atomic_save` left in `run_dir`; return them."""
    stale = [p for name in (LAST, BEST) for p in run_dir.glob(name + ".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def check_same_config(saved: dict[str, Any] | None, now: dict[str, Any], where: Path) -> None:
    """Refuse to resume the run in `where` with settings other than those its checkpoint records.

    A checkpoint written before configurations were recorded (`saved` None) is accepted as is."""
    if saved is None:
        return
    keys = sorted(set(saved) | set(now))
    diff = [k for k in keys if saved.get(k) != now.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {now.get(k)!r} now" for k in diff)
        raise UsageError(
            f"--resume: the run in {where} was started with other settings ({shown}); resume with the "
            "same settings, or start over with --overwrite"
        )


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"no checkpoint to resume from at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any read failure is a bad file for the user
        raise InputError(f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, dict) or "model" not in obj:
        raise InputError(f"{path} is not a speccert fine-tuning checkpoint")
    return obj


def rng_state() -> dict[str, Any]:
    """Every random state the run uses: torch CPU (+ CUDA), Python's random."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _py_state_to_list(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_py_state_from_list(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_list(st: tuple[Any, ...]) -> list[Any]:
    return [st[0], list(st[1]), st[2]]


def _py_state_from_list(st: list[Any]) -> tuple[Any, ...]:
    return (st[0], tuple(st[1]), st[2])
