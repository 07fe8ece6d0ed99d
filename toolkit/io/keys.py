"""The one hash helper: every key and digest xtk keeps to tell later whether something is still what it was (a
stage's settings and outputs, a training, a journal of answers) is made here, so that each has one shape.
toolkit/run/identity.py decides what goes into the identity of each artefact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

CHUNK = 1 << 20


def digest(value, length: int = 16) -> str:
    """The first `length` hex digits of the sha256 of `value`: bytes as they are, anything else as JSON with
    sorted keys (a value JSON cannot write, such as a Path, as its str)."""
    data = value if isinstance(value, bytes) else json.dumps(value, ensure_ascii=False, sort_keys=True,
                                                             default=str).encode()
    return hashlib.sha256(data).hexdigest()[:length]


def file_digest(path: Path, length: int = 16) -> str:
    """The sha256 of a file's bytes (read a chunk at a time), or of a folder's file names and sizes (model
    folders are too big to hash each time); length 64 is the whole sha256, as published checksums give it."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(path)}:{p.stat().st_size}\n".encode())
    else:
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()[:length]
