"""Standard output that tolerates a reader who stops reading (`speccert gate ... | head -1`).

Python ignores SIGPIPE, so a write to a closed pipe raises BrokenPipeError; click turns that into exit
code 1, which a CI pipeline with `set -o pipefail` reads as "gate failed", and an unguarded interpreter
exits 120 after an "Exception ignored" message. A reader closing the pipe is the reader's choice, not a
verdict: `ReaderTolerantStdout` points file descriptor 1 at /dev/null the first time a write or flush
meets a closed pipe, drops what was pending, and lets the command finish, so the exit code is the
command's own (0 pass, 1 gate failed, ...), as documented.
"""

from __future__ import annotations

import os
from typing import Any, TextIO


class ReaderTolerantStdout:
    """A proxy for a text stream whose writes and flushes go to /dev/null once the reader is gone."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.reader_gone = False

    def _reader_left(self) -> None:
        self.reader_gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self._stream.fileno())
        finally:
            os.close(devnull)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._reader_left()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_left()
            # What was buffered now drains into /dev/null, so the interpreter's final flush is quiet.
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
