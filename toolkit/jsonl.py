"""JSONL in and out. Reading names the file and line of a bad row; writing is atomic."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data; the message names the file, the line and what was expected."""

    def __init__(self, path: str | Path, line: int | None, message: str):
        self.path, self.line = Path(path), line
        super().__init__(f"{path}:{line}: {message}" if line else f"{path}: {message}")


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(dumps(row) + "\n")
    os.replace(tmp, path)
    return path


def append_jsonl(fh, row: dict) -> None:
    """Append one row to an open file and push it to disk, so a crash loses at most the row in flight."""
    fh.write(dumps(row) + "\n")
    fh.flush()
    os.fsync(fh.fileno())


def write_text(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file, replacing the old one only once the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")
