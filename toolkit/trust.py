"""What a recipe or a bake-off spec may do on its own, and what needs the user's consent on the command line.

A recipe is a file from elsewhere, like a model folder: reading one must not run code, write outside its run
or grant itself trust. So, when a recipe loads:
- code it names (`baseline`, `resolver`, `data.generator`: `module:function`) is xtk's own (`toolkit.…`) unless
  the user allows the module with `--allow-code MODULE`; an allowed module is never imported from the current
  folder (where a downloaded recipe's neighbours lie);
- `student.trust_remote_code` takes effect only with `--trust-remote-code` on the command line;
- names that become paths (the recipe's name, the profile's) are one plain path part;
- every file it names (prompts, choices files, data and test files) is read and checked now, before anything
  is paid for or trained.
Each refusal names the file, the key and its line, and the flag that would allow it. docs/trust.md says the same
for users.
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toolkit.recipe import Recipe

OWN_CODE = "toolkit"  # xtk's own package: code a recipe may always name
# One path part that cannot climb out of its folder or hide: what a recipe's and a profile's name become.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
CODE_KEYS = (("baseline",), ("resolver",), ("data", "generator"))


@dataclass(frozen=True)
class Consent:
    """What the user allowed on the command line; a recipe or a spec cannot grant any of it to itself."""

    code: tuple[str, ...] = ()  # modules (with their submodules) outside toolkit whose functions may run
    remote_code: bool = False  # model folders that ship their own Python code

    def allows(self, module: str) -> bool:
        return any(module == m or module.startswith(m + ".") for m in (OWN_CODE, *self.code))

    def argv(self) -> list[str]:
        """The same consent as command-line flags, for a child xtk (a bake-off's pairs)."""
        flags = [w for m in self.code for w in ("--allow-code", m)]
        return flags + (["--trust-remote-code"] if self.remote_code else [])


def name_problem(value: str) -> str | None:
    """Why a name cannot be one folder name, or None."""
    if SAFE_NAME.fullmatch(value) and value not in (".", ".."):
        return None
    return (f"a plain name (letters, digits, '.', '_', '-'; at most 64; it becomes a folder name), got {value!r}: "
            "no path separators, no leading '.' or '-'")


def code_problem(ref: str, consent: Consent) -> str | None:
    """Why a recipe may not run `module:function`, or None."""
    module = ref.partition(":")[0]
    if consent.allows(module):
        return None
    return (f"{ref} is code outside xtk: a recipe runs only xtk's own functions ({OWN_CODE}.…) unless you allow "
            f"its module on the command line: --allow-code {module} (only for code you trust: it runs as you)")


def import_module(module: str):
    """Import a module a recipe names. Outside toolkit, never from the current folder: Python puts it first on
    sys.path, so a file planted beside a downloaded recipe would shadow the module the user allowed."""
    if module == OWN_CODE or module.startswith(OWN_CODE + "."):
        return importlib.import_module(module)
    here = Path.cwd().resolve()
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != here]
    try:
        return importlib.import_module(module)
    finally:
        sys.path[:] = saved


def inside(folder: Path, name: str, what: str) -> Path:
    """`folder/name` for a file name from a recipe's code or data; ValueError when it would land elsewhere."""
    path = Path(name)
    if not name or path.is_absolute() or ".." in path.parts or \
            not (folder / path).resolve().is_relative_to(folder.resolve()):
        raise ValueError(f"{what} {name!r} is not a file name inside {folder}")
    return folder / path


def check_recipe(recipe: Recipe, path: Path, text: str, overridden: set[tuple], consent: Consent) -> None:
    """Everything a loaded recipe is checked for before it is used (the module docstring); RecipeError naming the
    file, the key and its line."""
    from toolkit.recipe import RecipeError, _key_lines, _where

    lines = _key_lines(text)

    def fail(loc: tuple, problem: str):
        raise RecipeError(f"{_where(path, loc, lines, recipe.profile, overridden)}: {problem}")

    if problem := name_problem(recipe.name):
        fail(("name",), f"expected {problem}")
    if recipe.profile is not None and (problem := name_problem(recipe.profile)):
        line = lines.get(("profiles", recipe.profile))
        raise RecipeError(f"{path}{f':{line}' if line else ''}: profile: expected {problem}")
    for loc in CODE_KEYS:
        ref = getattr(recipe.data, loc[1]) if loc[0] == "data" else getattr(recipe, loc[0])
        if ref and (problem := code_problem(ref, consent)):
            fail(loc, problem)
    if recipe.student.trust_remote_code and not consent.remote_code:
        fail(("student", "trust_remote_code"), "a recipe cannot grant itself trust: model code runs only with "
             "--trust-remote-code on the command line (only for a model folder you trust)")
    check_files(recipe, fail)


def check_files(recipe: Recipe, fail) -> None:
    """Every file the recipe names is read now: prompts (UTF-8, not empty), choices files (UTF-8, line by line),
    and the data and test files that exist (missing ones are built by data.generator or named by the stage that
    needs them): rows, labels and ids, a duplicate id in a test file being an error with its line."""
    from toolkit.evaluate import load_test
    from toolkit.jsonl import DataError, file_problem, iter_jsonl, read_text
    from toolkit.label import read_inputs
    from toolkit.prepare import read_records

    for which in ("teacher", "base", "student"):
        loc, p = ("prompts", which), recipe.path(getattr(recipe.prompts, which))
        if problem := file_problem(p, "a prompt file"):
            fail(loc, f"{p}: {problem}")
        try:
            empty = not read_text(p, "a prompt file").strip()
        except DataError as exc:
            fail(loc, str(exc))
        if empty:
            fail(loc, f"{p}: the prompt file is empty: write the instructions the model is given")
    for i, f in enumerate(recipe.fields):
        if f.choices_file is not None:
            p = recipe.path(f.choices_file)
            if problem := file_problem(p, "a text file of allowed values"):
                fail(("fields", i, "choices_file"), f"{p}: {problem}")
            try:
                recipe.choices(f.name)
            except DataError as exc:
                fail(("fields", i, "choices_file"), str(exc))
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
    from toolkit.jsonl import DataError

    first: dict = {}
    for line, row in rows:
        if "id" in row and row["id"] in first:
            raise DataError(path, line, f"duplicate id {row['id']!r} (first on line {first[row['id']]})")
        first.setdefault(row.get("id"), line)

