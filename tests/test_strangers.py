"""Recipes from strangers, round two (issue 45): what a downloaded recipe, spec or folder could still do without
the user's consent, each hole closed where its kind of input is read, and each case reproduced here."""

import pytest

from conftest import RECIPE, write_recipe
from toolkit.cli import main
from toolkit.io.errors import RecipeError
from toolkit.task.recipe import load_recipe

FIELD = "fields:\n  - {name: a, description: anything}\n"


def failure(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2, return what it printed on stderr."""
    assert main(argv) == 2
    return capsys.readouterr().err


# --- 6. YAML: aliases expand within a bound ---------------------------------------------------------------

def bomb(levels: int) -> str:
    """Anchors nested in anchors, ten times the last at each level: 10**levels values in a few lines."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_before_it_is_built(tmp_path):
    path = write_recipe(tmp_path, FIELD, extra=bomb(6))  # a million values: past the bound, yet cheap to build
    with pytest.raises(RecipeError, match=r"typed.yaml:\d+: its aliases expand to more than 100,000 values"):
        load_recipe(path)
    path.write_text(path.read_text() + "loop: &l [1, *l]\n")
    with pytest.raises(RecipeError, match="typed.yaml:"):
        load_recipe(path)


def test_an_alias_bomb_in_an_override_is_refused(capsys):
    nested = "[&a [1,1,1,1,1,1,1,1,1,1]" + "".join(
        f", &{b} [{','.join(['*' + a] * 10)}]" for a, b in zip("abcde", "bcdef")) + "]"
    err = failure(capsys, ["recipe", "show", str(RECIPE), f"train.extra_args={nested}"])
    assert "aliases expand to more than 100,000 values" in err
