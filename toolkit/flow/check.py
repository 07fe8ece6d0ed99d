"""A recipe's data checked before anything is paid for or trained (its prompts and choices files are read where it
loads, toolkit/task/recipe.py). Above toolkit/task/recipe.py: the readers it uses know recipes.

- `check_files`, wherever a command that trains or evaluates loads a recipe: every data and test file it names
  that exists is read row by row with the stages' own readers, so a file that passes here does not fail later
  (docs/trust.md); an error names the key, the file and its line.
- `check_backend`, the part of it that predict and serve need (they read no data file): eval.backend is one
  registered.
- `check_recipe`, for `xtk recipe check` and before `xtk run`'s first stage: also no value may still say TODO
  (what `xtk init` could not know), the teacher's key must be set where only the teacher can supply the training
  labels, every file named must exist (or be built by data.generator), nothing the recipe uses may be another task's (what a copied recipe leaves
  behind: a warning), a hand-written teacher or base prompt names every field (a warning), and the sizes must fit
  the rows there are (said, never cut silently).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import toolkit.tasks
from toolkit.infer.backends import backend_names
from toolkit.io.jsonl import BadRows, iter_jsonl
from toolkit.io.errors import DataError
from toolkit.data.init import TODO
from toolkit.data.label import read_inputs
from toolkit.data.prepare import check_label, load_test, read_records
from toolkit.task.recipe import Recipe
from toolkit.io.errors import RecipeError


def _named(recipe: Recipe) -> list[tuple[tuple, str | None, object]]:
    """(key, file, reader returning its rows) of every data and test file key."""
    d = recipe.data
    named = [(("data", "test", i), t, lambda p: load_test(recipe, p)) for i, t in enumerate(d.test)]
    return named + [(("data", "pool"), d.pool, lambda p: read_inputs(p, d.max_input_chars)),
                    (("data", "labelled"), d.labelled, lambda p: read_records(recipe, p)),
                    (("data", "pool_gold"), d.pool_gold, lambda p: _gold_rows(recipe, p))]


def check_backend(recipe: Recipe) -> None:
    """eval.backend names a registered backend (a str, not a Literal: a registered backend may be named)."""
    if recipe.eval.backend not in backend_names():
        recipe.fail_at(("eval", "backend"),
                       f"no backend {recipe.eval.backend!r}; backends: {', '.join(backend_names())}")


def check_files(recipe: Recipe) -> dict[tuple, int]:
    """The data and test files the recipe names that exist (missing ones are built by data.generator or named by
    the stage that needs them) are read now: rows, labels and ids, a duplicate id in a test file being an error
    with its line. Returns the rows each file read has, by its key. eval.backend names a registered backend."""
    check_backend(recipe)
    rows = {}
    for loc, name, read in _named(recipe):
        if name and recipe.path(name).exists():
            try:
                rows[loc] = len(read(recipe.path(name)))
            except DataError as exc:
                recipe.fail_at(loc, str(exc))
    return rows


def _gold_rows(recipe: Recipe, path: Path) -> list[int]:
    """pool_gold's rows {id, label}: each label of the recipe's fields, each id once (the bad rows together)."""
    first: dict = {}
    bad = BadRows(path)

    def check(line: int, row: dict) -> None:
        if "id" not in row or "label" not in row:
            raise DataError(path, line, "expected a gold row {id, label}")
        if row["id"] in first:
            raise DataError(path, line, f"duplicate id {row['id']!r} (first on line {first[row['id']]})")
        first[row["id"]] = line
        check_label(recipe, row["label"], path, line)

    for line, row in iter_jsonl(path, bad):
        try:
            check(line, row)
        except DataError as exc:
            bad.add(exc)
    bad.check()
    return list(first.values())


@dataclass
class Checked:
    """What `check_recipe` found: the rows of each file read (by key), the warnings and the notes (what `xtk run`
    will do first), each naming its key."""
    rows: dict[tuple, int]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_recipe(recipe: Recipe) -> Checked:
    """Everything `check_files` checks, and: a named file that is missing is an error unless data.generator
    may build it (it is in datasets/<recipe name>/); a key naming another task's generator, baseline, data or
    prompts is a warning (a copied recipe's leftover), and so are a long prompt that leaves a field unnamed and
    sizes larger than the rows available (saying what will happen instead)."""
    leftovers = [f"{recipe.at(loc)}: {value} is task {others[0]}'s, not {recipe.name}'s: left from the recipe "
                 "this one was copied from? Point it at this task's own (or remove the key)"
                 for loc, value in _task_keys(recipe)
                 if (others := sorted(set(re.split(r"[/\\.:]", value)) & _other_tasks(recipe)))]
    missing = [(loc, name) for loc, name, _ in _named(recipe) if name and not recipe.path(name).exists()]
    built = recipe.path(f"datasets/{recipe.name}")  # where data.generator writes (toolkit/datagen)
    absent = [f"{recipe.at(loc)}: {recipe.path(name)}: no such file (misspelt?), and "
              + (f"data.generator writes only into {built}" if recipe.data.generator else "no data.generator builds it")
              for loc, name in missing if not (recipe.data.generator and recipe.path(name).resolve().is_relative_to(
                  built.resolve()))]
    unready = [*todos(recipe), *teacher_key_needed(recipe)]
    if absent or unready:  # the leftovers said too: a copied recipe's missing files are usually its source's
        raise RecipeError("\n  ".join(["not ready to run" if unready else "missing files", *unready, *absent,
                                        *(f"warning: {w}" for w in leftovers)]))
    checked = Checked(check_files(recipe), leftovers)
    checked.notes += [f"{recipe.at(loc)}: {name} is missing: `xtk run` builds it first with data.generator "
                      f"{recipe.data.generator}" for loc, name in missing]
    # The long prompts define the answer: a field they never name is one the teacher may never write (its labels
    # rejected) and the base model never guesses. A warning: a prompt may name a field in other words.
    for which in ("teacher", "base"):
        if (given := getattr(recipe.prompts, which)) and (
                unnamed := [n for n in recipe.field_names if n not in recipe.prompt(which)]):
            checked.warnings.append(f"{recipe.at(('prompts', which))}: {given} never names {', '.join(unnamed)}: "
                                    "name every field (or leave the key out: xtk renders the prompt from the fields)")
    _sizes(recipe, checked)
    return checked


def todos(recipe: Recipe) -> list[str]:
    """Every recipe value still marked TODO (xtk init leaves what it cannot know so), each with its line."""
    found = []

    def walk(loc: tuple, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk((*loc, k), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk((*loc, i), v)
        elif isinstance(value, str) and TODO in value:
            found.append(f"{recipe.at(loc)}: {value!r}: replace each {TODO} with what it asks for")

    walk((), recipe.model_dump(exclude={"root", "profile"}))
    return found


def teacher_key_needed(recipe: Recipe) -> list[str]:
    """The teacher's key, where the training labels can come from the teacher alone: data.pool with neither
    data.labelled nor data.pool_gold (the order toolkit/flow/pipeline.stage_data takes them in)."""
    d, t = recipe.data, recipe.teacher
    if d.labelled or not d.pool or d.pool_gold or os.environ.get(t.api_key_env):
        return []
    return [f"{recipe.at(('teacher', 'api_key_env'))}: ${t.api_key_env} is not set, and the teacher labels "
            f"data.pool ({d.pool}), the only source of training labels: set it (export {t.api_key_env}=...), or "
            "name your labelled JSONL as data.labelled"]


def _task_keys(recipe: Recipe) -> list[tuple[tuple, str]]:
    """The keys naming code or files that belong to one task."""
    d = recipe.data
    keys = [(("data", k), getattr(d, k)) for k in ("generator", "labelled", "pool", "pool_gold")]
    keys += [(("data", "test", i), t) for i, t in enumerate(d.test)]
    keys += [(("prompts", k), getattr(recipe.prompts, k)) for k in ("teacher", "base", "student")]
    keys += [(("baseline",), recipe.baseline)]
    keys += [(("tables", i, "file"), t.file) for i, t in enumerate(recipe.tables)]
    return [(loc, v) for loc, v in keys if v]


def _other_tasks(recipe: Recipe) -> set[str]:
    """The names of the other tasks a project knows: its recipes and xtk's own task packages."""
    names = {p.stem for p in (recipe.root / "recipes").glob("*.yaml")}
    names |= {p.name for p in Path(toolkit.tasks.__file__).parent.iterdir() if (p / "__init__.py").is_file()}
    return names - {recipe.name}


def _sizes(recipe: Recipe, checked: Checked) -> None:
    """The recipe's sizes against the rows its files have: training rows, the validation split, a step's
    batch, the evaluation limits."""
    d, t, warn = recipe.data, recipe.train, checked.warnings.append
    source = ("data", "labelled") if d.labelled else ("data", "pool")
    available = checked.rows.get(source)
    if available is None:
        return
    what = f"{getattr(d, source[1])} has {available} rows"
    if d.train_records > available:
        warn(f"{recipe.at(('data', 'train_records'))}: is {d.train_records}, but {what}: training takes at "
             f"most those {available} (less duplicates, test leaks and the validation split)")
    rows = min(available, d.train_records)
    n_val = max(round(rows * d.val_fraction), int(d.val_fraction > 0 and rows > 1))
    if rows - n_val < 1:
        recipe.fail_at(source, f"{what}: nothing is left to train on after the validation split "
                       f"(data.val_fraction {d.val_fraction}); add rows")
    if d.val_fraction > 0 and n_val == 0:
        warn(f"{recipe.at(('data', 'val_fraction'))}: {d.val_fraction} of {rows} row holds out none: no "
             "validation loss (nor early stopping)")
    step = t.per_device_train_batch_size * t.gradient_accumulation_steps * t.nproc_per_node * t.nnodes
    if step > rows - n_val:
        warn(f"{recipe.at(('train', 'per_device_train_batch_size'))}: one optimiser step takes {step} rows "
             f"(batch x accumulation x processes), more than the {rows - n_val} training rows: an epoch is one "
             "step of fewer rows")
    tests = [n for loc, n in checked.rows.items() if loc[:2] == ("data", "test")]
    for key in ("limit", "base_limit"):
        limit = getattr(recipe.eval, key)
        if limit and tests and limit > max(tests):
            warn(f"{recipe.at(('eval', key))}: {limit}, but the test files have at most {max(tests)} rows: all "
                 "of them are scored")
