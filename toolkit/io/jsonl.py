"""JSONL in and out. Reading names the file and line of a bad row; writing is atomic and never goes through a
link that was planted where xtk writes (an output folder may come from someone else).

Every file xtk writes is opened by `open_own` (whole files by write_bytes, journals by open_append, locks by
toolkit/io/locks.py), and every folder a child process writes into is made by `own_folder`: below the folder a
command holds (its run folder, its --out folder: `write_root`), each part of the path is opened without following
a link, so a link planted at `data/`, `gate/` or a file's temporary name is refused, never written through. Above
that folder the path is the user's own (a runs/ folder linked to a bigger disk is theirs to make).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolkit.io.errors import DataError


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def file_problem(path: Path, expected: str) -> str | None:
    """Why `path` cannot be read as `expected` (e.g. "a JSONL file"), or None when it is a regular file."""
    if path.is_dir():
        return f"is a directory, expected {expected}"
    if not path.exists():
        return "no such file"
    if not path.is_file():
        return f"is not a regular file, expected {expected}"
    return None


def iter_lines(path: str | Path, expected: str) -> Iterator[tuple[int, str]]:
    """(line number, line with its ending) of a UTF-8 text file. A directory, an unreadable file or a line
    that is not UTF-8 raises DataError naming the file (and the line)."""
    path = Path(path)
    problem = file_problem(path, expected)
    if problem:
        raise DataError(path, None, problem)
    try:
        fh = path.open("rb")  # bytes, decoded line by line, so an encoding error names its line
    except OSError as exc:
        raise DataError(path, None, f"cannot read: {exc.strerror}") from None
    with fh:
        lineno = 0
        while True:
            try:  # a device or a failing disk may refuse a read: the line it stopped at is named
                raw = fh.readline()
            except OSError as exc:
                raise DataError(path, lineno + 1, f"cannot read: {exc.strerror}") from None
            if not raw:
                return
            lineno += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, lineno, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                                f"{exc.start + 1} of the line); save the file as UTF-8") from None
            yield lineno, line


def read_text(path: str | Path, expected: str) -> str:
    """A whole UTF-8 text file, with iter_lines' errors."""
    return "".join(line for _, line in iter_lines(path, expected))


class BadRows:
    """The bad rows of one file, gathered in one pass so that a user fixes them all at once: `add` keeps a row's
    DataError, `check` raises one DataError naming the first SHOWN with their lines and how many more."""

    SHOWN = 20

    def __init__(self, path: str | Path):
        self.path, self.errors = Path(path), []

    def add(self, error: DataError) -> None:
        self.errors.append(error)

    def check(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            more = len(self.errors) - self.SHOWN
            raise DataError(self.path, None, f"{len(self.errors)} bad rows:\n" + "\n".join(
                f"  {e}" for e in self.errors[:self.SHOWN]) + (f"\n  and {more} more" if more > 0 else ""))


def iter_jsonl(path: str | Path, bad: BadRows | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object raises DataError, or with
    `bad` is kept there and skipped (the caller raises them all with bad.check())."""
    path = Path(path)
    for lineno, line in iter_lines(path, "a JSONL file"):
        if not line.strip():
            continue
        try:
            obj = _json_object(path, lineno, line)
        except DataError as exc:
            if bad is None:
                raise
            bad.add(exc)
            continue
        yield lineno, obj


def _json_object(path: Path, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(path, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise DataError(path, lineno, "JSON nested too deeply to read (arrays or objects inside each other "
                        f"beyond Python's limit of {sys.getrecursionlimit()})") from None
    if not isinstance(obj, dict):
        raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def read_jsonl(path: str | Path) -> list[dict]:
    return [obj for _, obj in iter_jsonl(path)]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write all rows, replacing the file only once every row is written."""
    return write_bytes(path, "".join(dumps(row) + "\n" for row in rows).encode("utf-8"))


# The folders this process holds to write in, outermost first where they nest (a bake-off's folder holds its pairs'
# runs): a write below one follows no link from the outermost down.
_ROOTS: list[Path] = []


@contextmanager
def write_root(folder: str | Path) -> Iterator[Path]:
    """While the block runs, everything written below `folder` is xtk's own: a link there is refused. The folder
    itself is made by the first write (through the user's own path to it, unless a root held already holds it)."""
    root = Path(os.path.abspath(folder))
    _ROOTS.append(root)
    try:
        yield root
    finally:
        _ROOTS.remove(root)


def _folder_fd(folder: Path) -> int:
    """An open descriptor of `folder`, made part by part where missing: from the outermost held root above it (or,
    outside every root, from the folder itself), each part opened without following a link."""
    folder = Path(os.path.abspath(folder))
    root = min((r for r in _ROOTS if folder.is_relative_to(r)), key=lambda r: len(r.parts), default=folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise DataError(root, None, f"cannot write there: {exc.strerror}") from None
    here = root
    try:
        for part in folder.relative_to(root).parts:
            here = here / part
            try:
                os.mkdir(part, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise DataError(here, None, f"cannot make the folder: {exc.strerror}") from None
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if os.path.islink(here):
                    raise DataError(here, None, f"is a link (to {os.readlink(here)}); below {root} xtk writes only "
                                    "into folders of its own: remove the link") from None
                raise DataError(here, None, f"cannot write there: {exc.strerror}") from None
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def own_folder(folder: str | Path) -> Path:
    """`folder`, made where missing, with no link on the way down from the root that holds it: for a child process
    to write into (ms-swift's training and merge folders)."""
    os.close(_folder_fd(Path(folder)))
    return Path(folder)


def cleared(path: str | Path) -> Path:
    """`path` with nothing there (a folder removed with its contents; a file or a link removed itself, never what
    a link points at), its folder made as own_folder makes it: for a child process that makes `path` itself."""
    path = Path(path)
    own_folder(path.parent)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    return path


def open_own(path: str | Path, flags: int) -> int:
    """The one way xtk opens a file to write (os.open's `flags`, created 0644 where O_CREAT): in a folder reached as
    _folder_fd reaches it, never through a link at the file itself."""
    path = Path(path)
    fd = _folder_fd(path.parent)
    try:
        return os.open(path.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
    except OSError as exc:
        if path.is_symlink():
            raise DataError(path, None, "is a link; xtk writes only files of its own here: remove the link") from None
        raise DataError(path, None, f"cannot write: {exc.strerror}") from None
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a file whole: into a new temporary file beside it (created exclusively, so a link planted under
    any name is never followed), then renamed over `path` (which replaces a link there, never its target)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = open_own(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(path, None, f"cannot write: {exc.strerror}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib figure as a PNG file, written as write_bytes writes (the format from the file's suffix)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png")
    return write_bytes(path, buf.getvalue())


def open_append(path: str | Path):
    """A text file opened for appending (created when missing), refused when `path` is a link: a journal is
    xtk's own file, and appending through a planted link would write into whatever it points at."""
    fd = open_own(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    return os.fdopen(fd, "a", encoding="utf-8", newline="\n")


def append_jsonl(fh, row: dict) -> None:
    """Append one row to an open file and push it to disk, so a crash loses at most the row in flight."""
    fh.write(dumps(row) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def write_text(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file, replacing the old one only once the new one is complete."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
