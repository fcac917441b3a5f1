"""onnxruntime's output for the faithfulness check, computed in a short-lived child process.

An onnxruntime session holds its own copy of the weights (0.95 GB for vgg11_bn's 507 MB) and, once
freed, does not hand all of it back to the system. Run in a child process (`ort_worker.py`) before the
importer reads the weights, its memory is gone when the import builds the IR: the load's peak is the
larger of the two, not their sum. The child gets the input and returns the output as raw numeric
arrays through pipes (no pickle); a failure there comes back as one line.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speccert.importers.ort_worker import read_frame, write_frame

WORKER = Path(__file__).with_name("ort_worker.py")


@dataclass(frozen=True)
class Reference:
    """onnxruntime's output `y` on input `x` (fed as `input_name`), or the one-line `error` it gave."""

    input_name: str
    x: np.ndarray
    y: np.ndarray | None
    error: str | None = None


def _last_line(data: bytes) -> str:
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return f": {lines[-1][:200]}" if lines else ""


class ReferenceRun:
    """onnxruntime's first output for `x` (fed in chunks of `batch` when the model fixes it), run on
    the file at `path` in a child process started here; `result()` waits for it. Between the two the
    caller may do work that needs no memory (hash the file)."""

    def __init__(self, path: Path, input_name: str, x: np.ndarray, batch: int | None) -> None:
        self.input_name, self.x = input_name, x
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by result()
        self.proc: subprocess.Popen[bytes] | None = None
        self.sent = False
        if not sys.executable:
            return
        cmd = [sys.executable, "-P", str(WORKER), str(path)]  # -P: the importers folder is not on sys.path
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err)
        except OSError:
            return
        assert self.proc.stdin is not None
        try:
            with self.proc.stdin:
                write_frame(self.proc.stdin, {"input": input_name, "batch": batch}, x)
            self.sent = True
        except OSError:
            pass  # the child died before reading: result() says how

    def result(self) -> Reference | None:
        """The output, or the one-line error; None when no child process could be started (the caller
        then runs onnxruntime itself)."""
        with self.err:
            if self.proc is None:
                return None
            assert self.proc.stdout is not None
            header: dict[str, object] = {}
            y = None
            try:
                if self.sent:
                    header, y = read_frame(self.proc.stdout)
            except (OSError, ValueError, KeyError, TypeError):
                pass  # the child died or wrote something else: its exit status says more
            finally:
                self.proc.stdout.close()
                rc = self.proc.wait()
            if "error" in header:
                return Reference(self.input_name, self.x, None, str(header["error"]))
            if y is None:
                self.err.seek(0)
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
                why = f"onnxruntime's process {how}{_last_line(self.err.read())}"
                return Reference(self.input_name, self.x, None, why)
        return Reference(self.input_name, self.x, y)


__all__ = ["Reference", "ReferenceRun"]
