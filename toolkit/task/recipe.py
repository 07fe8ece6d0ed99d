"""Recipes: one YAML file per task, typed, with profiles and `key=value` overrides.

A recipe is validated as a whole after the profile and the overrides are applied, and every error names the
file, the key (with its line when it came from the file) and what was expected. Its sections are typed in
toolkit/task/schema.py.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from string import Template
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, PrivateAttr, ValidationError, field_validator, model_validator

from toolkit.io.errors import DataError, RecipeError
from toolkit.io.jsonl import file_problem, iter_lines, read_text
from toolkit.io.trust import CODE_KEYS, RECIPE_CODE, Consent, NamesFiles, argv_problem, code_problem, import_module, \
    key_env_problem, name_problem, own, path_problem
from toolkit.io.yamlfile import UniqueKeyLoader, describe, key_lines, read_yaml_mapping
from toolkit.task.fields import FieldSpec, hidden_character, kind, normalise, not_classes
from toolkit.task.nested import MAX_DEPTH, example_of, hint_of, is_nested, schema_of, specs, too_deep
from toolkit.task.schema import (SWIFT_FLAGS, AtKey, CodeRef, DataSpec, EvalSpec, ExportSpec, Prompts, Strict,
                                 StudentSpec, SynthSpec, TeacherSpec, TrainSpec)
from toolkit.task.tables import Table, TableSpec, answer_schema, load_table
from toolkit.task.written import written_combinations


# The teacher's and base prompts where a recipe gives no file and no prompts.template.
PROMPT_TEMPLATE = """\
$task

Read the input and answer with one JSON object and nothing else. Its keys, in this order:
$fields

An answer looks like this (the values are only examples):
$example
"""


# A larger closed set is checked after decoding but left out of the schema: an enum that size makes guided
# decoding's grammar slow to build. A field bound to a table (`tables:`) keeps its whole set there, by its branches.
MAX_ENUM = 512


class Recipe(Strict):
    name: str = Field(description=(
        "The task's name: the run folder (runs/<name>/...) and the datasets folder are named by it."))
    description: str = Field(default="", description="One line saying what the task is, for people.")
    fields: list[FieldSpec] = Field(description=(
        "The answer's fields, in the order the student writes them (docs/field-types.md)."))
    prompts: Prompts = Field(default_factory=Prompts, description=(
        "The prompt files, recipe-relative; those left out are rendered from the fields."))
    data: DataSpec = Field(description="Where the training and test data come from.")
    teacher: TeacherSpec = Field(description="The large model that labels the pool, by an OpenAI-compatible endpoint.")
    student: StudentSpec = Field(description="The small model to fine-tune.")
    train: TrainSpec = Field(description="ms-swift training settings (`swift sft`).")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation settings.")
    export: ExportSpec = Field(default_factory=ExportSpec, description="`xtk export` settings (docs/export.md).")
    synth: SynthSpec = Field(default_factory=SynthSpec, description=(
        "How `xtk synth` has the teacher write new raw inputs in the style of your examples (docs/data.md)."))
    baseline: CodeRef | None = Field(default=None, description=(
        "The baseline evaluated as `rules`, as module:function: text -> the answer's JSON text, or a @trained one "
        "that first learns from the run's training split (toolkit/infer/classical.py); null: not evaluated."))
    tables: list[TableSpec] = Field(default_factory=list, description=(
        "Knowledge tables: each binds a group of fields to the rows they may jointly take (province -> city -> "
        "district). Guided decoding writes only their combinations, a teacher's label outside them is repaired "
        "where the table makes it unique (else rejected), and scoring tells a value not in the table from one in it "
        "but wrong (docs/recipes.md)."))
    classification_head: bool = Field(default=False, description=(
        "Also train a linear classification head with ms-swift itself (`swift sft --task_type seq_cls`) and evaluate "
        "it as `head` (toolkit/infer/head.py): the encoder-style alternative to a generative student. One enum field "
        "only: its choices are the head's labels."))
    root: Path = Field(default=Path("."), description=(
        "Set by xtk, not in the file: where relative paths in the recipe are resolved from (the folder holding "
        "recipes/)."))
    profile: str | None = Field(default=None, description=(
        "Set by xtk from --profile, not in the file: the profile applied (a key of the file's `profiles:` mapping, "
        "each overriding any keys)."))
    _choices_cache: dict[str, list[str] | None] = PrivateAttr(default_factory=dict)
    _allowed_cache: dict[str, frozenset[str] | None] = PrivateAttr(default_factory=dict)
    _tables: list[Table] | None = PrivateAttr(default=None)
    _where: Any = PrivateAttr(default=None)  # set by load_recipe: a key as `file:line: key 'a.b'`

    def at(self, loc: tuple) -> str:
        """Where a key is: the recipe file, the key `loc` and its line (a recipe not loaded from a file: the key
        alone)."""
        return self._where(loc) if self._where is not None else ".".join(map(str, loc))

    def fail_at(self, loc: tuple, problem: str):
        """Raise RecipeError naming where the key `loc` is (`at`) and the problem."""
        raise RecipeError(f"{self.at(loc)}: {problem}")

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, fields: list[FieldSpec]) -> list[FieldSpec]:
        names = [f.name for f in fields]
        if not names:
            raise ValueError("at least one field")
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"each field name once; given more than once: {', '.join(twice)}")
        return fields

    @model_validator(mode="after")
    def _nested_at_most_max_depth(self) -> Recipe:
        for i, f in enumerate(self.fields):
            if (loc := too_deep(f)) is not None:
                raise AtKey(("fields", i, *loc), f"objects and lists nested at most {MAX_DEPTH} deep: this one is "
                            f"{MAX_DEPTH + 1} deep")
        return self

    @model_validator(mode="after")
    def _spread_over_fields(self) -> Recipe:
        unknown = [f for f in self.data.spread_over if f not in self.field_names]
        if unknown:
            raise AtKey(("data", "spread_over"),
                        f"data.spread_over names {unknown}, not fields of this recipe ({self.field_names})")
        return self

    @model_validator(mode="after")
    def _each_test_file_once(self) -> Recipe:
        seen: dict[Path, int] = {}
        for i, name in enumerate(self.data.test):
            if (first := seen.setdefault(self.path(name).resolve(), i)) != i:
                raise AtKey(("data", "test", i), f"each test file once: {name} is data.test[{first}] "
                            f"({self.data.test[first]}) again, and its records would count twice")
        return self

    @model_validator(mode="after")
    def _tables_bind_fields(self) -> Recipe:
        seen: dict[str, int] = {}
        for i, spec in enumerate(self.tables):
            for name in spec.fields:
                if name not in self.field_names:
                    raise AtKey(("tables", i, "fields"), f"{name!r} is not a field of this recipe ({self.field_names})")
                if is_nested(self.field(name)):
                    raise AtKey(("tables", i, "fields"), f"{name!r} is a {self.field(name).type} field: a table binds "
                                "fields of one value each")
                if (first := seen.setdefault(name, i)) != i:
                    raise AtKey(("tables", i, "fields"), f"{name!r} is bound by tables[{first}] already: a field "
                                "belongs to one table")
        return self

    @model_validator(mode="after")
    def _synth_balance_has_choices(self) -> Recipe:
        name = self.synth.balance
        if name is not None and (name not in self.field_names or (
                self.field(name).choices is None and self.field(name).choices_file is None)):
            raise AtKey(("synth", "balance"), f"synth.balance names {name!r}: expected a field with choices of this "
                        f"recipe ({[f.name for f in self.fields if f.choices or f.choices_file]})")
        return self

    @model_validator(mode="after")
    def _head_has_one_enum(self) -> Recipe:
        if self.classification_head and (len(self.fields) != 1 or not_classes(self.fields)):
            found = [f"{f.name}: {f.type}" for f in self.fields]
            raise AtKey(("classification_head",), "classification_head needs exactly one field, of type enum (its "
                        f"choices are the head's labels); this recipe has {found}")
        return self

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def path(self, relative: str) -> Path:
        """A path named in the recipe, resolved against the project root the recipe lives in."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p

    def prompt(self, which: Literal["teacher", "base", "student"]) -> str:
        """The prompt a role is given: the recipe's file, else rendered from the fields."""
        if (given := getattr(self.prompts, which)) is not None:
            return self.path(given).read_text(encoding="utf-8").strip()
        names = ", ".join(self.field_names)
        if which == "student":
            return f"Extract as JSON: {names}."
        answer = {f.name: example_of(f, self.choices) for f in self.fields}
        template = PROMPT_TEMPLATE if self.prompts.template is None else self.path(self.prompts.template).read_text(
            encoding="utf-8")
        try:
            return Template(template).substitute(
                task=self.description or f"Extract {names} from the input.", keys=names,
                fields="\n".join(f"- {hint_of(f, self.choices)}" for f in self.fields),
                example=json.dumps(answer, ensure_ascii=False)).strip()
        except (KeyError, ValueError) as exc:
            self.fail_at(("prompts", "template"), f"{self.prompts.template}: {exc.args[0]!r} is not one of $task, "
                         "$fields, $keys, $example ($$ for a dollar sign)")

    def field(self, name: str) -> FieldSpec:
        """A field by its name, or a nested field's sub-field by its key (`seller.name`, `items[].unit_price`)."""
        for f in self.fields:
            for key, spec, _ in specs(f):
                if key == name:
                    return spec
        raise KeyError(f"no field {name!r}; the recipe has {self.field_names}")

    def choices(self, field_name: str) -> list[str] | None:
        """A field's allowed values as written (inline or read from its choices_file, once), or None; a sub-field's
        by its key."""
        if field_name not in self._choices_cache:
            f = self.field(field_name)
            if f.choices_file is not None:
                values = self._choices_file(f)
            else:
                values = f.choices
            self._choices_cache[field_name] = None if values is None else list(dict.fromkeys(values))
        return self._choices_cache[field_name]

    def _choices_file(self, f: FieldSpec) -> list[str]:
        """A choices file's values, one a line; DataError with the line of one holding a character nobody sees (a
        byte-order mark), and for a file with none, or an enum's with no class."""
        path, values = self.path(f.choices_file), []
        for line, text in iter_lines(path, "a text file of allowed values"):
            value = text.rstrip("\r\n")  # line endings only: the field's normalisers decide what else is insignificant
            if hidden := hidden_character(value):
                raise DataError(path, line, f"{value!r} holds {hidden}")
            values.append(value)
        if not values or (kind(f).classes and not any(v.strip() for v in values)):
            raise DataError(path, None, "no values: write the allowed values one a line")
        return values

    def allowed_values(self, field_name: str) -> frozenset[str] | None:
        """The values a field's label may take, normalised with the field's normalisers; None: any value."""
        if field_name not in self._allowed_cache:
            values, steps = self.choices(field_name), self.field(field_name).normalise
            self._allowed_cache[field_name] = None if values is None else frozenset(normalise(v, steps) for v in values)
        return self._allowed_cache[field_name]

    def choices_source(self, field_name: str) -> str:
        """Where a field's allowed values come from, for messages."""
        return self.field(field_name).choices_file or f"fields.{field_name}.choices"

    def loaded_tables(self) -> list[Table]:
        """The recipe's tables, read once (DataError naming the table file's line where one is bad)."""
        if self._tables is None:
            self._tables = [load_table(self.path(spec.file), spec, spec.aliases and self.path(spec.aliases))
                            for spec in self.tables]
        return self._tables

    def table_of(self, field_name: str) -> Table | None:
        """The table a field is bound to, or None."""
        return next((t for t in self.loaded_tables() if field_name in t.columns), None)

    def json_schema(self, text: str | None = None) -> dict[str, Any]:
        """The JSON schema of one answer, for guided decoding (vLLM, llama.cpp, predict, serve, export): the
        fields' own schemas, with the tables' combinations where the recipe binds fields to tables. Given the
        answer's `text`, a table declared `written` allows only the combinations that text writes
        (toolkit/task/written.py); without it, every combination (export's schema.json, an OpenAI chat)."""
        properties = {f.name: schema_of(f, self.choices, MAX_ENUM) for f in self.fields}
        tables = self.loaded_tables()
        allowed = [written_combinations(t, text) if t.written and text is not None else None for t in tables]
        return answer_schema(properties, tables, allowed)

    def public_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"root"})


def load_ref(ref: str, key: str):
    """The function a recipe key names as `module:function`; RecipeError naming the key when it is not there, or
    when it is xtk's but not registered for the key. Which code a recipe may name is checked where it loads, with
    the user's consent (toolkit/io/trust.py)."""
    module, _, name = ref.partition(":")
    try:
        found = getattr(import_module(module), name, None)
    except ImportError as exc:
        raise RecipeError(f"recipe key {key}: {ref}: cannot import {module} ({exc})") from None
    if not callable(found):
        raise RecipeError(f"recipe key {key}: {ref}: {module} has no function {name}")
    kind = key.rpartition(".")[2]
    if own(module) and RECIPE_CODE[kind].get(ref) is not found:
        raise RecipeError(f"recipe key {key}: {ref} is not one of xtk's {kind} functions")
    return found


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.max_steps=5` -> (['train', 'max_steps'], 5); the value is read as YAML, so types survive."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r}: expected key=value, e.g. train.max_steps=5")
    try:
        value = yaml.load(raw, Loader=UniqueKeyLoader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def _apply_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {'.'.join(keys)}: '{k}' is not a section")
    node[keys[-1]] = value


def _where(path: Path, loc: tuple, lines: dict[tuple, int], profile: str | None, overridden: set[tuple],
           missing: bool = False) -> str:
    """`file:line: key 'a.b'` for a key of the recipe, the line taken from the profile where it set the key."""
    dotted = ".".join(str(p) for p in loc)
    if any(loc[:n] in overridden for n in range(1, len(loc) + 1)):
        return f"{path}: key '{dotted}' (from a command-line override)"
    line = (lines.get(("profiles", profile) + loc) if profile else None) or lines.get(loc)
    if line is None and missing:
        line = lines.get(loc[:-1])
    return f"{path}:{line}: key '{dotted}'" if line else f"{path}: key '{dotted}'"


def _format_errors(path: Path, exc: ValidationError, lines: dict[tuple, int], profile: str | None,
                   overridden: set[tuple]) -> str:
    def loc(err: dict) -> tuple:
        return tuple(err["loc"]) + getattr((err.get("ctx") or {}).get("error"), "loc", ())

    out = [f"{_where(path, loc(err), lines, profile, overridden, err['type'] == 'missing')}: {describe(err)}"
           for err in exc.errors()]
    return "invalid recipe\n  " + "\n  ".join(out)


# Set by load_recipe itself: a recipe file or an override giving them would pass the keyword twice.
RESERVED = {"root": "where the recipe's relative paths start: the project the recipe lives in",
            "profile": "the profile chosen with --profile"}


def load_recipe(path: str | Path, profile: str | None = None, overrides: list[str] = (),
                consent: Consent | None = None) -> Recipe:
    """Read a recipe, apply a profile and `key=value` overrides, and validate the result; then check what it
    names against what the user allowed on the command line (`consent`, toolkit/io/trust.py)."""
    path = Path(path)
    text, raw = read_yaml_mapping(path, "recipe file", "a mapping of keys at the top level", RecipeError)
    profiles = raw.pop("profiles", None) or {}
    if profile is not None:
        if profile not in profiles:
            raise RecipeError(f"{path}: no profile {profile!r}; the recipe has: {', '.join(profiles) or 'none'}")
        raw = _deep_merge(raw, profiles[profile])
    overridden: set[tuple] = set()
    for given in overrides:  # not `text`: the YAML text still gives the error messages their line numbers
        keys, value = parse_override(given)
        _apply_override(raw, keys, value)
        overridden.add(tuple(keys))
    for key, meaning in RESERVED.items():
        if key in raw:
            where = _where(path, (key,), key_lines(text), profile, overridden)
            raise RecipeError(f"{where}: not a recipe key: xtk sets it ({meaning}); remove it")
    # Relative paths in a recipe are relative to the project root: the parent of recipes/.
    root = path.resolve().parent.parent if path.resolve().parent.name == "recipes" else path.resolve().parent
    try:
        recipe = Recipe(**raw, root=root, profile=profile)
    except ValidationError as exc:
        raise RecipeError(_format_errors(path, exc, key_lines(text), profile, overridden)) from None
    _check_consent(recipe, path, text, overridden, consent or Consent())
    _check_own_files(recipe)
    return recipe


def _check_own_files(recipe: Recipe) -> None:
    """The prompts (readable UTF-8, not empty), choices files (UTF-8, line by line) and tables (every row) the
    recipe names are read now, not when a stage first needs them (the data and test files: toolkit/flow/check.py)."""
    fail = recipe.fail_at
    for which in ("teacher", "base", "student", "template"):
        if (given := getattr(recipe.prompts, which)) is None:
            continue
        loc, p = ("prompts", which), recipe.path(given)
        if problem := file_problem(p, "a prompt file"):
            fail(loc, f"{p}: {problem}")
        try:
            text = read_text(p, "a prompt file")
        except DataError as exc:
            fail(loc, str(exc))
        if not text.strip():
            fail(loc, f"{p}: the prompt file is empty: write the instructions the model is given")
    if recipe.prompts.template is not None:
        recipe.prompt("teacher")  # a placeholder it does not know, named now
    for i, field in enumerate(recipe.fields):
        for key, f, loc in specs(field, loc=("fields", i)):
            if f.choices_file is not None:
                p = recipe.path(f.choices_file)
                if problem := file_problem(p, "a text file of allowed values"):
                    fail((*loc, "choices_file"), f"{p}: {problem}")
                try:
                    recipe.choices(key)
                except DataError as exc:
                    fail((*loc, "choices_file"), str(exc))
    for i, spec in enumerate(recipe.tables):
        try:
            load_table(recipe.path(spec.file), spec)
            if spec.aliases:
                load_table(recipe.path(spec.file), spec, recipe.path(spec.aliases))
        except DataError as exc:
            fail(("tables", i, "aliases" if spec.aliases and Path(exc.path) == recipe.path(spec.aliases) else "file"),
                 str(exc))


def named_files(model: BaseModel, loc: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """(key, file name) for every file the recipe names: the values of every key marked as naming files (NamesFiles),
    in every section, field and list."""
    for name, info in type(model).model_fields.items():
        value, here = getattr(model, name), loc + (name,)
        marker = next((m for m in info.metadata if isinstance(m, NamesFiles)), None)
        if marker is not None:
            values = enumerate(value) if isinstance(value, list) else [(None, value)]
            yield from ((here if i is None else here + (i,), v) for i, v in values
                        if v is not None and (marker.only is None or marker.only(v)))
        elif isinstance(value, BaseModel):
            yield from named_files(value, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from named_files(item, here + (i,))


def _check_consent(recipe: Recipe, path: Path, text: str, overridden: set[tuple], consent: Consent) -> None:
    """What a loaded recipe may do on its own (toolkit/io/trust.py's docstring); RecipeError naming the file, the
    key and its line. The files it names are read by toolkit/flow/check.py."""
    lines = key_lines(text)
    recipe._where = lambda loc: _where(path, loc, lines, recipe.profile, overridden)
    fail = recipe.fail_at

    if problem := name_problem(recipe.name):
        fail(("name",), f"expected {problem}")
    if recipe.profile is not None and (problem := name_problem(recipe.profile)):
        line = lines.get(("profiles", recipe.profile))
        raise RecipeError(f"{path}{f':{line}' if line else ''}: profile: expected {problem}")
    for loc in CODE_KEYS:
        ref = getattr(recipe.data, loc[1]) if loc[0] == "data" else getattr(recipe, loc[0])
        if ref and (problem := code_problem(ref, loc[-1], consent)):
            fail(loc, problem)
    if problem := argv_problem(recipe.train.extra_args, SWIFT_FLAGS, "swift", consent):
        fail(("train", "extra_args"), problem)
    if problem := key_env_problem(recipe.teacher.api_key_env, consent):
        fail(("teacher", "api_key_env"), problem)
    for loc, name in named_files(recipe):
        if problem := path_problem(recipe.path(name), recipe.root, consent):
            fail(loc, problem)
    if recipe.student.trust_remote_code and not consent.remote_code:
        fail(("student", "trust_remote_code"), "a recipe cannot grant itself trust: model code runs only with "
             "--trust-remote-code on the command line (only for a model folder you trust)")
