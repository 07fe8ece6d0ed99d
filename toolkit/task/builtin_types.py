"""The built-in field types: `str` (free text, or a closed set with choices), `enum` (classification: one of its
choices), `list[str]` (entities: compared as multisets, order-free), `int`, `float` (numbers read through
thousands separators, currency signs and full-width digits), `bool`, `date` (ISO 8601, read from common Chinese
and English formats). Each is a `FieldType` (toolkit/task/fields.py), registered at the end of this module."""

from __future__ import annotations

import datetime
import json
import math
import re
from collections import Counter
from typing import Any

from rapidfuzz.distance import Levenshtein

from toolkit.maths.stats import Counts, f1, macro_f1, mean, precision, recall, with_interval
from toolkit.task.fields import NO_VALUE, Choices, FieldSpec, FieldType, Headline, Rows, normalise, register


# What a writer puts where they have no value: never grounded, even where the input holds it (无 in 无锡市).
# Compared stripped, width-folded and lower-cased; a run of mask characters (x, xx, ***, ???, --) is one too.
PLACEHOLDERS = frozenset({
    "未知", "无", "不详", "暂无", "待定", "空", "没有", "未提供", "不明", "略", "无名", "匿名", "某某", "见上",
    "n/a", "none", "null", "unknown", "tbd", "undefined"})
MASK = re.compile(r"[-x*?？_.…—/]+")


def placeholder(item: str) -> bool:
    """An item that is one of PLACEHOLDERS or all mask characters."""
    folded = normalise(item, ["strip", "width", "lower"])
    return folded in PLACEHOLDERS or bool(MASK.fullmatch(folded))


class Text(FieldType):
    """`str`: free text, or a closed set with choices (small sets become the schema's enum); a `pattern` bounds its
    form."""

    name = "str"
    text = groundable = patterned = True
    # A free-text field this long or longer (max_chars, or no bound) also gets a similarity score: partial
    # credit for a nearly right verbatim span, as NuExtract scores them.
    LONG_TEXT = 24

    def problem(self, spec, value):
        if not isinstance(value, str):
            return f"must be a string, got {_shown(value)}"
        pattern = self.pattern(spec)
        if pattern is not None and value.strip() and not re.fullmatch(pattern, normalise(value, spec.normalise)):
            return f"must match the pattern {pattern!r} after the normalisers {spec.normalise}, got {_shown(value)}"
        return None

    def is_empty(self, spec, value):
        """Text that says nothing ("" or whitespace)."""
        return not value.strip()

    def is_placeholder(self, item):
        return placeholder(item)

    def compared(self, spec, value):
        return normalise(value, spec.normalise)

    def vote_key(self, spec, value):
        if isinstance(value, str):
            return json.dumps(value.strip(), ensure_ascii=False)
        return super().vote_key(spec, value)  # null in an optional field: "null", apart from the text "null"

    def voted_value(self, spec, value):
        return value.strip() if isinstance(value, str) else value

    def schema(self, spec, choices, max_enum):
        """Strings bounded by max_chars (a looping model's string ends there under guided decoding), or by the
        pattern alone, anchored, "" allowed (the value the input does not give): vLLM refuses xgrammar for a string
        with both (xgrammar#966) and would decode the whole answer with another backend, so a pattern bounds its
        own length."""
        out: dict[str, Any] = {"type": "string", "description": spec.description}
        if (pattern := self.pattern(spec)) is not None:
            out["pattern"] = f"^({pattern})?$"
        elif spec.max_chars:
            out["maxLength"] = spec.max_chars
        if choices is not None and (self.classes or len(choices) <= max_enum):
            out["enum"] = choices
        return out

    def hint(self, spec, choices):
        if choices is not None:
            return _one_of(choices)
        return "text copied from the input as written" if spec.grounded else "text"

    def example(self, spec, choices):
        return choices[0] if choices else "..."

    def canonical(self, spec, value):
        """A patterned value as the pattern reads it (normalised: "138-1234-5678" is 13812345678), the form the
        schema lets the student write."""
        return normalise(value, spec.normalise) if self.pattern(spec) is not None and value.strip() else value

    def is_long(self, spec: FieldSpec, choices: list[str] | None) -> bool:
        """Free text long enough that partial credit (similarity) says something beside exact match."""
        return choices is None and (spec.max_chars is None or spec.max_chars >= self.LONG_TEXT)

    def metrics(self, specs, rows, choices, samples):
        long = [f for f in specs if self.is_long(f, choices(f.name))]
        if not long:
            return {}
        return {"similarity": {f.name: with_interval(mean, [
            similarity(self.compared(f, r["parsed"].get(f.name)), self.compared(f, r["gold"].get(f.name)))
            if r["parsed"] is not None else 0.0 for r in rows], samples) for f in long}}


INVALID = "(invalid)"  # the confusion matrix's column for a prediction outside a class field's choices
NULL = "(null)"  # an optional class field's class for null


class Enum(Text):
    """`enum`: classification, a value is one of the field's choices; macro-F1 and a confusion matrix."""

    name = "enum"
    groundable = patterned = False
    classes = True
    headline_rank = 1

    def declaration_problem(self, spec):
        if spec.choices is None and spec.choices_file is None:
            return "an enum field needs its choices (choices or choices_file)"
        if spec.choices is not None and not any(c.strip() for c in spec.choices):
            return f"an enum field needs at least one class (a choice that is not empty), got {spec.choices}"
        return super().declaration_problem(spec)

    def pairs(self, spec: FieldSpec, rows: Rows, written: dict[str, str]) -> list[tuple[str, str | None]]:
        """(gold class, predicted class or None: unparseable or outside the choices), classes as `written`."""
        out = []
        for r in rows:
            p = self.value(spec, r["parsed"].get(spec.name)) if r["parsed"] is not None else INVALID
            g = self.value(spec, r["gold"].get(spec.name))
            out.append((written.get(g, g), written.get(p)))
        return out

    def written(self, spec: FieldSpec, choices: Choices) -> dict[str, str]:
        """Each class as compared -> as the recipe writes it, in its order."""
        out: dict[str | None, str] = {}
        for choice in choices(spec.name):
            out.setdefault(self.compared(spec, choice), choice)
        if spec.optional:
            out[None] = NULL
        return out

    def metrics(self, specs, rows, choices, samples):
        """Macro-F1 and the confusion matrix (rows gold, columns predicted; INVALID: unparseable or outside the
        choices). Classes are listed as the recipe writes them, in its order."""
        out = {}
        for spec in specs:
            written = self.written(spec, choices)
            pairs = self.pairs(spec, rows, written)
            classes = [c for c in written.values() if any(c in pair for pair in pairs)]
            columns = classes + ([INVALID] if any(p is None for _, p in pairs) else [])
            counts = [[sum(1 for g, p in pairs if g == gold and (p or INVALID) == column) for column in columns]
                      for gold in classes]
            out[spec.name] = {"macro_f1": with_interval(macro_f1, pairs, samples),
                              "confusion": {"gold": classes, "predicted": columns, "counts": counts}}
        return {"enums": out}

    def headline(self, specs, choices):
        """The macro-F1 of the task's one class field (several: no single headline of this type)."""
        if len(specs) != 1:
            return None
        spec, written = specs[0], self.written(specs[0], choices)
        return Headline(f"macro-F1 of {spec.name}", lambda row: self.pairs(spec, [row], written)[0], macro_f1)


class Entities(FieldType):
    """`list[str]`: entities, compared as multisets (order-free); entity precision, recall and F1."""

    name = "list[str]"
    text = groundable = listed = True
    headline_rank = 2

    def problem(self, spec, value):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return f"must be a list of strings, got {_shown(value)}"
        if spec.max_items is not None and len(value) > spec.max_items:
            return f"has {len(value)} items, over max_items={spec.max_items}"
        return None

    def items(self, value):
        return value

    def is_placeholder(self, item):
        return placeholder(item)

    def compared(self, spec, value):
        if value is None:
            return ()
        if not isinstance(value, list):
            return NO_VALUE
        return tuple(sorted(n for v in value if (n := normalise(v, spec.normalise))))

    def vote_key(self, spec, value):
        """A list's items in any order."""
        return json.dumps(sorted(v.strip() for v in value), ensure_ascii=False)

    def voted_value(self, spec, value):
        """The items stripped, in the first answer's order."""
        return [v.strip() for v in value]

    def schema(self, spec, choices, max_enum):
        item: dict[str, Any] = {"type": "string"}
        if spec.max_chars:
            item["maxLength"] = spec.max_chars
        if choices is not None and len(choices) <= max_enum:
            item["enum"] = choices
        out = {"type": "array", "description": spec.description, "items": item}
        if spec.max_items is not None:
            out["maxItems"] = spec.max_items
        return out

    def hint(self, spec, choices):
        items = _one_of(choices) if choices is not None else "text copied from the input" if spec.grounded else "text"
        return f"a list, each item {items}; [] when there is none"

    def example(self, spec, choices):
        return [choices[0] if choices else "..."]

    def multiset(self, spec: FieldSpec, value: Any) -> Counter:
        """A value as a multiset of compared items (a wrong-typed prediction is none)."""
        c = self.compared(spec, value)
        return Counter(() if c is NO_VALUE else c)

    def slot_counts(self, spec, predicted, gold):
        """Entities as multisets: each predicted item matching a gold item is TP, each other predicted item FP,
        each gold item left unmatched FN."""
        g, p = self.multiset(spec, gold), self.multiset(spec, predicted)
        tp = sum((g & p).values())
        return tp, sum(p.values()) - tp, sum(g.values()) - tp

    def record_counts(self, specs: list[FieldSpec], row: dict) -> Counts:
        """One record's counts summed over the fields."""
        parsed = row["parsed"] or {}
        return tuple(map(sum, zip(*(self.slot_counts(f, parsed.get(f.name), row["gold"].get(f.name))
                                    for f in specs))))

    def metrics(self, specs, rows, choices, samples):
        """Precision, recall and F1 of each list field and over all of them, micro over records."""
        def prf(names: list[FieldSpec]) -> dict:
            per_record = [self.record_counts(names, r) for r in rows]
            return {k: with_interval(stat, per_record, samples)
                    for k, stat in (("precision", precision), ("recall", recall), ("f1", f1))}

        return {"entities": {**{f.name: prf([f]) for f in specs}, "overall": prf(specs)}}

    def headline(self, specs, choices):
        return Headline("entity F1 (micro, every list field)", lambda row: self.record_counts(specs, row), f1)


# A number as documents write it: a currency sign or code before or after, thousands separated by commas (in
# groups of three, so "1,5" is not 15), full-width digits (folded by NFKC first).
CURRENCY = r"(?:[¥$€£₩₹]|US\$|[A-Z]{3}|元|圆|人民币)"
WRITTEN_NUMBER = re.compile(rf"{CURRENCY}?\s*([+-]?(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?|[+-]?\.\d+)\s*{CURRENCY}?")


class Number(FieldType):
    """`float`: any finite number. A label is a JSON number; a prediction may be text that reads as one:
    "1,234.50", "¥1234.5", "１２３４.５元" and "USD 1,234.5" all read 1234.5."""

    name = "float"
    json_type = "number"

    def number(self, value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    def problem(self, spec, value):
        return None if self.number(value) else f"must be a number, got {_shown(value)}"

    def read(self, value: Any) -> Any:
        """A finite number, from a number or its text as written in documents; else NO_VALUE."""
        if value is None or isinstance(value, bool):
            return NO_VALUE
        if isinstance(value, int | float):
            return float(value) if math.isfinite(value) else NO_VALUE
        m = isinstance(value, str) and WRITTEN_NUMBER.fullmatch(normalise(value, ["strip", "width"]))
        return float(m.group(1).replace(",", "")) if m else NO_VALUE

    def hint(self, spec, choices):
        return "a JSON number, without thousands separators or currency"

    def example(self, spec, choices):
        return 1234.5

    def compared(self, spec, value):
        number = self.read(value)
        return NO_VALUE if number is NO_VALUE else round(number, 9)


class Integer(Number):
    """`int`: a whole number (2.0 is 2)."""

    name = "int"
    json_type = "integer"

    def problem(self, spec, value):
        if self.number(value) and float(value).is_integer():
            return None
        return f"must be an integer, got {_shown(value)}"

    def compared(self, spec, value):
        number = self.read(value)
        return int(number) if number is not NO_VALUE and number.is_integer() else NO_VALUE

    def hint(self, spec, choices):
        return "a whole number"

    def example(self, spec, choices):
        return 2


class Boolean(FieldType):
    """`bool`: true or false (the text "true"/"false" counts when predicted)."""

    name = "bool"
    json_type = "boolean"

    def problem(self, spec, value):
        return None if isinstance(value, bool) else f"must be true or false, got {_shown(value)}"

    def compared(self, spec, value):
        if value is None:
            return NO_VALUE
        return {"true": True, "false": False}.get(normalise(value, ["strip", "lower"]), NO_VALUE)

    def hint(self, spec, choices):
        return "true or false"

    def example(self, spec, choices):
        return False


MONTHS = {m: i for i, names in enumerate(
    [("jan", "january"), ("feb", "february"), ("mar", "march"), ("apr", "april"), ("may",), ("jun", "june"),
     ("jul", "july"), ("aug", "august"), ("sep", "sept", "september"), ("oct", "october"), ("nov", "november"),
     ("dec", "december")], 1) for m in names}
_MONTH = r"(?P<m>[a-z]+)\.?"
# Year first (2024-03-05, 2024/3/5, 2024.3.5, 20240305, 2024年3月5日), or an English month by name (March 5, 2024;
# 5 March 2024). Day-month-year in digits (03/05/2024) is refused: it reads one way in the US, another elsewhere.
DATE_FORMATS = [re.compile(p) for p in (
    r"(?P<y>\d{4})([-/.])(?P<m>\d{1,2})\2(?P<d>\d{1,2})",
    r"(?P<y>\d{4})(?P<m>\d{2})(?P<d>\d{2})",
    r"(?P<y>\d{4})\s*年\s*(?P<m>\d{1,2})\s*月\s*(?P<d>\d{1,2})\s*[日号]?",
    rf"{_MONTH}\s+(?P<d>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y>\d{{4}})",
    rf"(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+{_MONTH},?\s+(?P<y>\d{{4}})",
)]


def read_date(value: Any) -> datetime.date | object:
    """A calendar day from its text in one of DATE_FORMATS (full-width digits and case aside); else NO_VALUE."""
    if not isinstance(value, str):
        return NO_VALUE
    text = normalise(value, ["strip", "width", "lower"])
    for form in DATE_FORMATS:
        if m := form.fullmatch(text):
            month = int(m["m"]) if m["m"].isdigit() else MONTHS.get(m["m"])
            try:
                return datetime.date(int(m["y"]), month, int(m["d"])) if month else NO_VALUE
            except ValueError:  # 2025-02-30
                return NO_VALUE
    return NO_VALUE


class Date(FieldType):
    """`date`: a calendar day, answered in ISO 8601 (YYYY-MM-DD); compared as a day, so 2024年3月5日,
    2024/3/5, March 5, 2024 and ２０２４-03-05 agree."""

    name = "date"
    json_type = "string"

    def problem(self, spec, value):
        if read_date(value) is NO_VALUE:
            return f"must be a date (YYYY-MM-DD, or as 2024年3月5日 or March 5, 2024), got {_shown(value)}"
        return None

    def compared(self, spec, value):
        day = read_date(value)
        return day if day is NO_VALUE else day.isoformat()

    def schema(self, spec, choices, max_enum):
        return {"type": "string", "description": f"{spec.description} (YYYY-MM-DD)".lstrip(), "format": "date"}

    def hint(self, spec, choices):
        return "a date as YYYY-MM-DD"

    def canonical(self, spec, value):
        """ISO 8601, whichever form the label was written in: the student answers one form."""
        return read_date(value).isoformat()

    def example(self, spec, choices):
        return "2024-03-05"


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _one_of(choices: list[str]) -> str:
    """A closed set in words: its values when few, else how many."""
    if len(choices) <= 20:
        return "one of " + ", ".join(json.dumps(c, ensure_ascii=False) for c in choices)
    return f"one of {len(choices)} fixed values"


def similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / the longer length: 1.0 for equal strings (both empty included)."""
    return Levenshtein.normalized_similarity(a, b)


for _builtin in (Text(), Enum(), Entities(), Integer(), Number(), Boolean(), Date()):
    register(_builtin)
