"""Scoring: JSON out of model text, the recipe's normalisers, per-record correctness, and metrics with 95%
intervals (Wilson for proportions, a seeded bootstrap for micro F1)."""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata

from toolkit.recipe import Recipe

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def extract_json(text: str) -> dict | None:
    """The JSON object in a model's answer: <think> blocks and code fences removed, prose around it ignored.
    None when there is no complete object."""
    text = _THINK.sub("", text or "")
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    start = text.find("{")
    while start != -1:
        try:
            obj, _ = json.JSONDecoder().raw_decode(text, start)
            if isinstance(obj, dict):
                return obj
        except json.JSONDecodeError:
            pass
        start = text.find("{", start + 1)
    return None


def _width(s: str) -> str:
    # NFKC folds full-width ASCII (１２３ＡＢ：) to half width and leaves CJK characters alone.
    return unicodedata.normalize("NFKC", s)


NORMALISERS = {
    "strip": str.strip,
    "width": _width,
    "digits": lambda s: re.sub(r"\D", "", _width(s)),
    "lower": str.lower,
    "nospace": lambda s: re.sub(r"\s+", "", s),
}


def normalise(value, steps: list[str]) -> str:
    """A value as compared: non-strings (null, numbers) become text first, then each normaliser in order."""
    s = "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    for step in steps:
        s = NORMALISERS[step](s)
    return s


def score_record(recipe: Recipe, parsed: dict | None, gold: dict) -> dict[str, bool]:
    """Per-field correctness. An unparseable answer is wrong in every field; a missing key counts as ""."""
    if parsed is None:
        return {f.name: False for f in recipe.fields}
    return {f.name: normalise(parsed.get(f.name), f.normalise) == normalise(gold.get(f.name), f.normalise)
            for f in recipe.fields}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"value": k / n if n else 0.0, "k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}


def _f1_counts(recipe: Recipe, parsed: dict | None, gold: dict) -> tuple[int, int, int]:
    """Slot-filling counts: a non-empty prediction is TP if right, FP if wrong; a non-empty gold value not
    predicted right is FN. Empty gold + empty prediction counts nowhere."""
    tp = fp = fn = 0
    for f in recipe.fields:
        g = normalise(gold.get(f.name), f.normalise)
        p = normalise(parsed.get(f.name), f.normalise) if parsed is not None else ""
        if p and p == g:
            tp += 1
        else:
            fp += bool(p)
            fn += bool(g)
    return tp, fp, fn


def _f1(counts: list[tuple[int, int, int]]) -> float:
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def compute_metrics(recipe: Recipe, rows: list[dict], bootstrap: int = 1000, seed: int = 0) -> dict:
    """Metrics of prediction rows (each with `parsed` and `gold`), recomputed from those two alone."""
    n = len(rows)
    scored = [score_record(recipe, r["parsed"], r["gold"]) for r in rows]
    counts = [_f1_counts(recipe, r["parsed"], r["gold"]) for r in rows]
    rng = random.Random(seed)
    boot = sorted(_f1([counts[rng.randrange(n)] for _ in range(n)]) for _ in range(bootstrap)) if n else [0.0]
    return {
        "n": n,
        "json_parse_rate": proportion(sum(r["parsed"] is not None for r in rows), n),
        "exact_match": proportion(sum(all(s.values()) for s in scored), n),
        "fields": {f: proportion(sum(s[f] for s in scored), n) for f in recipe.field_names},
        "micro_f1": {"value": _f1(counts) if n else 0.0,
                     "ci95": [round(boot[int(0.025 * len(boot))], 4), round(boot[int(0.975 * len(boot)) - 1], 4)]},
    }
