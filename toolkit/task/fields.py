"""Field types: everything a field's type decides, one object a type, in one registry (`TYPES`).

A recipe's field is declared by a `FieldSpec`; its `type` names a registered `FieldType`, which decides how a
label is validated, the form values are compared in, the JSON schema for guided decoding, which items grounding
and closed sets check, the key votes are counted by, how one record's field counts as true/false positives and
false negatives, the type's own metrics, and the headline a task of such fields is judged by. Nothing outside
the type objects branches on a type's name. Adding a type: docs/field-types.md.

The built-in types are in toolkit/task/builtin_types.py (registered as the package toolkit.task loads); scoring
with them, in toolkit/task/scoring.py. Any single-valued field may be optional (`type: float?` or
`optional: true`): null is then a value.
"""
from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from toolkit.io.trust import FILE
from toolkit.maths.stats import Counts

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

# Digits written as one number: groups apart by up to three spaces, hyphens or dashes, dots or brackets
# ("138 1234 5678", "(021) 6234-5678", "138—1234—5678").
NUMBER = re.compile(r"\d+(?:[\s\-\u2010-\u2015.()（）]{1,3}\d+)*")


def normalise(value, steps: list[str]) -> str:
    """A value as compared: non-strings (null, numbers) become text first, then each normaliser in order."""
    s = "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    for step in steps:
        s = NORMALISERS[step](s)
    return s


def hidden_character(value: str) -> str | None:
    """The first character of `value` that nobody sees and no normaliser removes (a byte-order mark, a zero-width
    space, a control character), named, or None. A label must match a choice character for character: a choice
    holding one would refuse every answer (after it was paid for)."""
    for ch in value:
        if ch != "\t" and unicodedata.category(ch) in ("Cf", "Cc"):
            name = "a byte-order mark" if ch == "\ufeff" else unicodedata.name(ch, "a control character").lower()
            return (f"U+{ord(ch):04X}, {name}: a character nobody sees, which no answer carries; remove it" +
                    (" (save the file as UTF-8 without a byte-order mark)" if ch == "\ufeff" else ""))
    return None


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


class FieldType:
    """Everything one field type decides. The defaults suit a scalar; a type overrides what differs."""

    name: ClassVar[str]
    text: ClassVar[bool] = False  # values are strings: choices apply (normalisers apply to every type)
    groundable: ClassVar[bool] = False  # `grounded: true` may ask its items to occur in the input
    patterned: ClassVar[bool] = False  # `pattern` applies: a value, normalised, matches it whole
    listed: ClassVar[bool] = False  # a value is a list of items: max_items applies
    # The FieldSpec key holding a nested type's sub-fields (`fields` of an object, `items` of a list of objects);
    # None: a leaf (toolkit/task/nested.py).
    sub_fields: ClassVar[str | None] = None
    takes_currency: ClassVar[bool] = False  # `currency` (the code of an amount written without one) applies
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
        if spec.pattern is not None and not self.patterned:
            return f"pattern applies to {_listing(t.name for t in TYPES.values() if t.patterned)} fields only"
        if spec.optional and self.listed:
            return f"a {self.name} field cannot be optional: an empty list already says there is none"
        for key in ("fields", "items"):
            if getattr(spec, key) is not None and self.sub_fields != key:
                owners = _listing(t.name for t in TYPES.values() if t.sub_fields == key)
                return f"{key} (sub-fields) applies to {owners} fields only, not to type {self.name}"
        if spec.currency is not None and not self.takes_currency:
            return f"currency applies to {_listing(t.name for t in TYPES.values() if t.takes_currency)} fields only"
        if spec.choices is not None:
            if not spec.choices:
                return "at least one choice: a closed set with none refuses every label"
            seen: dict[str, str] = {}
            for choice in spec.choices:
                if hidden := hidden_character(choice):
                    return f"choice {choice!r} holds {hidden}"
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

    def pattern(self, spec: FieldSpec) -> str | None:
        """The regular expression a non-empty value matches whole after the field's normalisers (None: any): the
        field's `pattern`. A type whose values have a form of their own returns it here."""
        return spec.pattern

    def is_placeholder(self, item: str) -> bool:
        """An item that stands in for a value the writer did not have (未知, n/a, "-"): never grounded, even where
        the input holds it (无 in 无锡市)."""
        return False

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


TYPES: dict[str, FieldType] = {}


def register(field_type: FieldType) -> FieldType:
    """Make a type usable as a recipe field's `type` (by its name). Registering a name again replaces it."""
    TYPES[field_type.name] = field_type
    return field_type


def _listing(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


class FieldSpec(BaseModel):
    """One field of a recipe's answer (`fields:` in the recipe, a list of these)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str = Field(description="The field's key in every answer and label.")
    type: str = Field(default="str", description="What the field holds: a registered field type (docs/field-types.md); "
                      "built in: str, enum (one of its choices: classification), list[str] (entities, compared "
                      "order-free), int, float, bool, date (ISO 8601), money (\"1234.50 CNY\"), object (sub-fields "
                      "under `fields`) and list (objects of the sub-fields under `items`); a trailing ? (float?) "
                      "makes it optional.")
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
    pattern: str | None = Field(default=None, description=(
        "A regular expression a non-empty value must match whole, after the normalisers: `[0-9]{11}` with "
        "normalise [digits] is a phone of 11 digits. A label that breaks it is refused, and it is the JSON "
        "schema's pattern, so guided decoding writes no value the check refuses. Written for every engine: no ^ "
        "or $ (it matches the whole value), no backslash ([0-9] for a digit, [.] for a dot), no (?...) group. "
        "str fields."))
    max_items: int | None = Field(default=None, gt=0, description=(
        "A list's most items: the schema's maxItems, which ends a list a looping model would run on."))
    choices: list[str] | None = Field(default=None, description=(
        "A closed set: the values a label may take. Labels outside it are refused; sets of up to 512 values "
        "become the schema's enum."))
    choices_file: Annotated[str | None, FILE] = Field(default=None, description=(
        "The closed set one value a line in a UTF-8 file (recipe-relative; an empty line allows \"\"), instead "
        "of choices."))
    fields: list[FieldSpec] | None = Field(default=None, description=(
        "An object field's sub-fields, each a field as any other (its own type, normalisers, grounded, choices), "
        "nested at most 3 objects or lists deep."))
    items: list[FieldSpec] | None = Field(default=None, description=(
        "A list field's sub-fields: each item of the list is an object of them (max_items bounds the list)."))
    currency: str | None = Field(default=None, description=(
        "A money field's ISO 4217 code (CNY, EUR, USD) of an amount written without a currency."))

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

    @field_validator("currency")
    @classmethod
    def _a_currency_code(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch("[A-Z]{3}", value):
            raise ValueError("an ISO 4217 code: three capital letters (CNY, EUR, USD)")
        return value

    @field_validator("pattern")
    @classmethod
    def _a_pattern_every_engine_compiles(cls, value: str | None) -> str | None:
        """A pattern vLLM's xgrammar and llama.cpp's converter (the GGUF's grammar) both compile, as Python reads it:
        llama.cpp's takes no backslash escape (\\d, \\.) and no (?...) group; the schema anchors it (`schema`)."""
        if value is None:
            return value
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"a regular expression ({exc})") from None
        outside = re.sub(r"\[[^]]*\]", "", value)  # [^ ] and [$] are classes, not anchors
        for bad, where, what in (("\\", value, "no backslash escape (llama.cpp's grammar takes none): a class instead, "
                                                 "[0-9] for a digit, [.] for a dot"),
                                 ("(?", outside, "no (?...) group (llama.cpp's grammar takes none): a plain group"),
                                 ("^", outside, "no ^ or $: the pattern matches the whole value"),
                                 ("$", outside, "no ^ or $: the pattern matches the whole value")):
            if bad in where:
                raise ValueError(what)
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
    """Why items of a grounded field's value are not grounded, one reason an item, each naming it ([]: every item
    is, or the field is not grounded). A grounded item occurs in the input after the field's normalisers, is no
    placeholder of its type (未知, n/a, "-": a label says "not given" with ""), and, under the digits normaliser,
    is one whole number of the input, not part of a longer one (a phone one digit short)."""
    if not spec.grounded or value is None:
        return []
    field_type, haystack = kind(spec), normalise(text, spec.normalise)
    numbers = number_groups(text) if "digits" in spec.normalise else None
    out = []
    for item in field_type.items(value):
        n = normalise(item, spec.normalise)
        if field_type.is_placeholder(item):
            out.append(f"{item!r} is a placeholder, not a value from the input (\"\" says the input gives none)")
        elif not n:
            if item.strip():
                out.append(f"{item!r} is nothing after the normalisers {spec.normalise}")
        elif n not in haystack:
            out.append(f"{item!r} does not occur in the input")
        elif numbers is not None and not whole_number(n, numbers):
            longer = next((joined for groups in numbers if n in (joined := "".join(groups))), None)
            out.append(f"{item!r} is only part of the number {longer} in the input" if longer else
                       f"{item!r} does not occur in the input as one number")
    return out


def number_groups(text: str) -> list[list[str]]:
    """The numbers of a text (full-width digits folded), each as its groups of digits: "138 1234 5678" is one."""
    return [re.findall(r"\d+", m.group()) for m in NUMBER.finditer(_width(text))]


def whole_number(digits: str, numbers: list[list[str]]) -> bool:
    """`digits` are whole consecutive groups of one number ("13812345678" of 138 1234 5678; not 1381234567)."""
    for groups in numbers:
        for i in range(len(groups)):
            joined = ""
            for group in groups[i:]:
                joined += group
                if len(joined) >= len(digits):
                    break
            if joined == digits:
                return True
    return False


def is_empty(spec: FieldSpec, value: Any) -> bool:
    """A value that says nothing: null, blank text. An empty list is an answer (no entity in this input), and
    numbers and booleans always say something."""
    return value is None or kind(spec).is_empty(spec, value)


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
    return or_null(spec, kind(spec).schema(spec, choices, max_enum))


def or_null(spec: FieldSpec, own: dict[str, Any]) -> dict[str, Any]:
    """A field's schema `own`, allowing null too where the field is optional."""
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


