"""stdout for a command's results only (`xtk predict --out - | jq`): what engines and libraries print goes to a
log instead. vLLM's logger writes to stdout, jionlp prints a banner on import, llama.cpp and ms-swift print from
C and from child processes (vLLM's engine core): only moving file descriptor 1 itself catches them all."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


@contextmanager
def stdout_for_results(log: Path | None) -> Iterator[TextIO]:
    """While open, whatever reaches this process's stdout (fd 1, and every child started meanwhile) is appended
    to `log`, or goes to stderr where `log` is None; yields the stream that still reaches the real stdout, for
    the command's results. Where sys.stdout is not fd 1 (a test capturing it), it is the results' stream."""
    sys.stdout.flush()
    try:
        real = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: a stream without a descriptor
        real = False
    saved = os.dup(1)
    target = open(log, "ab") if log else None
    os.dup2(target.fileno() if target else 2, 1)
    results = open(os.dup(saved), "w", encoding="utf-8") if real else sys.stdout
    try:
        yield results
    finally:
        results.flush()
        if real:
            results.close()
        sys.stdout.flush()  # what a library left in Python's buffer belongs to the log
        os.dup2(saved, 1)
        os.close(saved)
        if target:
            target.close()
