"""Typed fields: everything a field's type decides, in one place.

Types: `str` (free text, or a closed set with choices), `enum` (classification: one of its choices),
`list[str]` (entities: compared as multisets, order-free), `int`, `float`, `bool`. For each: how a label is
validated, the form values are compared in, the JSON schema for guided decoding, grounding in the input,
and the key votes are counted by.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolkit.recipe import FieldSpec, Recipe

TYPES = ("str", "enum", "list[str]", "int", "float", "bool")
TEXT_TYPES = ("str", "enum", "list[str]")  # the types normalisers, choices and grounding apply to
GROUNDABLE = ("str", "list[str]")
# A free-text field this long or longer (max_chars, or no bound) also gets a similarity score: partial credit
# for a nearly right verbatim span, as NuExtract scores them.
LONG_TEXT = 24


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


def type_problem(spec: FieldSpec, value: Any) -> str | None:
    """Why a label's value does not have the field's type (None: it does). Closed sets are checked apart."""
    shown = json.dumps(value, ensure_ascii=False)
    if spec.type in ("str", "enum"):
        return None if isinstance(value, str) else f"must be a string, got {shown}"
    if spec.type == "list[str]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"must be a list of strings, got {shown}"
        if spec.max_items is not None and len(value) > spec.max_items:
            return f"has {len(value)} items, over max_items={spec.max_items}"
        return None
    if spec.type == "bool":
        return None if isinstance(value, bool) else f"must be true or false, got {shown}"
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if spec.type == "int" and not (number and float(value).is_integer()):
        return f"must be an integer, got {shown}"
    return None if number else f"must be a number, got {shown}"


def disallowed(recipe: Recipe, spec: FieldSpec, value: Any) -> list[str]:
    """The items of a (type-checked) value outside the field's closed set, as given; [] for an open field."""
    allowed = recipe.allowed_values(spec.name)
    if allowed is None:
        return []
    items = value if spec.type == "list[str]" else [value]
    return [v for v in items if normalise(v, spec.normalise) not in allowed]


def ungrounded(spec: FieldSpec, value: Any, text: str) -> list[str]:
    """The non-empty items of a grounded field's value that do not occur in the input (after normalising)."""
    if not spec.grounded:
        return []
    haystack = normalise(text, spec.normalise)
    items = value if spec.type == "list[str]" else [value]
    return [v for v in items if (n := normalise(v, spec.normalise)) and n not in haystack]


def is_empty(spec: FieldSpec, value: Any) -> bool:
    """Text that says nothing ("" or whitespace). An empty list is an answer (no entity in this input), and
    numbers and booleans always say something."""
    return spec.type in ("str", "enum") and not value.strip()


_NO_VALUE = object()  # a prediction of the wrong type: equal to no gold value


def compared(spec: FieldSpec, value: Any) -> Any:
    """The form a value is compared in. Predictions are taken leniently (a missing key is the empty value, a
    number given as text is the number); what cannot be read as the type compares equal to nothing."""
    if spec.type in ("str", "enum"):
        return normalise(value, spec.normalise)
    if spec.type == "list[str]":
        if value is None:
            return ()
        if not isinstance(value, list):
            return _NO_VALUE
        return tuple(sorted(n for v in value if (n := normalise(v, spec.normalise))))
    if value is None:
        return _NO_VALUE
    if spec.type == "bool":
        text = normalise(value, ["strip", "lower"])
        return {"true": True, "false": False}.get(text, _NO_VALUE)
    try:
        number = float(normalise(value, ["strip", "width"]))
    except ValueError:
        return _NO_VALUE
    if not math.isfinite(number) or (spec.type == "int" and not number.is_integer()):
        return _NO_VALUE
    return int(number) if spec.type == "int" else round(number, 9)


def present(c: Any) -> bool:
    """A compared scalar value that says something (not "", not unreadable)."""
    return c is not _NO_VALUE and c != ""


def equal(spec: FieldSpec, predicted: Any, gold: Any) -> bool:
    p = compared(spec, predicted)
    return p is not _NO_VALUE and p == compared(spec, gold)


def items(spec: FieldSpec, value: Any) -> Counter:
    """A list field's value as a multiset of compared items (a wrong-typed prediction is none)."""
    c = compared(spec, value)
    return Counter(() if c is _NO_VALUE else c)


def vote_key(spec: FieldSpec, value: Any) -> str:
    """Answers with the same key are the same vote: stripped text; a list's items in any order."""
    if spec.type == "list[str]":
        return json.dumps(sorted(v.strip() for v in value), ensure_ascii=False)
    return value.strip() if isinstance(value, str) else json.dumps(compared(spec, value))  # 2 and 2.0 agree


def voted_value(spec: FieldSpec, value: Any) -> Any:
    """What a vote keeps: text stripped, a list's items stripped in the first answer's order."""
    if spec.type == "list[str]":
        return [v.strip() for v in value]
    return value.strip() if isinstance(value, str) else value


def schema(spec: FieldSpec, choices: list[str] | None, max_enum: int) -> dict[str, Any]:
    """The field's JSON schema: strings bounded by max_chars (a looping model's string ends there under guided
    decoding), closed sets as enum, arrays bounded by max_items."""
    if spec.type in ("str", "enum"):
        out: dict[str, Any] = {"type": "string", "description": spec.description}
        if spec.max_chars:
            out["maxLength"] = spec.max_chars
        if choices is not None and (spec.type == "enum" or len(choices) <= max_enum):
            out["enum"] = choices
        return out
    if spec.type == "list[str]":
        item: dict[str, Any] = {"type": "string"}
        if spec.max_chars:
            item["maxLength"] = spec.max_chars
        if choices is not None and len(choices) <= max_enum:
            item["enum"] = choices
        out = {"type": "array", "description": spec.description, "items": item}
        if spec.max_items is not None:
            out["maxItems"] = spec.max_items
        return out
    return {"type": {"int": "integer", "float": "number", "bool": "boolean"}[spec.type],
            "description": spec.description}


def is_long_text(spec: FieldSpec, choices: list[str] | None) -> bool:
    """A free-text field long enough that partial credit (similarity) says something beside exact match."""
    return spec.type == "str" and choices is None and (spec.max_chars is None or spec.max_chars >= LONG_TEXT)


def similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / the longer length: 1.0 for equal strings (both empty included)."""
    if not a and not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return 1 - previous[-1] / max(len(a), len(b))
