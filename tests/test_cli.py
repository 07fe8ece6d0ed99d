import re
import subprocess
import sys

import pytest

from conftest import RECIPE, ROOT
import toolkit.cli.deploy
from toolkit.cli import HelpFormatter, main, make_parser, parse_args
from toolkit.cli.resolve import load, open_to_make
from toolkit.cli.table import COMMANDS, MODEL
from toolkit.io.errors import StageError
from toolkit.io.jsonl import write_jsonl


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


# --- one grammar for every command ------------------------------------------------------------------------

def subparser(cmd):
    parser = make_parser()
    for word in cmd.name.split():
        parser = next(a for a in parser._actions if a.dest in ("command", "subcommand")).choices[word]
    return parser


def options(cmd):
    return [a for a in subparser(cmd)._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: c.name)
def test_one_grammar(cmd):
    """A run folder is --run and any other folder a command writes is --out, --model is one argument everywhere,
    a recipe command's usage shows key=value overrides, and every option with a value says its default."""
    p = subparser(cmd)
    flags = {f for a in options(cmd) for f in a.option_strings}
    folders = {f for f in flags if re.fullmatch(r"--([\w-]+-)?(dir|out|output|folder|run)", f)}
    assert folders <= {"--out", "--run"}, f"a folder is --run or --out, not {folders - {'--out', '--run'}}"
    for a in options(cmd):
        if "--out" in a.option_strings:
            assert "run folder" not in a.help, "a run folder is --run, not --out"
    if "--model" in flags:
        model = next(a for a in options(cmd) if "--model" in a.option_strings)
        assert model.help == MODEL.options["help"], "--model means the same on every command"
    takes_recipe = any(a.dest == "recipe" for a in p._actions)
    assert ("key=value" in p.format_usage()) == takes_recipe
    text = p.format_help()
    for a in options(cmd):
        if a.nargs == 0 or a.required:  # flags and required options have no default to show
            continue
        shown = HelpFormatter("xtk")._get_help_string(a) % {"default": a.default}
        assert "default" in shown, f"{cmd.name} {a.option_strings[0]}: the help says no default"
        assert " ".join(shown.split()[:3]) in " ".join(text.split())


def test_every_command_on_a_run_folder_takes_run():
    """Commands speak one language: each command that reads or writes a run folder names it with --run DIR."""
    takes_run = {c.name for c in COMMANDS if any("--run" in a.option_strings for a in options(c))}
    assert takes_run == {"run", "prepare", "train", "merge", "eval", "report", "export", "predict", "serve",
                         "label", "synth"}
    for c in COMMANDS:
        run = next((a for a in options(c) if "--run" in a.option_strings), None)
        assert run is None or (run.metavar == "DIR" and "run folder" in run.help), c.name


def test_predict_on_a_run_folder_uses_the_settings_the_run_was_made_with(tmp_path, monkeypatch, capsys):
    """`xtk predict --run DIR` after `xtk run RECIPE --profile cpu train.max_steps=5 --run DIR`: the profile and
    overrides, kept in the folder when `xtk run` opened it, are predict's too; a value given again that differs
    wins, and stderr says so."""
    run = tmp_path / "run"
    made = parse_args(["run", str(RECIPE), "--profile", "cpu", "train.max_steps=5", "--run", str(run)])
    with open_to_make(made, load(made)):  # as `xtk run` opens its folder, before its first stage
        pass
    resolved = []

    def predict_role(recipe, model, run_dir):  # where predict has resolved everything but the model
        resolved.append((recipe, run_dir))
        raise StageError("no model needed here")

    monkeypatch.setattr(toolkit.cli.deploy, "predict_role", predict_role)
    write_jsonl(tmp_path / "in.jsonl", [{"id": "1", "text": "x"}])
    predict = ["predict", str(RECIPE), "--run", str(run), "--input", str(tmp_path / "in.jsonl"), "--out",
               str(tmp_path / "out.jsonl")]
    assert main(predict) == 2
    recipe, where = resolved[-1]
    assert (recipe.train.max_steps, recipe.profile, where) == (5, "cpu", run)
    capsys.readouterr()
    assert main([*predict, "train.max_steps=7"]) == 2
    assert resolved[-1][0].train.max_steps == 7
    err = " ".join(capsys.readouterr().err.split())
    assert "train.max_steps=7 given: used instead of train.max_steps=5" in err


def test_a_secret_in_an_override_is_not_kept_in_the_run_folder(tmp_path):
    made = parse_args(["train", str(RECIPE), "--run", str(tmp_path), "train.extra_args=[--hub_token,hf_not_kept]"])
    with open_to_make(made, load(made)):
        pass
    kept = (tmp_path / "settings.json").read_text(encoding="utf-8")
    assert "hf_not_kept" not in kept and "***" in kept


def test_from_and_only_list_every_stage():
    from toolkit.flow.pipeline import STAGE_NAMES

    run = next(c for c in COMMANDS if c.name == "run")
    for a in options(run):
        if a.dest in ("from_stage", "only"):
            assert all(name in a.help for name in STAGE_NAMES)


def test_help_names_what_commands_write_and_pull():
    from toolkit.model.models import EMBEDDED

    by_name = {c.name: c for c in COMMANDS}
    assert all(f in by_name["report"].help for f in ("report.md", "accuracy.png", "confusion-FIELD.png"))
    assert all(name in by_name["models pull"].help for name in EMBEDDED)


def test_overrides_before_and_after_options_keep_their_order():
    args = parse_args(["run", str(RECIPE), "eval.limit=1", "--run", "x", "eval.limit=2", "--only", "report"])
    assert args.overrides == ["eval.limit=1", "eval.limit=2"] and args.run == "x"
    with pytest.raises(SystemExit):
        parse_args(["run", str(RECIPE), "notakeyvalue"])


def test_version_is_the_package_version(capsys):
    import tomllib

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"xtk {version}"


def test_a_signal_whose_exception_a_library_drops_is_raised_again():
    """pyzmq's poll (vLLM's engine start-up) runs the handler and drops what it raised; reraise() raises it again,
    as Terminated for SIGTERM; once the command is over the handler before it is back and nothing is pending."""
    import os
    import signal

    from toolkit.io.signals import Terminated, handled, reraise

    before = signal.getsignal(signal.SIGTERM)
    with handled():
        reraise()  # nothing received: nothing raised
        with pytest.raises(Terminated):  # the handler runs as soon as os.kill returns
            os.kill(os.getpid(), signal.SIGTERM)  # ...and the exception is dropped here, as pyzmq does
        with pytest.raises(Terminated):
            reraise()
    assert signal.getsignal(signal.SIGTERM) is before
    reraise()  # the signal does not outlive the command


def test_a_call_that_drops_a_signal_and_waits_on_is_interrupted_by_it_again():
    """A Ctrl-C while vLLM starts its engine also stops the engine core (the whole process group gets it); pyzmq's
    poll drops the exception and vLLM then waits for the core's answer forever (measured: an `xtk eval` hung there).
    Inside redelivered() the signal is sent again until the call ends, and not once after it."""
    import os
    import signal
    import threading
    import time

    from toolkit.io.signals import RESEND_S, Terminated, handled, redelivered

    with handled():
        with pytest.raises(Terminated):
            with redelivered():
                try:
                    os.kill(os.getpid(), signal.SIGTERM)
                except Terminated:
                    pass  # dropped, as pyzmq does
                threading.Event().wait(60)  # then waits on, as vLLM does for an engine core that is gone
        time.sleep(3 * RESEND_S)  # a signal sent after the call ended would raise here
