"""Standard output and error as canary writes them: scrubbed of known secrets, and never the end of a command.

A rollout's truth is its route and its audit log, not what it prints: a reader that went away (`| head -1`),
a closed stream (`>&-`) or a full device must not stop a rollout between two writes, nor turn its exit code
into another outcome. A stream that cannot be written is dropped (what it still buffers goes to the null
device, so the interpreter's last flush cannot fail either) and the command goes on; `main` then says so in
one line on standard error and, where the command would have exited 0, exits with an error instead: exit 0
promises the output was delivered. A reader that went away chose to stop reading and gets no message.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, TextIO

from canary import secrets

_FAILURES = (OSError, ValueError, AttributeError)  # a device's error, a closed file, a stream that is None


class GuardedStream:
    """A text stream that scrubs secrets and drops itself, keeping the error, when a write or flush fails."""

    def __init__(self, stream: TextIO | None, name: str) -> None:
        self.name = name
        self.failure: OSError | None = None
        if stream is None:  # started with the descriptor closed: nothing can reach a reader
            self.failure = OSError(errno.EBADF, "the stream is closed")
            stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        self._stream = stream

    def write(self, text: str) -> int:
        if self.failure is None:
            try:
                self._stream.write(secrets.scrub(text))
            except _FAILURES as exc:
                self._drop(exc)
        return len(text)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self._stream.flush()
            except _FAILURES as exc:
                self._drop(exc)

    @property
    def reader_left(self) -> bool:
        return isinstance(self.failure, BrokenPipeError)

    def _drop(self, exc: Exception) -> None:
        self.failure = exc if isinstance(exc, OSError) else OSError(errno.EBADF, str(exc) or type(exc).__name__)
        with contextlib.suppress(*_FAILURES):  # the buffered rest goes nowhere, quietly
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, self._stream.fileno())
            os.close(null)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def problem(stream: GuardedStream) -> str | None:
    """The one line `main` prints about a stream that could not be written, or None (written, or its reader
    left on purpose)."""
    if stream.failure is None or stream.reader_left:
        return None
    return f"could not write to standard {stream.name}: {stream.failure.strerror or stream.failure}"
