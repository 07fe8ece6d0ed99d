"""Append-only JSONL journals (labels, rejects, paid endpoint answers): a row is pushed to disk as soon as it
exists, so a crash loses at most the row being written, and nothing else is ever dropped on reading."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.io.errors import DataError


def load_journal(path: Path) -> list[dict]:
    """Every row of a journal. Only a torn last line (a crash mid-write: no newline at the end, not JSON) is
    cut off; a bad line anywhere else is damage a person must look at, so it stops with its line number."""
    if path.is_symlink():  # repaired and appended to in place: never through a link into another file
        raise DataError(path, None, "is a link; a journal is a file xtk writes itself: remove the link")
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    rows = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            if not isinstance(row, dict):
                raise ValueError(type(row).__name__)
        except ValueError as exc:
            if n == len(lines):  # the last line and no newline after it: torn by a crash, never complete
                with path.open("r+b") as fh:
                    fh.truncate(len(data) - len(raw))
                break
            raise DataError(path, n, f"not a complete JSON row ({exc}); this journal is written by xtk, so the "
                            "file was changed by something else: fix or remove that line, nothing was "
                            "deleted") from None
        rows.append(row)
    else:
        if data and not data.endswith(b"\n"):  # a complete last row whose newline was lost
            with path.open("ab") as fh:
                fh.write(b"\n")
    return rows
