"""JSONL in and out. Reading names the file and line of a bad row; writing is atomic and never goes through a
link that was planted where xtk writes (an output folder may come from someone else)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
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
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(path, lineno, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte "
                                f"{exc.start + 1} of the line); save the file as UTF-8") from None
            yield lineno, line


def read_text(path: str | Path, expected: str) -> str:
    """A whole UTF-8 text file, with iter_lines' errors."""
    return "".join(line for _, line in iter_lines(path, expected))


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line that is not a JSON object raises DataError."""
    path = Path(path)
    for lineno, line in iter_lines(path, "a JSONL file"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(path, lineno, f"expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def read_jsonl(path: str | Path) -> list[dict]:
    return [obj for _, obj in iter_jsonl(path)]


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write all rows, replacing the file only once every row is written."""
    return write_bytes(path, "".join(dumps(row) + "\n" for row in rows).encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write a file whole: into a new temporary file beside it (created exclusively, so a link planted under
    any name is never followed), then renamed over `path` (which replaces a link there, never its target)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from the user's other accounts and tools
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise DataError(path, None, "is a link; xtk writes only files of its own here: remove the link") from None
        raise DataError(path, None, f"cannot write: {exc.strerror}") from None
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
