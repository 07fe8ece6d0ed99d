"""Scoring: JSON out of model text, per-record correctness by each field's type (toolkit/task/fields.py), and
metrics with 95% intervals (Wilson for proportions, a seeded bootstrap for the rest; toolkit/maths/stats.py), each
field type adding its own; the headline a task is judged by; how far a wrong answer is from gold (edit distance),
for the report's errors."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from typing import Any

from rapidfuzz.distance import Levenshtein

from toolkit.maths.stats import Counts, f1, mean, proportion, with_interval
from toolkit.task.fields import NO_VALUE, TYPES, Choices, FieldSpec, Headline, Rows, kind
from toolkit.task.nested import is_nested, leaf_accuracy
from toolkit.task.recipe import Recipe
from toolkit.task.tables import NOT_IN_TABLE, WRONG_IN_TABLE

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


EXACT_MATCH = Headline("whole-record exact match", lambda row: bool(row["exact"]), mean)


def equal(spec: FieldSpec, predicted: Any, gold: Any) -> bool:
    p = kind(spec).value(spec, predicted)
    return p is not NO_VALUE and p == kind(spec).value(spec, gold)


def slot_counts(spec: FieldSpec, parsed: dict | None, gold: dict) -> Counts:
    """One field of one record as (TP, FP, FN), by its type; an unparseable answer (parsed None) predicts
    nothing."""
    return kind(spec).slot_counts(spec, parsed.get(spec.name) if parsed is not None else None, gold.get(spec.name))


def type_metrics(specs: list[FieldSpec], rows: Rows, choices: Choices, samples: list[list[int]]) -> dict:
    """Every type's own metric sections for the fields of that type, types in registry order."""
    out: dict = {}
    for t in TYPES.values():
        mine = [f for f in specs if kind(f) is t]
        if mine:
            out.update(t.metrics(mine, rows, choices, samples))
    return out


def headline(specs: list[FieldSpec], choices: Choices) -> Headline:
    """The figure a task is judged by, the headline its field types call for: the highest-ranked type among its
    fields that offers one (entity F1 over every list field; else the macro-F1 of its one enum field), else
    whole-record exact match."""
    for t in sorted(TYPES.values(), key=lambda t: -t.headline_rank):
        mine = [f for f in specs if kind(f) is t]
        if mine and (found := t.headline(mine, choices)) is not None:
            return found
    return EXACT_MATCH


def score_record(recipe: Recipe, parsed: dict | None, gold: dict) -> dict[str, bool]:
    """Per-field correctness by the field's type. An unparseable answer is wrong in every field; a missing key
    counts as the empty value."""
    if parsed is None:
        return {f.name: False for f in recipe.fields}
    return {f.name: equal(f, parsed.get(f.name), gold.get(f.name)) for f in recipe.fields}


def compute_metrics(recipe: Recipe, rows: list[dict], bootstrap: int = 1000, seed: int = 0) -> dict:
    """Metrics of prediction rows (each with `parsed` and `gold`), recomputed from those two alone: for every
    recipe exact match, JSON validity, per-field accuracy and micro F1 over all slots (a list's entities are
    its slots, a nested field's leaves too); for nested fields each leaf's accuracy (`leaves`, by its key:
    `seller.name`, `items[].unit_price`, a list's items aligned by similarity); then each field type's own (toolkit/task/fields.py): entity precision/recall/F1 for list fields,
    macro-F1 and a confusion matrix for enum fields, similarity for long free text. Intervals: Wilson for
    proportions, else a seeded bootstrap."""
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
        "micro_f1": with_interval(f1, [tuple(map(sum, zip(*record.values()))) for record in counts], samples),
        **({"table_errors": table_errors(recipe, rows, scored)} if recipe.tables else {}),
        **({"leaves": leaf_accuracy(recipe.fields, rows)} if any(map(is_nested, recipe.fields)) else {}),
    }
    return metrics | type_metrics(recipe.fields, rows, recipe.choices, samples)


def table_errors(recipe: Recipe, rows: list[dict], scored: list[dict[str, bool]]) -> dict[str, dict[str, int]]:
    """For each field bound to a table, its wrong answers counted by how they are wrong: a value the table does
    not have (an unparseable answer's too) or one it has, not the right one."""
    out = {}
    for table in recipe.loaded_tables():
        for col in table.columns:
            errors = Counter(table.value_error(col, (r["parsed"] or {}).get(col))
                             for r, s in zip(rows, scored) if not s[col])
            out[col] = {kind: errors[kind] for kind in (NOT_IN_TABLE, WRONG_IN_TABLE)}
    return out


def field_text(value) -> str:
    """A field's value as the report compares texts: a string as it is, anything else as JSON, missing as ""."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def how_wrong(prediction: dict, fields: list[str]) -> dict[str, int]:
    """Each wrong field's edit distance (characters) from its gold value; an unparseable answer or a missing
    field is as far as the whole gold value."""
    got = prediction["parsed"] or {}
    return {f: Levenshtein.distance(field_text(got.get(f)), field_text(prediction["gold"].get(f)))
            for f in fields if not prediction["correct"][f]}
