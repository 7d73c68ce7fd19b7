"""Reading the files canary is given, within limits: a regular file, under a size cap, in one clear line.

Every file a user names (a policy, a scenario, a manifest, a kubeconfig, a token or password file, a CA
bundle) is read through `read_file`: a directory, a device (`/dev/zero`), a FIFO or a file over its cap is
refused before a byte is read into memory, so no input can hang canary or grow it without bound. The error
names the file and what it was expected to be, never the file's content.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from canary.errors import InputError

KIB = 1024
MIB = 1024 * KIB
LIMITS = {
    "policy": 1 * MIB,
    "scenario": 1 * MIB,
    "manifest": 8 * MIB,
    "kubeconfig": 1 * MIB,
    "secret": 64 * KIB,  # a token or a password
    "CA bundle": 4 * MIB,
}
AUDIT_LINE_LIMIT = 16 * MIB  # one audit record (a tick with many pods is some tens of KiB)


def read_file(path: str | Path, what: str) -> bytes:
    """The whole file, once it is known to be a regular file within the cap for `what` (see LIMITS)."""
    limit = LIMITS[what]
    name = _named(path, what)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))  # a FIFO must not block
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read the {what} file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        kind = kind_of(info.st_mode)
        if kind is not None:
            raise InputError(f"{name}: is {kind}, not a {what} file")
        if info.st_size > limit:
            raise InputError(f"{name}: {_size(info.st_size)}, more than a {what} file may be ({_size(limit)})")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(MIB, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise InputError(f"{name}: more than a {what} file may be ({_size(limit)})")
        return b"".join(chunks)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise InputError(f"{name}: is a directory, not a {what} file") from None
        raise InputError(f"{name}: cannot read the {what} file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_text(path: str | Path, what: str) -> str:
    """The file as UTF-8 text, without a byte-order mark an editor may have put first (a binary file is
    refused by name, never echoed)."""
    data = read_file(path, what)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file (byte {exc.start} is not UTF-8)") from None


def check_regular(path: str | Path, what: str) -> None:
    """That the path is a regular file (or does not exist yet): for files canary appends to or replaces."""
    try:
        info = os.stat(_named(path, what))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"{path}: cannot use the {what}: {exc.strerror or exc}") from None
    kind = kind_of(info.st_mode)
    if kind is not None:
        raise InputError(f"{path}: is {kind}, not {_a(what)}")


def read_secret(path: str | Path, what: str) -> str:
    """A token or password file: one trailing newline trimmed; anything else unprintable is an error that
    names the file, never the value."""
    text = read_text(path, "secret").removesuffix("\n").removesuffix("\r")
    return checked_secret(text, f"the {what} file {path}")


def checked_secret(value: str, where: str) -> str:
    """A secret fit for an HTTP header: non-empty, printable ASCII, no whitespace inside."""
    if not value:
        raise InputError(f"{where} is empty")
    for i, ch in enumerate(value):
        if not (0x21 <= ord(ch) <= 0x7E) and not (ch == " " and 0 < i < len(value) - 1):
            what = "a line break" if ch in "\r\n" else "a character that is not printable ASCII"
            raise InputError(f"{where} holds {what} at position {i + 1}; a header cannot carry it")
    return value


def _a(what: str) -> str:
    return f"{'an' if what[:1].lower() in 'aeiou' else 'a'} {what}"


def kind_of(mode: int) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n >= MIB else f"{n / KIB:.0f} KiB" if n >= KIB else f"{n} bytes"


def _named(path: str | Path, what: str) -> str:
    """The path as a name; an empty one (an unset shell variable) names no file, not the current folder."""
    name = str(path)
    if not name.strip():
        raise InputError(f"no {what} named: the file name is empty")
    return name
