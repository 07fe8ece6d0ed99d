"""`xtk data generate NAME`: the recipe's data builder (its `data.generator`, `module:function`) writes the
recipe's data files; the same recipe always gives the same bytes.

A builder takes no arguments (its seed and sources are pinned in its module) and returns
{filename: JSONL rows or text}.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from toolkit.io.jsonl import write_jsonl, write_text
from toolkit.task.recipe import Recipe, load_recipe, load_ref
from toolkit.io.errors import RecipeError
from toolkit.io.trust import Consent, inside

PROJECT = Path(__file__).resolve().parent.parent.parent


def normalise_text(text: str) -> str:
    """The form two generated texts are compared in for de-duplication and leakage checks: no whitespace."""
    return re.sub(r"\s+", "", text)


def draw_unique(record: Callable[[], tuple[str, dict]], n: int, prefix: str, taken: set[str]) -> list[dict]:
    """`n` rows {id: PREFIX-00001..., text, label} from a generator's `record()`, skipping any text `taken` holds
    after normalise_text (and adding each drawn one to it): no repeat within a file or across the files drawn
    with the same `taken`."""
    rows = []
    while len(rows) < n:
        text, label = record()
        if (key := normalise_text(text)) not in taken:
            taken.add(key)
            rows.append({"id": f"{prefix}-{len(rows) + 1:05d}", "text": text, "label": label})
    return rows


def find_recipe(name: str) -> Path:
    """A recipe by file name, or by name in ./recipes/ or this project's recipes/."""
    if name.endswith((".yaml", ".yml")):
        return Path(name)
    for folder in (Path("recipes"), PROJECT / "recipes"):
        if (folder / f"{name}.yaml").is_file():
            return folder / f"{name}.yaml"
    raise RecipeError(f"no recipe {name!r}: expected recipes/{name}.yaml or a path to a recipe file")


def generate(name: str, out_dir: str | Path | None = None, consent: Consent | None = None) -> list[Path]:
    """`xtk data generate NAME`: the named recipe's files into out_dir (default datasets/<recipe name>)."""
    return write_data(load_recipe(find_recipe(name), consent=consent), out_dir)


def write_data(recipe: Recipe, out_dir: str | Path | None = None) -> list[Path]:
    """Write the recipe's generated files into out_dir (default: datasets/<recipe name> beside its recipes/)."""
    if recipe.data.generator is None:
        raise RecipeError(f"recipe {recipe.name!r} names no data builder (data.generator)")
    files = load_ref(recipe.data.generator, "data.generator")()
    out = Path(out_dir) if out_dir is not None else recipe.path(f"datasets/{recipe.name}")
    # Every name first: a builder's file name must not climb out of the folder, and nothing is half-written.
    try:
        paths = [inside(out, filename, f"data.generator {recipe.data.generator} returned the file name")
                 for filename in files]
    except ValueError as exc:
        raise RecipeError(str(exc)) from None
    return [write_text(p, content) if isinstance(content, str) else write_jsonl(p, content)
            for p, content in zip(paths, files.values())]
