"""Replacing a file canary writes whole (a report, an export, a dashboard), so no reader ever sees half of it.

The document goes to a temporary file beside its target, flushed, then renamed over the target (the folder
flushed too): a command killed mid-write leaves the old file or the new one. The temporary file has a name
no one can guess and is created exclusively (`tempfile.mkstemp`), so a link planted under a predictable name
cannot redirect the write. A symbolic link is followed and its target replaced, keeping the target's mode
(and its owner, where canary may keep it, as root), as the manifest router writes a manifest. Only a regular
file is replaced: a FIFO, a device, a directory or a socket is refused, since renaming over it would put a
regular file where a special one was (`/dev/full` replaced, as root) or never reach the reader of the FIFO;
and a file without write permission is refused, as `>` refuses it, even as root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import stat
import tempfile
from pathlib import Path

from canary.errors import InputError
from canary.inputs import kind_of

TEMP_MARK = ".canary-"  # temporary files are `.NAME.canary-XXXX` beside the file they replace


class NotRegularFile(InputError):
    """The path names something that is not a regular file; `kind` says what ("a FIFO", "a device", ...)."""

    def __init__(self, path: str | Path, kind: str) -> None:
        self.kind = kind
        super().__init__(f"{path}: is {kind}, not a regular file")


class ReadOnlyFile(InputError):
    """The file has no write permission for anyone: someone made it read-only, and renaming a new file over it
    would undo that (the rename needs only the folder's permission, and root passes every check)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(f"{path}: the file is read-only; canary does not replace it")


def replace_file(path: str | Path, data: bytes) -> Path:
    """Write `data` as the whole content of `path` (through a symbolic link); the file written.

    NotRegularFile when `path` exists and is not a regular file, ReadOnlyFile when it has no write permission;
    OSError when it cannot be written (the old file, if any, is then left as it was)."""
    kind = _existing_kind(path)
    if kind is not None:
        raise NotRegularFile(path, kind)
    real = Path(os.path.realpath(path))  # a symbolic link keeps pointing at the file it names
    try:
        info: os.stat_result | None = real.stat()
    except FileNotFoundError:
        info = None  # a new file (or a link to one not made yet)
    if info is not None and not info.st_mode & 0o222:
        raise ReadOnlyFile(path)
    mode = stat.S_IMODE(info.st_mode) if info is not None else _new_file_mode()
    for stale in real.parent.glob(f".{glob.escape(real.name)}{TEMP_MARK}*"):  # left by a command killed mid-write
        stale.unlink(missing_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{real.name}{TEMP_MARK}", dir=real.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if info is not None and (info.st_uid, info.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):  # only root may give a file away
                    os.fchown(fh.fileno(), info.st_uid, info.st_gid)
            os.fsync(fh.fileno())
        os.replace(temp, real)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    sync_directory(real.parent)
    return real


def sync_directory(folder: Path) -> None:
    """The rename is durable only once the folder is on disk too."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _existing_kind(path: str | Path) -> str | None:
    """What the path names (following links) when that is not a regular file; None for a regular file or none.

    Asked of the name itself, not of what `realpath` makes of it: `/dev/stdout` reaches a pipe or a terminal
    through /proc, where the resolved name is no path at all."""
    try:
        return kind_of(os.stat(path).st_mode)
    except OSError:
        return None  # none yet, or a link loop or a folder that cannot be searched: the write says why


def _new_file_mode() -> int:
    """What `open()` would give a new file: 0666 less the umask (mkstemp's own files are 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask
