import subprocess
import sys

import pytest

from conftest import RECIPE, ROOT
from toolkit.cli import COMMANDS, main, make_parser, parse_args


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_every_command_in_the_table_parses_and_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exit_:
        make_parser().parse_args(cmd.name.split() + ["--help"])
    assert exit_.value.code == 0
    assert cmd.help in capsys.readouterr().out.replace("\n", " ").replace("  ", " ")
    assert callable(cmd.run)


def test_overrides_anywhere_after_a_recipe_command():
    args = parse_args(["recipe", "show", str(RECIPE), "train.max_steps=3", "--profile", "cpu", "eval.limit=2"])
    assert args.profile == "cpu" and args.overrides == ["train.max_steps=3", "eval.limit=2"]
    with pytest.raises(SystemExit):
        parse_args(["models", "list", "a=b"])  # takes no recipe, so no overrides


def test_bad_recipe_exits_2_with_the_reason(capsys):
    assert main(["recipe", "show", str(RECIPE), "train.lora_rank=eight"]) == 2
    assert "train.lora_rank" in capsys.readouterr().err


def test_python_dash_m_and_console_script_agree():
    out = subprocess.run([sys.executable, "-m", "toolkit", "recipe", "show", str(RECIPE), "--profile", "cpu"],
                         capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert "gemma3-270m" in out and "lora_rank: 8" in out
