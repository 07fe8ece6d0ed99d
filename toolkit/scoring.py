"""Scoring: JSON out of model text, per-record correctness by each field's type (toolkit/fields.py), and
metrics by type with 95% intervals (Wilson for proportions, a seeded bootstrap for the rest)."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable

from toolkit.fields import compared, equal, is_long_text, items, present, similarity
from toolkit.recipe import FieldSpec, Recipe

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


def score_record(recipe: Recipe, parsed: dict | None, gold: dict) -> dict[str, bool]:
    """Per-field correctness by the field's type. An unparseable answer is wrong in every field; a missing key
    counts as the empty value."""
    if parsed is None:
        return {f.name: False for f in recipe.fields}
    return {f.name: equal(f, parsed.get(f.name), gold.get(f.name)) for f in recipe.fields}


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


INVALID = "(invalid)"  # the confusion matrix's column for a prediction outside an enum's choices
Counts = tuple[int, int, int]  # true positives, false positives, false negatives


def slot_counts(spec: FieldSpec, parsed: dict | None, gold: dict) -> Counts:
    """One field of one record. A list counts its entities as multisets: each predicted item matching a gold
    item is TP, each other predicted item FP, each gold item left unmatched FN. Any other field is one slot:
    a non-empty prediction is TP if right, FP if wrong; a non-empty gold value not predicted right is FN.
    Empty gold + empty prediction counts nowhere."""
    predicted = parsed.get(spec.name) if parsed is not None else None
    if spec.type == "list[str]":
        g, p = items(spec, gold.get(spec.name)), items(spec, predicted)
        tp = sum((g & p).values())
        return tp, sum(p.values()) - tp, sum(g.values()) - tp
    g = compared(spec, gold.get(spec.name))
    p = compared(spec, predicted) if parsed is not None else ""
    if present(p) and p == g:
        return 1, 0, 0
    return 0, int(present(p)), int(present(g))


def _f1(counts: list[Counts]) -> float:
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def _precision(counts: list[Counts]) -> float:
    """Nothing predicted is perfect precision only where there was nothing to find (as F1 is)."""
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    return tp / (tp + fp) if tp + fp else float(fn == 0)


def _recall(counts: list[Counts]) -> float:
    """Nothing to find is perfect recall only where nothing was predicted either."""
    tp, fp, fn = (sum(c[i] for c in counts) for i in range(3))
    return tp / (tp + fn) if tp + fn else float(fp == 0)


def _macro_f1(pairs: list[tuple[str, str | None]]) -> float:
    """Mean F1 over the classes that occur (as gold or prediction); an invalid prediction (None) is a miss."""
    tally: dict[str, list[int]] = {}
    for gold, predicted in pairs:
        tally.setdefault(gold, [0, 0, 0])
        if predicted == gold:
            tally[gold][0] += 1
            continue
        tally[gold][2] += 1
        if predicted is not None:
            tally.setdefault(predicted, [0, 0, 0])[1] += 1
    return sum(2 * tp / (2 * tp + fp + fn) for tp, fp, fn in tally.values()) / len(tally) if tally else 1.0


def _with_interval(statistic: Callable[[list], float], per_record: list, samples: list[list[int]]) -> dict:
    """A statistic of the records with its 95% interval from the shared bootstrap resamples."""
    boot = sorted(statistic([per_record[i] for i in sample]) for sample in samples) or [0.0]
    value = statistic(per_record) if per_record else 0.0
    lo, hi = boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]
    return {"value": value, "ci95": [round(lo, 4), round(hi, 4)]}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _enum_metrics(recipe: Recipe, spec: FieldSpec, rows: list[dict], samples: list[list[int]]) -> dict:
    """Macro-F1 and the confusion matrix (rows gold, columns predicted; INVALID: unparseable or outside the
    choices). Classes are listed as the recipe writes them, in its order."""
    written = {}
    for choice in recipe.choices(spec.name):
        written.setdefault(compared(spec, choice), choice)
    pairs = []
    for r in rows:
        p = compared(spec, r["parsed"].get(spec.name)) if r["parsed"] is not None else None
        pairs.append((written[compared(spec, r["gold"].get(spec.name))], written.get(p)))
    classes = [c for c in written.values() if any(c in pair for pair in pairs)]
    columns = classes + ([INVALID] if any(p is None for _, p in pairs) else [])
    counts = [[sum(1 for g, p in pairs if g == gold and (p or INVALID) == column) for column in columns]
              for gold in classes]
    return {"macro_f1": _with_interval(_macro_f1, pairs, samples),
            "confusion": {"gold": classes, "predicted": columns, "counts": counts}}


def compute_metrics(recipe: Recipe, rows: list[dict], bootstrap: int = 1000, seed: int = 0) -> dict:
    """Metrics of prediction rows (each with `parsed` and `gold`), recomputed from those two alone: for every
    recipe exact match, JSON validity, per-field accuracy and micro F1 over all slots (a list's entities are
    its slots); by type, entity precision/recall/F1 for list fields, macro-F1 and a confusion matrix for enum
    fields, similarity for long free text. Intervals: Wilson for proportions, else a seeded bootstrap."""
    n = len(rows)
    scored = [score_record(recipe, r["parsed"], r["gold"]) for r in rows]
    counts = [{f.name: slot_counts(f, r["parsed"], r["gold"]) for f in recipe.fields} for r in rows]
    rng = random.Random(seed)
    samples = [[rng.randrange(n) for _ in range(n)] for _ in range(bootstrap)] if n else []
    metrics = {
        "n": n,
        "json_parse_rate": proportion(sum(r["parsed"] is not None for r in rows), n),
        "exact_match": proportion(sum(all(s.values()) for s in scored), n),
        "fields": {f: proportion(sum(s[f] for s in scored), n) for f in recipe.field_names},
        "micro_f1": _with_interval(_f1, [tuple(map(sum, zip(*record.values()))) for record in counts], samples),
    }
    lists = [f.name for f in recipe.fields if f.type == "list[str]"]
    if lists:
        def prf(names: list[str]) -> dict:
            per_record = [tuple(map(sum, zip(*(record[f] for f in names)))) for record in counts]
            return {k: _with_interval(stat, per_record, samples)
                    for k, stat in (("precision", _precision), ("recall", _recall), ("f1", _f1))}

        metrics["entities"] = {**{f: prf([f]) for f in lists}, "overall": prf(lists)}
    enums = [f for f in recipe.fields if f.type == "enum"]
    if enums:
        metrics["enums"] = {f.name: _enum_metrics(recipe, f, rows, samples) for f in enums}
    long_text = [f for f in recipe.fields if is_long_text(f, recipe.choices(f.name))]
    if long_text:
        metrics["similarity"] = {f.name: _with_interval(_mean, [
            similarity(compared(f, r["parsed"].get(f.name)), compared(f, r["gold"].get(f.name)))
            if r["parsed"] is not None else 0.0 for r in rows], samples) for f in long_text}
    return metrics
