"""Knowledge tables: the rows a group of a recipe's fields may jointly take (province, city, district; category,
product, unit), columns from the most general to the most specific, read from a CSV or JSONL file.

One table serves every stage that knows the closed set: guided decoding (`answer_schema`, one JSON schema whose
`anyOf` lets the answer name only combinations the table has), labels (`Table.repair` completes a teacher's
combination where the table makes it unique) and scoring (`Table.value_error` tells a value the table lacks from
one it has, wrongly chosen).

A level declared `may_be_empty` may be "" in every branch (the text does not name it), and so may every more
specific level: an answer stops at the last level the text names. Only the most specific column may repeat a value
under different parents (28 county names are shared by 64 counties); an inner value has one parent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from toolkit.io.errors import DataError
from toolkit.io.jsonl import file_problem, iter_lines
from toolkit.io.trust import FILE

NOT_IN_TABLE = "not in the table"
WRONG_IN_TABLE = "in the table but wrong"


class TableSpec(BaseModel):
    """A recipe's binding of fields to a table (one entry of `tables:`)."""

    model_config = ConfigDict(extra="forbid")

    file: Annotated[str, FILE] = Field(description=(
        "The table, recipe-relative: a CSV file with a header line naming the fields, or a JSONL file of objects with "
        "the fields as keys; one row a line."))
    fields: list[str] = Field(min_length=2, description=(
        "The fields the table binds, from the most general level to the most specific (province, city, district)."))
    may_be_empty: list[str] = Field(default_factory=list, description=(
        "Levels that may be \"\" in any row (the text does not name them); every more specific level then may be "
        "empty too. Guided decoding allows \"\" there under every parent."))
    aliases: Annotated[str | None, FILE] = Field(default=None, description=(
        "Other spellings of the table's values, recipe-relative: a CSV file with the header `value,alias`, one "
        "spelling a line (浙江 for 浙江省, 西充 for 西充县). Read where `written` is set."))
    written: bool = Field(default=False, description=(
        "The most specific level an answer names is written in its text, by its value or an alias, and is \"\" "
        "only where the text writes none: guided decoding lets each text's answer take only the combinations "
        "the text writes (toolkit/task/written.py decides which), \"\" where it writes none."))

    @model_validator(mode="after")
    def _levels(self) -> TableSpec:
        if len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields {self.fields} name a field twice")
        unknown = [f for f in self.may_be_empty if f not in self.fields]
        if unknown:
            raise ValueError(f"may_be_empty names {unknown}, not among the table's fields {self.fields}")
        if self.written and self.fields[-1] not in self.may_be_empty:
            raise ValueError(f"written needs may_be_empty to hold {self.fields[-1]!r}: a text that writes no "
                             f"{self.fields[-1]} must be answered \"\"")
        if self.may_be_empty:
            first = min(self.fields.index(f) for f in self.may_be_empty)
            if set(self.may_be_empty) != set(self.fields[first:]):
                raise ValueError(f"may_be_empty must hold {self.fields[first]!r} and every more specific level "
                                 f"({self.fields[first:]}): an answer that does not name one level names none below it")
        return self


@dataclass(frozen=True)
class Repair:
    """What `Table.repair` made of an answer: the answer as it stands (None when rejected), the bound fields it
    changed (field -> (was, now)), and why it was rejected."""

    answer: dict | None
    changed: dict[str, tuple[Any, str]] = field(default_factory=dict)
    reason: str | None = None

    @property
    def status(self) -> Literal["in the table", "repaired", "rejected"]:
        return "rejected" if self.answer is None else "repaired" if self.changed else "in the table"


@dataclass(frozen=True, eq=False)
class Table:
    """A loaded table: its rows as tuples in `columns` order, in file order; `digest` identifies the file's bytes
    and the declaration."""

    source: Path
    columns: tuple[str, ...]
    may_be_empty: frozenset[str]
    rows: tuple[tuple[str, ...], ...]
    digest: str
    aliases: tuple[tuple[str, str], ...] = ()  # (value, another spelling of it)
    written: bool = False  # guided decoding narrows each answer to what its text writes

    @cached_property
    def combinations(self) -> tuple[tuple[str, ...], ...]:
        """Every combination an answer may take: the rows, then each row's parents with the more specific levels
        "" from every level that may be empty; no repeats."""
        emptied = [row[:i] + ("",) * (len(row) - i) for row in self.rows
                   for i, c in enumerate(self.columns) if c in self.may_be_empty]
        return tuple(dict.fromkeys([*self.rows, *emptied]))

    @cached_property
    def _allowed(self) -> frozenset[tuple[str, ...]]:
        return frozenset(self.combinations)

    @cached_property
    def _values(self) -> tuple[frozenset[str], ...]:
        return tuple(frozenset(c[i] for c in self.combinations) for i in range(len(self.columns)))

    def values(self, column: str) -> frozenset[str]:
        """The values a column takes in some combination ("" where the level may be empty)."""
        return self._values[self.columns.index(column)]

    def branches(self, combinations: Sequence[tuple[str, ...]] | None = None) -> list[dict[str, dict]]:
        """One schema per parent path of `combinations` (default: every one), field -> schema: the parents as
        const, the most specific level as the enum of its values under them ("" included where it may be
        empty)."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for c in self.combinations if combinations is None else combinations:
            groups.setdefault(c[:-1], []).append(c[-1])
        return [{**{col: {"const": v} for col, v in zip(self.columns, parents)},
                 self.columns[-1]: {"const": leaves[0]} if len(leaves) == 1 else {"enum": leaves}}
                for parents, leaves in groups.items()]

    def contains(self, answer: dict) -> bool:
        return tuple(answer.get(c) for c in self.columns) in self._allowed

    def value_error(self, column: str, predicted: Any) -> str:
        """How a wrong predicted value of a bound field is wrong, for scoring: NOT_IN_TABLE (the column never
        takes it) or WRONG_IN_TABLE (a value the table has, not the right one)."""
        return WRONG_IN_TABLE if isinstance(predicted, str) and predicted in self.values(column) else NOT_IN_TABLE

    def repair(self, answer: dict, text: str = "") -> Repair:
        """The answer with its bound fields made a combination of the table, where the table makes that unique.

        The most specific level the answer names is kept, and must be a value the table has; the combinations
        holding it are narrowed by the answer's own more general values (the nearest level that narrows them
        first), then by those written whole in `text`; the more specific levels the answer leaves "" stay "" where
        allowed. One combination left: the answer takes it. Values are compared as given (normalise them first).
        """
        cols = self.columns
        given = [answer.get(c) for c in cols]
        bad = [c for c, v in zip(cols, given) if not isinstance(v, str)]
        if bad:
            return Repair(None, reason=f"{', '.join(bad)}: not a string")
        if tuple(given) in self._allowed:
            return Repair(dict(answer))
        named = [i for i, v in enumerate(given) if v]
        if not named:
            return Repair(None, reason=f"{cols[0]} is empty and may not be")
        d = named[-1]
        if given[d] not in self._values[d]:
            return Repair(None, reason=f"{cols[d]} {given[d]!r} is not in the table")
        found = [c for c in self.combinations if c[d] == given[d]]
        found = [c for c in found if not any(c[d + 1:])] or found  # keep "" below where it is allowed
        for i in reversed(range(d)):  # the answer's own parents, the nearest first
            if len(found) > 1 and (agree := [c for c in found if c[i] == given[i]]):
                found = agree
        if len(found) > 1 and text and (written := [c for c in found if any(v and v in text for v in c[:d])]):
            found = written
        if len(found) > 1:
            places = "; ".join(" / ".join(v for v in c if v) for c in found[:5])
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            return Repair(None, reason=f"{cols[d]} {given[d]!r} lies under {len(found)} parents ({places}{more}); "
                          "neither the answer nor the text tells which")
        changed = {c: (was, now) for c, was, now in zip(cols, given, found[0]) if was != now}
        return Repair({**answer, **dict(zip(cols, found[0]))}, changed)


def load_table(path: str | Path, spec: TableSpec, aliases: str | Path | None = None) -> Table:
    """The table `spec` binds, read from `path` (a .csv or .jsonl file) with every row checked, with the
    spellings of its aliases file (`aliases`, the path of `spec.aliases`): a bad file raises DataError naming its
    line and what was expected. Loaded once per file content."""
    path = Path(path)
    data = _read(path, "a table file (.csv or .jsonl)")
    aliases_path = Path(aliases) if aliases is not None else None
    declaration = json.dumps([spec.fields, sorted(spec.may_be_empty), spec.written]).encode()
    alias_bytes = _read(aliases_path, "an aliases file (.csv)") if aliases_path else b""
    digest = hashlib.sha256(declaration + b"\0" + data + b"\0" + alias_bytes).hexdigest()
    table = _load(path, tuple(spec.fields), frozenset(spec.may_be_empty), digest)
    if aliases_path is None and not spec.written:
        return table
    return _spelt(table, aliases_path, spec.written, digest)


@lru_cache(maxsize=16)
def _spelt(table: Table, aliases: Path | None, written: bool, digest: str) -> Table:
    return replace(table, aliases=_aliases(aliases, table) if aliases else (), written=written, digest=digest)


def _read(path: Path, expected: str) -> bytes:
    problem = file_problem(path, expected)
    if problem:
        raise DataError(path, None, problem)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(path, None, f"cannot read: {exc.strerror}") from None


def _aliases(path: Path, table: Table) -> tuple[tuple[str, str], ...]:
    """(value, alias) pairs of an aliases file, every line checked against the table it spells."""
    if path.suffix != ".csv":
        raise DataError(path, None, "an aliases file is a .csv file with the header value,alias")
    values = {v for c in table.rows for v in c if v}
    reader = csv.reader((line for _, line in _lines(path, "a CSV file")), strict=True)
    out: dict[tuple[str, str], int] = {}
    try:
        header = next((cells for cells in reader if cells), None)
        if header != ["value", "alias"]:
            raise DataError(path, reader.line_num or 1, "expected the header line value,alias" +
                            ("" if header else " (the file is empty)"))
        for cells in reader:
            if not cells:
                continue
            lineno = reader.line_num
            if len(cells) != 2:
                raise DataError(path, lineno, f"{len(cells)} values, expected 2 (value, alias)")
            value, alias = cells
            if value not in values:
                raise DataError(path, lineno, f"{value!r} is not a value of the table {table.source.name}")
            if not alias or alias != alias.strip() or alias == value:
                raise DataError(path, lineno, f"alias {alias!r}: expected another spelling of {value!r}, without "
                                "whitespace around it")
            if (value, alias) in out:
                raise DataError(path, lineno, f"duplicated line: the same as line {out[value, alias]}")
            out[value, alias] = lineno
    except csv.Error as exc:
        raise DataError(path, reader.line_num, f"not valid CSV ({exc})") from None
    return tuple(out)


@lru_cache(maxsize=16)
def _load(path: Path, columns: tuple[str, ...], may_be_empty: frozenset[str], digest: str) -> Table:
    if path.suffix == ".csv":
        records = _csv_records(path, columns)
    elif path.suffix == ".jsonl":
        records = _jsonl_records(path, columns)
    else:
        raise DataError(path, None, "a table is a .csv or .jsonl file")
    rows: list[tuple[str, ...]] = []
    first_seen: dict[tuple[str, ...], int] = {}
    parent_of: list[dict[str, tuple[tuple[str, ...], int]]] = [{} for _ in columns]
    for lineno, row in records:
        for i, (col, v) in enumerate(zip(columns, row)):
            if v != v.strip():
                raise DataError(path, lineno, f"{col} {v!r} has whitespace around it")
            if not v and col not in may_be_empty:
                allowed = f"only {', '.join(sorted(may_be_empty, key=columns.index))} may" if may_be_empty else \
                    "no level may"
                raise DataError(path, lineno, f"{col} is empty; {allowed} be empty")
            if v and i and not row[i - 1]:
                raise DataError(path, lineno, f"{col} is {v!r} under an empty {columns[i - 1]}")
        if row in first_seen:
            raise DataError(path, lineno, f"duplicated row: the same as line {first_seen[row]}")
        first_seen[row] = lineno
        for i in range(1, len(columns) - 1):  # inner levels: one parent each
            v, parents = row[i], row[:i]
            if v and parent_of[i].setdefault(v, (parents, lineno))[0] != parents:
                was, line = parent_of[i][v]
                raise DataError(path, lineno, f"contradictory row: {columns[i]} {v!r} lies under "
                                f"{' / '.join(parents)} here but under {' / '.join(was)} on line {line}; only the most "
                                f"specific level ({columns[-1]}) may repeat a value under different parents")
        rows.append(row)
    if not rows:
        raise DataError(path, 1, f"no rows: expected one row a line after the header, with {', '.join(columns)}")
    return Table(path, columns, may_be_empty, tuple(rows), digest)


def _lines(path: Path, expected: str) -> Iterator[tuple[int, str]]:
    """The file's lines, refusing a byte order mark (it would be read as part of the first value)."""
    for lineno, line in iter_lines(path, expected):
        if lineno == 1 and line.startswith("\ufeff"):
            raise DataError(path, 1, "starts with a byte order mark (BOM); save the file as UTF-8 without BOM")
        yield lineno, line


def _csv_records(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(line, row in `columns` order) of a CSV file whose header names exactly the bound fields."""
    expected = f"a header line naming {', '.join(columns)}"
    reader = csv.reader((line for _, line in _lines(path, "a CSV file")), strict=True)
    try:
        header = next((cells for cells in reader if cells), None)
        if header is None:
            raise DataError(path, 1, f"the file is empty; expected {expected}, then one row a line")
        where = reader.line_num
        _check_columns(path, where, header, columns, "column")
        order = [header.index(c) for c in columns]
        for cells in reader:
            if not cells:
                continue
            if len(cells) != len(header):
                raise DataError(path, reader.line_num, f"{len(cells)} values, expected {len(header)} "
                                f"({', '.join(header)})")
            yield reader.line_num, tuple(cells[i] for i in order)
    except csv.Error as exc:
        raise DataError(path, reader.line_num, f"not valid CSV ({exc})") from None


def _jsonl_records(path: Path, columns: tuple[str, ...]) -> Iterator[tuple[int, tuple[str, ...]]]:
    """(line, row in `columns` order) of a JSONL file of objects keyed by exactly the bound fields."""
    seen = False
    for lineno, line in _lines(path, "a JSONL file"):
        if not line.strip():
            continue
        seen = True
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(path, lineno, f"expected a JSON object with keys {', '.join(columns)}")
        _check_columns(path, lineno, list(obj), columns, "key")
        not_text = [c for c in columns if not isinstance(obj[c], str)]
        if not_text:
            raise DataError(path, lineno, f"{', '.join(not_text)}: expected a string (\"\" for an empty level)")
        yield lineno, tuple(obj[c] for c in columns)
    if not seen:
        raise DataError(path, 1, f"the file is empty; expected one JSON object a line with keys {', '.join(columns)}")


def _check_columns(path: Path, lineno: int, named: list[str], columns: tuple[str, ...], what: str) -> None:
    unknown = [c for c in named if c not in columns]
    if unknown:
        raise DataError(path, lineno, f"{what} {unknown[0]!r} is not a field the table binds "
                        f"(expected {', '.join(columns)})")
    missing = [c for c in columns if c not in named]
    if missing:
        raise DataError(path, lineno, f"no {what} for field {missing[0]!r} (expected {', '.join(columns)})")
    if len(named) != len(set(named)):
        raise DataError(path, lineno, f"a {what} is named twice: {', '.join(named)}")


def table_csv(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as the CSV text load_table reads: a header line, then one row a line."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([columns, *rows])
    return buf.getvalue()


def answer_schema(properties: dict[str, dict], tables: Sequence[Table],
                  allowed: Sequence[tuple[tuple[str, ...], ...] | None] | None = None) -> dict[str, Any]:
    """One answer's JSON schema for guided decoding with the tables' constraint: an `anyOf` of objects, one per
    combination of the tables' branches, each with every field in `properties`' order (the recipe's), the bound
    fields as the branch's const or enum and the others by reference to their own schema (`properties`). With no
    table, the plain object schema. `allowed`, one entry a table: the combinations that table lets this answer
    take (None: all of them). Compiled once per table content, field schemas and combinations allowed."""
    key = json.dumps([[t.digest for t in tables], properties], ensure_ascii=False)
    return json.loads(_compiled(key, tuple(tables), tuple(allowed or (None,) * len(tables))))


@lru_cache(maxsize=256)
def _compiled(key: str, tables: tuple[Table, ...], allowed: tuple[tuple[tuple[str, ...], ...] | None, ...]) -> str:
    properties: dict[str, dict] = json.loads(key)[1]
    names = list(properties)
    bound = [c for t in tables for c in t.columns]
    missing = [c for c in bound if c not in properties]
    if missing or len(bound) != len(set(bound)):
        raise ValueError(f"the tables bind {bound}: each must be one of the answer's fields {names}, bound once")
    if not tables:
        return json.dumps({"type": "object", "properties": properties, "required": names,
                           "additionalProperties": False}, ensure_ascii=False)
    free = {n: properties[n] for n in names if n not in bound}
    refs = {n: {"$ref": "#/$defs/" + n.replace("~", "~0").replace("/", "~1")} for n in free}
    branches = []
    for parts in itertools.product(*(t.branches(a) for t, a in zip(tables, allowed))):
        chosen = {k: v for part in parts for k, v in part.items()}
        branches.append({"type": "object", "properties": {n: chosen.get(n) or refs[n] for n in names},
                         "required": names, "additionalProperties": False})
    schema = {"anyOf": branches, **({"$defs": free} if free else {})}
    return json.dumps(schema, ensure_ascii=False)
