"""Nested fields: `object` (named sub-fields, under `fields:`) and `list` (a list of such objects, under `items:`).
Every leaf is a field of its own type (toolkit/task/fields.py): it is type-checked, normalised, grounded, held to
its choices and scored by that type.

A declared leaf has a key (`seller.name`, `items[].unit_price`): a leaf's choices and its figure in the metrics
are kept by it. A leaf of one value has a path (`items[2].unit_price`, items counted from 0): what a label's
error names. The items of a list are compared by an assignment over their similarity (scipy's
linear_sum_assignment), not by position: a missing or extra item makes its leaves wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, NamedTuple

from rapidfuzz.distance import Levenshtein

from toolkit.maths.stats import proportion
from toolkit.task.fields import (NO_VALUE, Choices, FieldSpec, FieldType, Rows, canonical, example, hint, is_empty,
                                 kind, or_null, register, schema, type_problem, voted_value)

MAX_DEPTH = 3  # objects and lists inside one another: deeper than this is refused (a recipe no one can read)
MISSING = object()  # one side has nothing here: an unparseable answer, an item only the other side has


def _shown(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:80]


def _keys_problem(children: list[FieldSpec], value: Any) -> str | None:
    """Why `value` is not an object of exactly these sub-fields (None: it is)."""
    names = [c.name for c in children]
    if not isinstance(value, dict):
        return f"must be an object with the keys {names}, got {_shown(value)}"
    missing, extra = [n for n in names if n not in value], [k for k in value if k not in names]
    if missing or extra:
        return f"must have the keys {names}; missing {missing}, unexpected {extra}"
    return None


class Nested(FieldType):
    """What `object` and `list` share: their sub-fields are fields; they have no choices, grounding or pattern of
    their own (their leaves may). Their schema, prompt line and example need each leaf's choices, which the recipe
    holds: `schema_of`, `hint_of` and `example_of` below build them."""

    def children(self, spec: FieldSpec) -> list[FieldSpec]:
        return getattr(spec, self.sub_fields) or []

    def child_key(self, key: str, name: str) -> str:
        raise NotImplementedError

    def objects(self, value: Any, path: str) -> list[tuple[str, dict]]:
        """The objects of a (type-checked) value, each with its path."""
        raise NotImplementedError

    def own_problem(self, spec: FieldSpec, value: Any) -> tuple[str, str] | None:
        """This level's problem (its leaves are checked apart): (path below the field, problem) or None."""
        raise NotImplementedError

    def declaration_problem(self, spec):
        if problem := super().declaration_problem(spec):
            return problem
        names = [c.name for c in self.children(spec)]
        if not names:
            return f"at least one sub-field under `{self.sub_fields}`: a {self.name} field of none says nothing"
        if twice := sorted({n for n in names if names.count(n) > 1}):
            return f"each sub-field name once; given more than once: {', '.join(twice)}"
        return None

    def problem(self, spec, value):
        """The first problem anywhere in the value, with the path of the leaf it is in."""
        found = shape_problem(spec, value)
        return found and f"{found[1]} (at {found[0]})"

    def object_value(self, spec: FieldSpec, value: Any) -> Any:
        """One object as compared: its sub-fields' values in order (a missing key: the empty value)."""
        if not isinstance(value, dict):
            return NO_VALUE
        return tuple(kind(c).value(c, value.get(c.name)) for c in self.children(spec))

    def object_canonical(self, spec: FieldSpec, value: dict) -> dict:
        return {c.name: canonical(c, value[c.name]) for c in self.children(spec)}

    def object_voted(self, spec: FieldSpec, value: dict) -> dict:
        return {c.name: voted_value(c, value[c.name]) for c in self.children(spec)}

    def vote_key(self, spec, value):
        """The leaves' values as compared (a list's items in any order)."""
        return json.dumps(self.value(spec, value), ensure_ascii=False, default=repr)

    def slot_counts(self, spec, predicted, gold):
        """The leaves' slots, items aligned (`leaf_pairs`); a leaf only one side has is FP or FN there."""
        total = [0, 0, 0]
        for _, leaf, p, g in leaf_pairs(spec, predicted, gold):
            tp, fp, fn = kind(leaf).slot_counts(leaf, None if p is MISSING else p, None if g is MISSING else g)
            counts = (0, 0, tp + fn) if p is MISSING else (0, tp + fp, 0) if g is MISSING else (tp, fp, fn)
            total = [a + b for a, b in zip(total, counts)]
        return tuple(total)


class Object(Nested):
    """`object`: named sub-fields (`fields:`), compared leaf by leaf."""

    name = "object"
    json_type = "object"
    sub_fields = "fields"

    def child_key(self, key, name):
        return f"{key}.{name}"

    def objects(self, value, path):
        return [(path, value)]

    def own_problem(self, spec, value):
        problem = _keys_problem(self.children(spec), value)
        return problem and ("", problem)

    def is_empty(self, spec, value):
        """An object whose every leaf says nothing."""
        return all(is_empty(c, value[c.name]) for c in self.children(spec))

    def compared(self, spec, value):
        return self.object_value(spec, {} if value is None else value)

    def canonical(self, spec, value):
        return self.object_canonical(spec, value)

    def voted_value(self, spec, value):
        return self.object_voted(spec, value)

    def hint(self, spec, choices):
        return "an object with these keys"


class ListOf(Nested):
    """`list`: a list of objects of the sub-fields under `items:`; compared item by item, aligned by similarity."""

    name = "list"
    json_type = "array"
    sub_fields = "items"
    listed = True

    def child_key(self, key, name):
        return f"{key}[].{name}"

    def objects(self, value, path):
        return [(f"{path}[{i}]", item) for i, item in enumerate(value)]

    def own_problem(self, spec, value):
        if not isinstance(value, list):
            return "", f"must be a list of objects with the keys {[c.name for c in self.children(spec)]}, " \
                       f"got {_shown(value)}"
        if spec.max_items is not None and len(value) > spec.max_items:
            return "", f"has {len(value)} items, over max_items={spec.max_items}"
        return next(((f"[{i}]", p) for i, item in enumerate(value)
                     if (p := _keys_problem(self.children(spec), item))), None)

    def compared(self, spec, value):
        """The items as a multiset (sorted), so that their order does not matter."""
        if value is None:
            return ()
        if not isinstance(value, list):
            return NO_VALUE
        return tuple(sorted((self.object_value(spec, item) for item in value), key=repr))

    def canonical(self, spec, value):
        return [self.object_canonical(spec, item) for item in value]

    def voted_value(self, spec, value):
        return [self.object_voted(spec, item) for item in value]

    def hint(self, spec, choices):
        most = f", at most {spec.max_items}" if spec.max_items is not None else ""
        return f"a list of objects{most}, each with these keys; [] when there is none"


def is_nested(spec: FieldSpec) -> bool:
    return isinstance(kind(spec), Nested)


def specs(spec: FieldSpec, key: str | None = None, loc: tuple = ()) -> Iterator[tuple[str, FieldSpec, tuple]]:
    """(key, spec, loc below `spec`) of the field and every sub-field under it, depth first."""
    key = spec.name if key is None else key
    yield key, spec, loc
    t = kind(spec)
    if isinstance(t, Nested):
        for i, child in enumerate(t.children(spec)):
            yield from specs(child, t.child_key(key, child.name), loc + (t.sub_fields, i))


def declared_leaves(fields: list[FieldSpec]) -> list[str]:
    """The keys of the leaves of the nested fields among `fields`, in the recipe's order."""
    return [key for f in fields if is_nested(f) for key, leaf, _ in specs(f) if not is_nested(leaf)]


def too_deep(spec: FieldSpec, loc: tuple = (), level: int = 0) -> tuple | None:
    """The loc (below `spec`) of the first object or list nested more than MAX_DEPTH deep, or None."""
    t = kind(spec)
    if not isinstance(t, Nested):
        return None
    if level + 1 > MAX_DEPTH:
        return loc
    return next((found for i, child in enumerate(t.children(spec))
                 if (found := too_deep(child, loc + (t.sub_fields, i), level + 1)) is not None), None)


class Leaf(NamedTuple):
    path: str  # where in the value: items[2].unit_price
    key: str  # which declared leaf: items[].unit_price
    spec: FieldSpec
    value: Any


def leaves(spec: FieldSpec, value: Any, path: str | None = None, key: str | None = None) -> Iterator[Leaf]:
    """Every leaf of a (type-checked) value; a flat field is its own one leaf. A null object has none."""
    path, key = (spec.name if path is None else path), (spec.name if key is None else key)
    t = kind(spec)
    if not isinstance(t, Nested):
        yield Leaf(path, key, spec, value)
    elif value is not None:
        for where, obj in t.objects(value, path):
            for c in t.children(spec):
                yield from leaves(c, obj[c.name], f"{where}.{c.name}", t.child_key(key, c.name))


def shape_problem(spec: FieldSpec, value: Any, path: str | None = None) -> tuple[str, str] | None:
    """The first way a label's value does not have the field's type, as (the path of the leaf or level it is
    at, the problem), or None. A flat field's path is its name."""
    path = spec.name if path is None else path
    t = kind(spec)
    if not isinstance(t, Nested) or (value is None and spec.optional):
        problem = type_problem(spec, value)
        return problem and (path, problem)
    if found := t.own_problem(spec, value):
        return path + found[0], found[1]
    return next((found for where, obj in t.objects(value, path) for c in t.children(spec)
                 if (found := shape_problem(c, obj[c.name], f"{where}.{c.name}"))), None)


def _text(compared: Any) -> str:
    return "" if compared is NO_VALUE else compared if isinstance(compared, str) else repr(compared)


def item_similarity(spec: FieldSpec, predicted: Any, gold: dict) -> float:
    """How alike two items are: the mean over sub-fields of 1 for an equal value, else the values' normalised
    Levenshtein similarity as text."""
    if not isinstance(predicted, dict):
        return 0.0
    total = 0.0
    for c in (children := kind(spec).children(spec)):
        p, g = kind(c).value(c, predicted.get(c.name)), kind(c).value(c, gold.get(c.name))
        total += 1.0 if p is not NO_VALUE and p == g else Levenshtein.normalized_similarity(_text(p), _text(g))
    return total / len(children)


def align(spec: FieldSpec, predicted: list, gold: list) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Predicted items matched to gold items so that their similarity is the largest in total: the pairs
    (predicted index, gold index), the predicted items left over (extra) and the gold ones (missing)."""
    from scipy.optimize import linear_sum_assignment

    if not predicted or not gold:
        return [], list(range(len(predicted))), list(range(len(gold)))
    matrix = [[item_similarity(spec, p, g) for g in gold] for p in predicted]
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    pairs = [(int(i), int(j)) for i, j in zip(rows, cols)]
    return (pairs, [i for i in range(len(predicted)) if i not in set(rows)],
            [j for j in range(len(gold)) if j not in set(cols)])


def _side(spec: FieldSpec, value: Any) -> Any:
    """An object's side as compared leaf by leaf: the object; a missing one ({}: its leaves' empty values, as a
    missing key is); MISSING where it is absent (null in an optional object, a value of another type)."""
    if isinstance(value, dict):
        return value
    return {} if value is None and not spec.optional else MISSING


def leaf_pairs(spec: FieldSpec, predicted: Any, gold: Any, key: str | None = None) -> Iterator[tuple]:
    """(key, leaf spec, predicted leaf, gold leaf) for every leaf slot of one record's field, MISSING on a side
    that has none; list items aligned (`align`). A null object on both sides has no slot."""
    key = spec.name if key is None else key
    t = kind(spec)
    if not isinstance(t, Nested):
        yield key, spec, predicted, gold
        return
    if isinstance(t, ListOf):
        p_items = predicted if isinstance(predicted, list) else []
        g_items = gold if isinstance(gold, list) else []
        pairs, extra, missing = align(spec, p_items, g_items)
        objects = ([(p_items[i], g_items[j]) for i, j in pairs] + [(MISSING, g_items[j]) for j in missing] +
                   [(p_items[i], MISSING) for i in extra])
    elif predicted is None and gold is None and spec.optional:
        return
    else:
        objects = [(predicted, gold)]
    for p, g in objects:
        p, g = (MISSING if p is MISSING else _side(spec, p)), (MISSING if g is MISSING else _side(spec, g))
        for c in t.children(spec):
            yield from leaf_pairs(c, MISSING if p is MISSING else p.get(c.name),
                                  MISSING if g is MISSING else g.get(c.name), t.child_key(key, c.name))


def leaf_right(spec: FieldSpec, predicted: Any, gold: Any) -> bool:
    """One leaf slot is right: both sides have it and the values compare equal by the leaf's type."""
    if predicted is MISSING or gold is MISSING:
        return False
    p = kind(spec).value(spec, predicted)
    return p is not NO_VALUE and p == kind(spec).value(spec, gold)


def leaf_accuracy(fields: list[FieldSpec], rows: Rows) -> dict[str, dict]:
    """The accuracy of every leaf of the nested fields, by its key, over its slots in every record (an item's
    leaves once per aligned pair, missing or extra item; an unparseable answer's leaves wrong)."""
    counts = {key: [0, 0] for key in declared_leaves(fields)}  # the recipe's order, a leaf with no slot too
    for row in rows:
        for f in filter(is_nested, fields):
            predicted = MISSING if row["parsed"] is None else row["parsed"].get(f.name)
            for key, leaf, p, g in leaf_pairs(f, predicted, row["gold"].get(f.name)):
                counts[key][0] += leaf_right(leaf, p, g)
                counts[key][1] += 1
    return {key: proportion(k, n) for key, (k, n) in counts.items()}


def schema_of(spec: FieldSpec, choices: Choices, max_enum: int, key: str | None = None) -> dict[str, Any]:
    """A field's JSON schema, a nested one's with every object's keys required and no other key allowed, each
    leaf's its own (`choices`: a leaf's allowed values by its key)."""
    key = spec.name if key is None else key
    t = kind(spec)
    if not isinstance(t, Nested):
        return schema(spec, choices(key), max_enum)
    children = t.children(spec)
    obj = {"type": "object", "properties": {c.name: schema_of(c, choices, max_enum, t.child_key(key, c.name))
                                            for c in children},
           "required": [c.name for c in children], "additionalProperties": False}
    if isinstance(t, ListOf):
        own = {"type": "array", "description": spec.description, "items": obj}
        return own | ({"maxItems": spec.max_items} if spec.max_items is not None else {})
    return or_null(spec, {**obj, "description": spec.description})


def hint_of(spec: FieldSpec, choices: Choices, key: str | None = None, depth: int = 0) -> str:
    """A field's line for a prompt rendered from the fields; a nested one's sub-fields on indented lines below."""
    key = spec.name if key is None else key
    t = kind(spec)
    if not isinstance(t, Nested):
        return hint(spec, choices(key))
    indent = "  " * (depth + 1)
    return "\n".join([hint(spec, None), *(f"{indent}- {hint_of(c, choices, t.child_key(key, c.name), depth + 1)}"
                                          for c in t.children(spec))])


def example_of(spec: FieldSpec, choices: Choices, key: str | None = None) -> Any:
    """A field's value for a rendered prompt's example answer: a list of objects has one item."""
    key = spec.name if key is None else key
    t = kind(spec)
    if not isinstance(t, Nested):
        return example(spec, choices(key))
    obj = {c.name: example_of(c, choices, t.child_key(key, c.name)) for c in t.children(spec)}
    return [obj] if isinstance(t, ListOf) else obj


for _nested in (Object(), ListOf()):
    register(_nested)
