"""One writer per output folder: an exclusive lock held for as long as a command writes there."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from toolkit.io.errors import DataError, StageError
from toolkit.io.jsonl import open_own, write_root


def _open_lock(path: Path, folder: Path):
    """The lock file, opened as every file xtk writes is (toolkit/io/jsonl.py:open_own): a lock planted as a link to
    another file would have that file's content replaced by a pid, so such a folder is refused."""
    try:
        fd = open_own(path, os.O_RDWR | os.O_CREAT)
    except DataError as exc:
        if path.is_symlink():
            raise StageError(f"{folder}: its lock file {path.name} is a link ({path} -> {os.readlink(path)}); xtk "
                             "does not write through links it did not make: remove the link") from None
        raise StageError(str(exc)) from None
    return os.fdopen(fd, "r+")


@contextmanager
def folder_lock(folder: Path, what: str, name: str = ".xtk.lock", shown: Path | None = None) -> Iterator[None]:
    """Hold `folder/name` exclusively; a second holder is refused at once with the first one's pid. The lock
    dies with its process, so a crashed or killed command never leaves a stale lock behind. `shown` is the
    folder named in the refusal, where the lock file guards another one than it sits in. The folder held is a
    folder it writes in: below it, xtk writes through no link (toolkit/io/jsonl.py:write_root)."""
    with write_root(folder), _open_lock(folder / name, shown or folder) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise StageError(f"{shown or folder} is in use by another xtk {what} (pid {fh.read().strip() or '?'}): "
                             "wait for it to finish or stop it first") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """A short blocking lock around one read-modify-write of a shared file (the manifest)."""
    with _open_lock(path.with_name(path.name + ".lock"), path.parent) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@contextmanager
def folder_turn(folder: Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive lock on the folder itself (its own descriptor: no file is added to it, so
    a folder that must stay as it was, the model cache after a failed pull, does). Released when the block ends
    or the process dies. A folder that is a link is locked where it leads: the user's own cache moved to a
    bigger disk is such a link, and the lock writes nothing through it."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise StageError(f"{folder}: cannot open the folder to lock it: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
