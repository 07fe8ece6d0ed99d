"""Field types: everything a field's type decides, one object a type, in one registry (`TYPES`).

A recipe's field is declared by a `FieldSpec`; its `type` names a registered `FieldType`, which decides how a
label is validated, the form values are compared in, the JSON schema for guided decoding, which items grounding
and closed sets check, the key votes are counted by, how one record's field counts as true/false positives and
false negatives, the type's own metrics, and the headline a task of such fields is judged by. Nothing outside
this module branches on a type's name. Adding a type: docs/field-types.md.

Built in: `str` (free text, or a closed set with choices), `enum` (classification: one of its choices),
`list[str]` (entities: compared as multisets, order-free), `int`, `float` (numbers read through thousands
separators, currency signs and full-width digits), `bool`, `date` (ISO 8601, read from common Chinese and English
formats). Any single-valued field may be optional (`type: float?` or `optional: true`): null is then a value.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rapidfuzz.distance import Levenshtein

from toolkit.maths.stats import Counts, f1, macro_f1, mean, precision, recall, with_interval

Choices = Callable[[str], "list[str] | None"]  # a field's name -> its allowed values as written, or None
Rows = list[dict]  # prediction rows, each with `parsed` (None: no JSON in the answer) and `gold`


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
Normaliser = Literal["strip", "width", "digits", "lower", "nospace"]


def normalise(value, steps: list[str]) -> str:
    """A value as compared: non-strings (null, numbers) become text first, then each normaliser in order."""
    s = "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    for step in steps:
        s = NORMALISERS[step](s)
    return s


NO_VALUE = object()  # a prediction of the wrong type: equal to no gold value


def present(c: Any) -> bool:
    """A compared scalar value that says something (not "", not unreadable)."""
    return c is not NO_VALUE and c != ""


@dataclass(frozen=True)
class Headline:
    """The one figure a task is judged by (the bake-off ranks students on it)."""
    name: str
    unit: Callable[[dict], Any]  # a prediction row -> what the statistic reads of it
    statistic: Callable[[list], float]


EXACT_MATCH = Headline("whole-record exact match", lambda row: bool(row["exact"]), mean)


class FieldType:
    """Everything one field type decides. The defaults suit a scalar; a type overrides what differs."""

    name: ClassVar[str]
    text: ClassVar[bool] = False  # values are strings: choices apply (normalisers apply to every type)
    groundable: ClassVar[bool] = False  # `grounded: true` may ask its items to occur in the input
    listed: ClassVar[bool] = False  # a value is a list of items: max_items applies
    classes: ClassVar[bool] = False  # a value is one of the field's choices, read as a class: classification
    # Where the headline of a task is chosen: the type of highest rank among the recipe's fields that offers one.
    headline_rank: ClassVar[int] = 0
    json_type: ClassVar[str]  # the JSON schema's type of a scalar value

    def declaration_problem(self, spec: FieldSpec) -> str | None:
        """Why a field's declaration does not fit its type (None: it does)."""
        if not self.text and (spec.choices is not None or spec.choices_file is not None):
            return f"choices apply to text fields, not to type {self.name}"
        if spec.grounded and not self.groundable:
            groundable = _listing(t.name for t in TYPES.values() if t.groundable)
            return f"grounded applies to {groundable} fields, not to type {self.name}"
        if spec.max_items is not None and not self.listed:
            return f"max_items applies to {_listing(t.name for t in TYPES.values() if t.listed)} fields only"
        if spec.optional and self.listed:
            return f"a {self.name} field cannot be optional: an empty list already says there is none"
        if spec.choices is not None:
            seen: dict[str, str] = {}
            for choice in spec.choices:
                if (same := seen.setdefault(normalise(choice, spec.normalise), choice)) is not choice:
                    return (f"each choice once: {choice!r} is {same!r} again" + ("" if same == choice else
                            f" after the normalisers {spec.normalise}"))
        return None

    def problem(self, spec: FieldSpec, value: Any) -> str | None:
        """Why a label's value does not have the type (None: it does). Closed sets are checked apart."""
        raise NotImplementedError

    def items(self, value: Any) -> list:
        """The items of a (type-checked) value that closed sets and grounding check, one by one."""
        return [value]

    def is_empty(self, spec: FieldSpec, value: Any) -> bool:
        """A value that says nothing; a label whose every field is empty is refused."""
        return False

    def compared(self, spec: FieldSpec, value: Any) -> Any:
        """The form a value is compared in. Predictions are taken leniently (a missing key is the empty value,
        a number given as text is the number); what cannot be read as the type is NO_VALUE, equal to nothing."""
        raise NotImplementedError

    def value(self, spec: FieldSpec, value: Any) -> Any:
        """`compared`, but null stays null in an optional field: a value like any other (a missing key too)."""
        return None if value is None and spec.optional else self.compared(spec, value)

    def vote_key(self, spec: FieldSpec, value: Any) -> str:
        """Answers with the same key are the same vote."""
        return json.dumps(self.value(spec, value))  # 2 and 2.0 agree

    def voted_value(self, spec: FieldSpec, value: Any) -> Any:
        """What a vote keeps of the first answer with the winning key."""
        return value

    def schema(self, spec: FieldSpec, choices: list[str] | None, max_enum: int) -> dict[str, Any]:
        """The field's JSON schema, for guided decoding and for the teacher."""
        return {"type": self.json_type, "description": spec.description}

    def hint(self, spec: FieldSpec, choices: list[str] | None) -> str:
        """What a value is, in words, for prompts rendered from the fields."""
        return f"a JSON {self.json_type}"

    def example(self, spec: FieldSpec, choices: list[str] | None) -> Any:
        """A value of the type, for a rendered prompt's example answer (None: null, where a type gives none)."""
        return None

    def canonical(self, spec: FieldSpec, value: Any) -> Any:
        """A (type-checked) label as the student is trained to write it."""
        return value

    def slot_counts(self, spec: FieldSpec, predicted: Any, gold: Any) -> Counts:
        """One field of one record as one slot (predicted None: no answer): a non-empty prediction is TP if
        right, FP if wrong; a non-empty gold value not predicted right is FN. Empty gold and empty prediction
        count nowhere."""
        g, p = self.value(spec, gold), self.value(spec, predicted)
        if present(p) and p == g:
            return 1, 0, 0
        return 0, int(present(p)), int(present(g))

    def metrics(self, specs: list[FieldSpec], rows: Rows, choices: Choices, samples: list[list[int]]) -> dict:
        """The type's own sections of a metrics file, for the recipe's fields of this type (none by default)."""
        return {}

    def headline(self, specs: list[FieldSpec], choices: Choices) -> Headline | None:
        """The headline a task with these fields of this type is judged by, or None: another type's decides."""
        return None


class Text(FieldType):
    """`str`: free text, or a closed set with choices (small sets become the schema's enum)."""

    name = "str"
    text = groundable = True
    # A free-text field this long or longer (max_chars, or no bound) also gets a similarity score: partial
    # credit for a nearly right verbatim span, as NuExtract scores them.
    LONG_TEXT = 24

    def problem(self, spec, value):
        return None if isinstance(value, str) else f"must be a string, got {_shown(value)}"

    def is_empty(self, spec, value):
        """Text that says nothing ("" or whitespace)."""
        return not value.strip()

    def compared(self, spec, value):
        return normalise(value, spec.normalise)

    def vote_key(self, spec, value):
        if isinstance(value, str):
            return json.dumps(value.strip(), ensure_ascii=False)
        return super().vote_key(spec, value)  # null in an optional field: "null", apart from the text "null"

    def voted_value(self, spec, value):
        return value.strip() if isinstance(value, str) else value

    def schema(self, spec, choices, max_enum):
        """Strings bounded by max_chars (a looping model's string ends there under guided decoding)."""
        out: dict[str, Any] = {"type": "string", "description": spec.description}
        if spec.max_chars:
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
    groundable = False
    classes = True
    headline_rank = 1

    def declaration_problem(self, spec):
        if spec.choices is None and spec.choices_file is None:
            return "an enum field needs its choices (choices or choices_file)"
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


TYPES: dict[str, FieldType] = {}


def register(field_type: FieldType) -> FieldType:
    """Make a type usable as a recipe field's `type` (by its name). Registering a name again replaces it."""
    TYPES[field_type.name] = field_type
    return field_type


for _builtin in (Text(), Enum(), Entities(), Integer(), Number(), Boolean(), Date()):
    register(_builtin)


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _one_of(choices: list[str]) -> str:
    """A closed set in words: its values when few, else how many."""
    if len(choices) <= 20:
        return "one of " + ", ".join(json.dumps(c, ensure_ascii=False) for c in choices)
    return f"one of {len(choices)} fixed values"


def _listing(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


class FieldSpec(BaseModel):
    """One field of a recipe's answer (`fields:` in the recipe, a list of these)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field(description="The field's key in every answer and label.")
    type: str = Field(default="str", description="What the field holds: a registered field type (docs/field-types.md); "
                      "built in: str, enum (one of its choices: classification), list[str] (entities, compared "
                      "order-free), int, float, bool and date (ISO 8601); a trailing ? (float?) makes it optional.")
    description: str = Field(description="What the field holds, in words: the JSON schema's description, which "
                             "guided decoding and the teacher see.")
    optional: bool = Field(default=False, description=(
        "null is a valid label and a valid answer (a document that does not say), scored like any value; "
        "`type: float?` says the same. Single values only: a list says none with []."))
    normalise: list[Normaliser] = Field(default_factory=lambda: ["strip", "width"], description=(
        "Normalisers applied, in order, before values are compared, checked against choices or grounded: strip "
        "(outer whitespace), width (full-width to half-width), digits (digits only), lower, nospace (no "
        "whitespace)."))
    grounded: bool = Field(default=False, description="A grounded value must occur in the input after "
                           "normalisation, else the teacher's label is rejected (text and entity fields).")
    max_chars: int | None = Field(default=None, gt=0, description=(
        "The longest sensible value: the schema's maxLength, so guided decoding ends a string a looping model "
        "would otherwise run on until max_new_tokens, leaving unparseable JSON."))
    max_items: int | None = Field(default=None, gt=0, description=(
        "A list's most items: the schema's maxItems, which ends a list a looping model would run on."))
    choices: list[str] | None = Field(default=None, description=(
        "A closed set: the values a label may take. Labels outside it are refused; sets of up to 512 values "
        "become the schema's enum."))
    choices_file: str | None = Field(default=None, description=(
        "The closed set one value a line in a UTF-8 file (recipe-relative; an empty line allows \"\"), instead "
        "of choices."))

    @model_validator(mode="before")
    @classmethod
    def _question_mark_is_optional(cls, data: Any) -> Any:
        """`type: float?` is `type: float` with `optional: true`."""
        if isinstance(data, dict) and isinstance(data.get("type"), str) and data["type"].endswith("?"):
            data = {**data, "type": data["type"][:-1], "optional": True}
        return data

    @field_validator("type")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in TYPES:
            raise ValueError(" or ".join(", ".join(map(repr, TYPES)).rsplit(", ", 1)))
        return value

    @model_validator(mode="after")
    def _fits_its_type(self) -> FieldSpec:
        if self.choices is not None and self.choices_file is not None:
            raise ValueError("either choices or choices_file, not both")
        problem = kind(self).declaration_problem(self)
        if problem:
            raise ValueError(problem)
        return self


def kind(spec: FieldSpec) -> FieldType:
    """The field's type object."""
    return TYPES[spec.type]


def not_classes(specs: list[FieldSpec]) -> list[str]:
    """The fields that are not classes (a value one of its choices): empty where every field is one, as option
    likelihood, a classifier baseline and the classification head need."""
    return [f.name for f in specs if not kind(f).classes]


def type_problem(spec: FieldSpec, value: Any) -> str | None:
    """Why a label's value does not have the field's type (None: it does; null in an optional field). Closed sets
    are checked apart."""
    return None if value is None and spec.optional else kind(spec).problem(spec, value)


def disallowed(spec: FieldSpec, value: Any, allowed: frozenset[str] | None) -> list[str]:
    """The items of a (type-checked) value outside the field's closed set (`allowed`, normalised), as given;
    [] for an open field (allowed None)."""
    if allowed is None or value is None:  # null: an optional field's (type_problem refuses it elsewhere)
        return []
    return [v for v in kind(spec).items(value) if normalise(v, spec.normalise) not in allowed]


def ungrounded(spec: FieldSpec, value: Any, text: str) -> list[str]:
    """The non-empty items of a grounded field's value that do not occur in the input (after normalising)."""
    if not spec.grounded or value is None:
        return []
    haystack = normalise(text, spec.normalise)
    return [v for v in kind(spec).items(value) if (n := normalise(v, spec.normalise)) and n not in haystack]


def is_empty(spec: FieldSpec, value: Any) -> bool:
    """A value that says nothing: null, blank text. An empty list is an answer (no entity in this input), and
    numbers and booleans always say something."""
    return value is None or kind(spec).is_empty(spec, value)


def equal(spec: FieldSpec, predicted: Any, gold: Any) -> bool:
    p = kind(spec).value(spec, predicted)
    return p is not NO_VALUE and p == kind(spec).value(spec, gold)


def hint(spec: FieldSpec, choices: list[str] | None) -> str:
    """A field for a prompt rendered from the fields: its name, description and what a value is."""
    optional = "; null when the input does not say" if spec.optional else ""
    return f"{spec.name}: {spec.description} ({kind(spec).hint(spec, choices)}{optional})"


def canonical(spec: FieldSpec, value: Any) -> Any:
    """A (type-checked) label as the student is trained to write it (null kept)."""
    return None if value is None else kind(spec).canonical(spec, value)


def example(spec: FieldSpec, choices: list[str] | None) -> Any:
    return kind(spec).example(spec, choices)


def schema(spec: FieldSpec, choices: list[str] | None, max_enum: int) -> dict[str, Any]:
    """The field's JSON schema by its type; an optional field's also allows null."""
    own = kind(spec).schema(spec, choices, max_enum)
    if not spec.optional:
        return own
    return {"anyOf": [{k: v for k, v in own.items() if k != "description"}, {"type": "null"}],
            "description": own["description"]}


def vote_key(spec: FieldSpec, value: Any) -> str:
    """Answers with the same key are the same vote: stripped text; a list's items in any order."""
    return kind(spec).vote_key(spec, value)


def voted_value(spec: FieldSpec, value: Any) -> Any:
    """What a vote keeps: text stripped, a list's items stripped in the first answer's order."""
    return kind(spec).voted_value(spec, value)


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


def similarity(a: str, b: str) -> float:
    """1 - Levenshtein distance / the longer length: 1.0 for equal strings (both empty included)."""
    return Levenshtein.normalized_similarity(a, b)
