"""Every data and test file a recipe names is read and checked before anything is paid for or trained (its
prompts and choices files are read where it loads, toolkit/recipe.py): the readers are the stages' own, so a file that passes here does not fail later (docs/trust.md). Above toolkit/recipe.py: the readers
it uses know recipes."""

from __future__ import annotations

from pathlib import Path

from toolkit.backends import backend_names
from toolkit.evaluate import load_test
from toolkit.jsonl import DataError, iter_jsonl
from toolkit.label import read_inputs
from toolkit.prepare import read_records
from toolkit.recipe import Recipe


def check_files(recipe: Recipe) -> None:
    """The data and test files the recipe names that exist (missing ones are built by data.generator or named by
    the stage that needs them) are read now: rows, labels and ids, a duplicate id in a test file being an error
    with its line."""
    fail = recipe.fail_at
    if recipe.eval.backend not in backend_names():  # a str, not a Literal: a registered backend may be named
        fail(("eval", "backend"), f"no backend {recipe.eval.backend!r}; backends: {', '.join(backend_names())}")
    d = recipe.data
    named = [(("data", "test", i), t, lambda p: load_test(recipe, p)) for i, t in enumerate(d.test)]
    named += [(("data", "pool"), d.pool, lambda p: read_inputs(p, d.max_input_chars)),
              (("data", "labelled"), d.labelled, lambda p: read_records(recipe, p)),
              (("data", "pool_gold"), d.pool_gold, lambda p: _unique_ids(iter_jsonl(p), p))]
    for loc, name, read in named:
        if name and recipe.path(name).exists():
            try:
                read(recipe.path(name))
            except DataError as exc:
                fail(loc, str(exc))


def _unique_ids(rows, path: Path) -> None:
    first: dict = {}
    for line, row in rows:
        if "id" in row and row["id"] in first:
            raise DataError(path, line, f"duplicate id {row['id']!r} (first on line {first[row['id']]})")
        first.setdefault(row.get("id"), line)
