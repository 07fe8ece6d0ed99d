"""The bake-off spec and its loading: which students and which recipes, checked whole before anything runs, into
every (student, recipe) pair as a run of its own (toolkit/choose/bakeoff.py runs them)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from toolkit.flow.check import check_files
from toolkit.io.errors import RecipeError
from toolkit.io.trust import Consent
from toolkit.io.yamlfile import describe, key_lines, read_yaml_mapping
from toolkit.model.models import EMBEDDED
from toolkit.run.manifest import slug
from toolkit.task.recipe import Recipe, load_recipe
from toolkit.task.schema import Strict


class SpecError(RecipeError):
    """A bake-off spec that cannot be used; the message names the spec file, the key and its line."""


class StudentEntry(Strict):
    model: str  # an embedded name (`xtk models list`), a model folder, or a hub id
    name: str | None = None  # as the tables show it (default: model as written)
    # ms-swift's model type and template; default: the embedded model's, or the recipe's own where the student is
    # the recipe's student, else what ms-swift picks for the model.
    model_type: str | None = None
    template: str | None = None
    trust_remote_code: bool = False


class RecipeEntry(Strict):
    recipe: str  # a recipe file, relative to the project root
    name: str | None = None  # the task's name (default: the recipe's name)
    profile: str | None = None
    overrides: list[str] = Field(default_factory=list)


class Spec(Strict):
    students: list[StudentEntry] = Field(min_length=1)
    recipes: list[RecipeEntry] = Field(min_length=1)
    bootstrap: int = Field(default=1000, gt=0)  # samples behind every interval
    seed: int = 0

    @field_validator("students", mode="before")
    @classmethod
    def _names_alone(cls, students: Any) -> Any:
        """A student may be given by its model alone: `- gemma3-270m`."""
        return [{"model": s} if isinstance(s, str) else s for s in students] if isinstance(students, list) else students


@dataclass(frozen=True)
class Student:
    name: str
    model: str  # as handed to the recipe: an embedded name, an absolute folder, a hub id


@dataclass(frozen=True)
class Pair:
    task: str
    student: Student
    recipe: Recipe
    run_dir: Path


@dataclass
class Bakeoff:
    spec_path: Path
    spec: Spec
    out: Path
    students: list[Student]
    tasks: list[str]
    pairs: list[Pair]  # task-major: every student of the first task, then of the next
    entries: dict[str, RecipeEntry] = field(default_factory=dict)
    consent: Consent = Consent()  # the command line's, handed on to every pair's process

    def pair(self, task: str, student: str) -> Pair:
        return next(p for p in self.pairs if p.task == task and p.student.name == student)


def _where(path: Path, loc: tuple, lines: dict[tuple, int]) -> str:
    """`spec.yaml:7: key 'recipes.0.recipe'`, the line of the key or of the nearest section that holds it."""
    dotted = ".".join(str(p) for p in loc)
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{path}:{lines[loc[:n]]}: key '{dotted}'"
    return f"{path}: key '{dotted}'"


def _student_model(entry: StudentEntry, root: Path, where: str) -> str:
    """The student's model as a recipe takes it; a folder becomes absolute (relative to the project root)."""
    if entry.model in EMBEDDED:
        return entry.model
    path = Path(entry.model).expanduser()
    path = path if path.is_absolute() else root / path
    if entry.model.startswith((".", "/", "~")) or path.exists():
        if not path.is_dir():
            raise SpecError(f"{where}: {path}: no such model folder")
        return str(path.resolve())
    if entry.model.count("/") != 1:
        raise SpecError(f"{where}: {entry.model!r} is neither an embedded model ({', '.join(EMBEDDED)}), a folder, "
                        "nor a hub id like Qwen/Qwen3-0.6B")
    return entry.model


def student_overrides(entry: StudentEntry, model: str, recipe: Recipe) -> list[str]:
    """`student.*=...` for a pair. Type and template: the spec's, else the embedded model's, else the recipe's when
    it is the recipe's own student; else none, for ms-swift to pick (never another model's)."""
    own = model == recipe.student.model
    model_type = entry.model_type or (EMBEDDED[model].model_type if model in EMBEDDED else
                                      recipe.student.model_type if own else None)
    template = entry.template or (EMBEDDED[model].template if model in EMBEDDED else
                                  recipe.student.template if own else None)
    trust = entry.trust_remote_code or (own and recipe.student.trust_remote_code)
    return [f"student.model={json.dumps(model)}", f"student.model_type={json.dumps(model_type)}",
            f"student.template={json.dumps(template)}", f"student.trust_remote_code={json.dumps(trust)}"]


def load_spec(path: str | Path, out: str | Path | None = None, consent: Consent | None = None) -> Bakeoff:
    """Read and check a spec: every recipe loads with its profile and overrides for every student, before anything
    runs, under the command line's `consent` (a spec grants none itself). Errors name the spec file, the key and
    its line."""
    path = Path(path)
    text, raw = read_yaml_mapping(path, "bake-off spec", "a mapping with students and recipes", SpecError)
    lines = key_lines(text)
    try:
        spec = Spec(**raw)
    except ValidationError as exc:
        raise SpecError("invalid bake-off spec\n  " + "\n  ".join(
            f"{_where(path, tuple(e['loc']), lines)}: {describe(e)}" for e in exc.errors())) from None
    # Paths in a spec are relative to the project root: the parent of bakeoffs/.
    folder = path.resolve().parent
    root = folder.parent if folder.name == "bakeoffs" else folder
    out = Path(out) if out else Path("runs") / "bakeoff" / path.stem

    consent = consent or Consent()
    students = []
    for i, s in enumerate(spec.students):
        if s.trust_remote_code and not consent.remote_code:
            raise SpecError(f"{_where(path, ('students', i, 'trust_remote_code'), lines)}: a spec cannot grant trust "
                            "itself: model code runs only with --trust-remote-code on the command line (only for "
                            "model folders you trust)")
        model = _student_model(s, root, _where(path, ("students", i, "model"), lines))
        students.append(Student(s.name or s.model, model))
    _unique(path, lines, "students", [s.name for s in students], "name")
    _unique(path, lines, "students", [slug(s.model) for s in students], "model")

    pairs, tasks, entries = [], [], {}
    for i, entry in enumerate(spec.recipes):
        where = _where(path, ("recipes", i), lines)
        recipe_path = Path(entry.recipe).expanduser()
        recipe_path = recipe_path if recipe_path.is_absolute() else root / recipe_path
        if not recipe_path.is_file():
            raise SpecError(f"{_where(path, ('recipes', i, 'recipe'), lines)}: {recipe_path}: no such recipe file")
        try:
            own = load_recipe(recipe_path, entry.profile, entry.overrides, consent)
            check_files(own)
        except RecipeError as exc:
            raise SpecError(f"{where}: {exc}") from None
        task = entry.name or own.name
        tasks.append(task)
        entries[task] = entry
        for j, s in enumerate(spec.students):
            student = students[j]
            try:
                # Free decoding unless the spec asks: `base` is the free answer, `base-guided` the guided one,
                # and every student is scored the same way whatever its recipe's profile decodes with.
                recipe = load_recipe(recipe_path, entry.profile, ["eval.guided_json=false", *entry.overrides,
                                                                  *student_overrides(s, student.model, own)], consent)
            except RecipeError as exc:
                raise SpecError(f"{where}, with student {student.name}: {exc}") from None
            pairs.append(Pair(task, student, recipe, out / "runs" / slug(task) / slug(student.model)))
    _unique(path, lines, "recipes", [slug(t) for t in tasks], "name")
    return Bakeoff(path, spec, out, students, tasks, pairs, entries, consent)


def _unique(path: Path, lines: dict, section: str, values: list[str], key: str) -> None:
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if v in seen:
            raise SpecError(f"{_where(path, (section, i), lines)}: {section} {seen[v]} and {i} are both {v!r}: give "
                            f"each a distinct {key}")
        seen[v] = i
