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


# --- 4, 5. a link planted anywhere below the folder xtk writes in ---------------------------------------------

def planted_folder(run, name):
    """`run/name` a link to a folder outside the run: xtk must never write there."""
    victim = run.parent / f"victim-{name.replace('/', '-')}"
    victim.mkdir(parents=True)
    (run / name).parent.mkdir(parents=True, exist_ok=True)
    (run / name).symlink_to(victim, target_is_directory=True)
    return victim


def test_the_writer_refuses_a_link_at_any_depth_below_the_root_it_holds(tmp_path):
    from toolkit.io.errors import DataError
    from toolkit.io.jsonl import open_append, own_folder, write_root, write_text

    run = tmp_path / "run"
    victim = planted_folder(run, "eval/x")
    with write_root(run):
        for write in (lambda: write_text(run / "eval" / "x" / "deep" / "m.json", "{}"),
                      lambda: open_append(run / "eval" / "x" / "j.jsonl"), lambda: own_folder(run / "eval" / "x")):
            with pytest.raises(DataError, match=r"run/eval/x: is a link \(to .*victim-eval-x\)"):
                write()
        write_text(run / "eval" / "y" / "m.json", "{}")  # a folder of its own, made on the way
    assert not list(victim.iterdir()) and (run / "eval" / "y" / "m.json").read_text() == "{}"
    linked = tmp_path / "linked-run"  # the folder the user names may itself be a link: it is theirs
    linked.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with write_root(linked):
        write_text(linked / "a" / "b.txt", "ok")
    assert (tmp_path / "elsewhere" / "a" / "b.txt").read_text() == "ok"


def test_an_evaluation_never_writes_through_a_link_at_a_folder_of_the_run(tmp_path, capsys):
    run = tmp_path / "run"
    victim = planted_folder(run, "eval")
    err = failure(capsys, ["eval", str(RECIPE), "--model", "rules", "--run", str(run), "eval.limit=2"])
    assert f"{run}/eval: is a link" in err and not list(victim.iterdir())


def test_labels_never_go_through_a_link_at_the_runs_data_folder(tmp_path, pool, monkeypatch, capsys):
    from toolkit.io.jsonl import write_jsonl
    from toolkit.train.swift import free_port

    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-x")
    run = tmp_path / "run"
    victim = planted_folder(run, "data")
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in pool[:3]])
    err = failure(capsys, ["label", str(RECIPE), "--run", str(run), "--input", str(raw), "--base-url",
                           f"http://127.0.0.1:{free_port()}/v1", "teacher.gate.records=0"])
    assert f"{run}/data: is a link" in err and not list(victim.iterdir())


def test_predict_never_follows_a_link_planted_at_its_temporary_file_or_journal(tmp_path, capsys):
    from toolkit.io.jsonl import read_jsonl, write_jsonl

    rows = read_jsonl(RECIPE.parent.parent / "datasets" / "logistics_zh" / "test.jsonl")[:3]
    texts = write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    out = tmp_path / "out.parquet"
    victims = []
    for name in ("out.parquet.tmp", "out.parquet.journal"):
        victims.append(tmp_path / f"victim-{name}")
        victims[-1].write_text("precious\n")
        (tmp_path / name).symlink_to(victims[-1])
    argv = ["predict", str(RECIPE), "--model", "rules", "--input", str(texts), "--out", str(out)]
    assert "out.parquet.journal: is a link" in failure(capsys, argv)
    (tmp_path / "out.parquet.journal").unlink()
    assert main(argv) == 0
    assert [v.read_text() for v in victims] == ["precious\n"] * 2 and out.is_file() and not out.is_symlink()


# --- 2. code a recipe names: only the functions xtk registered for that key --------------------------------------

@pytest.mark.parametrize("key,ref", [("baseline", "toolkit.io.jsonl:write_json"),
                                     ("baseline", "toolkit.tasks.logistics_zh.generate:build"),
                                     ("data.generator", "toolkit.tasks.logistics_zh.baseline:answer")])
def test_a_recipe_names_only_the_functions_xtk_registered_for_the_key(key, ref, capsys):
    err = failure(capsys, ["recipe", "show", str(RECIPE), f"{key}={ref}"])
    assert f"key '{key}'" in err and f"{ref} is not one of xtk's {key.split('.')[-1]} functions" in err


def test_the_shipped_and_classical_functions_are_registered_and_load():
    from toolkit.task.recipe import load_ref

    recipe = load_recipe(RECIPE, None, ["baseline=toolkit.infer.classical:tfidf_logreg"])
    assert load_ref(recipe.baseline, "baseline").trained
    with pytest.raises(RecipeError, match="is not one of xtk's baseline functions"):
        load_ref("toolkit.io.jsonl:write_json", "baseline")


# --- 1. words a recipe adds to a command xtk runs --------------------------------------------------------------

@pytest.mark.parametrize("words", [
    "[--external_plugins, /tmp/evil.py]",  # ms-swift imports and runs the file
    "[--external_plugins=/tmp/evil.py]", "[--external_plug, /tmp/evil.py]",  # argparse takes a prefix for the flag
    "[--lorap_lr_ratio, '16', --output_dir, /tmp/elsewhere]", "[--report_to, wandb]", "[--dataset, /etc/passwd]",
    "[/tmp/evil.py]",  # a value with no flag before it: the last list flag xtk passed would take it
    "[--attn_impl, kernels-community/flash-attn]"])  # a kernel from the hub, run as code
def test_extra_args_pass_only_the_training_flags_xtk_vouches_for(tmp_path, words, capsys):
    path = write_recipe(tmp_path, FIELD)
    path.write_text(path.read_text().replace("dataloader_num_workers: 0}", f"dataloader_num_workers: 0,\n"
                                             f"        extra_args: {words}}}"))
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "extra_args" in text)
    err = failure(capsys, ["recipe", "show", str(path)])
    assert f"typed.yaml:{line}: key 'train.extra_args'" in err


def test_a_flag_outside_the_list_passes_with_the_users_consent_and_reaches_swift(tmp_path, capsys):
    from pathlib import Path

    from toolkit.io.trust import Consent
    from toolkit.model.models import ResolvedModel
    from toolkit.train.swift import sft_argv

    words = "train.extra_args=[--external_plugins, /tmp/plugin.py, --group_by_length, 'true', --attn_impl=sdpa]"
    err = failure(capsys, ["recipe", "show", str(RECIPE), words])
    assert "--allow-code swift:external_plugins" in err
    recipe = load_recipe(RECIPE, None, [words], Consent(("swift:external_plugins",)))
    argv = sft_argv(recipe, ResolvedModel("m", None, None, True), Path("t"), None, Path("o"))
    assert argv[-5:] == ["--external_plugins", "/tmp/plugin.py", "--group_by_length", "true", "--attn_impl=sdpa"]


def test_every_flag_on_the_list_is_one_ms_swift_has():
    import dataclasses

    from swift.arguments import SftArguments

    from toolkit.task.schema import SWIFT_FLAGS

    assert set(SWIFT_FLAGS) <= {f.name for f in dataclasses.fields(SftArguments)}


# --- 3. what a recipe may send: the key's variable, and files of its own project only --------------------------

def test_a_recipe_reads_the_teachers_key_only_from_an_api_keys_variable(tmp_path, capsys):
    path = write_recipe(tmp_path, FIELD)
    path.write_text(path.read_text().replace("api_key_env: XTK_TEST_API_KEY", "api_key_env: GITHUB_TOKEN"))
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "GITHUB_TOKEN" in text)
    err = failure(capsys, ["recipe", "show", str(path)])
    assert f"typed.yaml:{line}: key 'teacher.api_key_env': $GITHUB_TOKEN is not an API key's variable" in err
    assert "--api-key-env GITHUB_TOKEN" in err
    assert main(["recipe", "show", str(path), "--api-key-env", "GITHUB_TOKEN"]) == 0  # the user's own choice
    assert "api_key_env: GITHUB_TOKEN" in capsys.readouterr().out


@pytest.mark.parametrize("key,value", [("prompts.teacher", "{outside}/secret.md"),  # absolute
                                       ("prompts.base", "../home/secret.md"),  # climbing out
                                       ("prompts.student", "linked/secret.md"),  # a link in the project
                                       ("fields.0.choices_file", "{outside}/secret.md"),
                                       ("data.test", "[{outside}/test.jsonl]"),
                                       ("train.deepspeed", "{outside}/ds.json")])
def test_every_file_a_recipe_names_lies_in_its_project(tmp_path, key, value, capsys):
    project, outside = tmp_path / "project", tmp_path / "home"
    outside.mkdir()
    (outside / "secret.md").write_text("the user's secret\n")
    (outside / "test.jsonl").write_text('{"id": 1, "text": "t", "label": {"a": "x"}}\n')
    (outside / "ds.json").write_text("{}")
    path = write_recipe(project, FIELD)
    (project / "linked").symlink_to(outside, target_is_directory=True)
    override = f"{key}={value.format(outside=outside)}"
    if key.startswith("fields"):  # a field's own key, written in the file: its line is named
        path.write_text(path.read_text().replace("description: anything}", "description: anything,\n"
                                                 f"      choices_file: {outside}/secret.md}}"))
        override = "name=typed"
    err = failure(capsys, ["recipe", "show", str(path), override])
    assert f"key '{key}" in err and "leads outside" in err
    assert f"--allow-path {outside}" in err and "the user's secret" not in err
    assert main(["recipe", "show", str(path), override, "--allow-path", str(outside)]) == 0


# --- 7. a choices file that starts with a byte-order mark ---------------------------------------------------------

def test_a_choices_file_with_a_bom_is_refused_by_recipe_check_with_its_line(tmp_path, capsys):
    (tmp_path / "places.txt").write_bytes("\ufeff北京市\n上海市\n".encode())
    recipe = write_recipe(tmp_path, "fields:\n  - {name: province, description: p, choices_file: places.txt}\n")
    err = failure(capsys, ["recipe", "check", str(recipe)])
    assert "key 'fields.0.choices_file'" in err
    assert "places.txt:1: '\\ufeff北京市' holds U+FEFF, a byte-order mark" in err
    (tmp_path / "places.txt").write_text("北京市\n上\u200b海市\n", encoding="utf-8")  # any character nobody sees
    assert "places.txt:2:" in failure(capsys, ["recipe", "check", str(recipe)])
    recipe.write_text(recipe.read_text().replace("choices_file: places.txt", "choices: [北京市, \u200b上海市]"))
    assert "U+200B, zero width space" in failure(capsys, ["recipe", "show", str(recipe)])


# --- 9. accepted silently before: each refused with a clear error -------------------------------------------------

@pytest.mark.parametrize("fields", ["a:enum()", "a:enum( )", "a:enum(|)"])
def test_an_enum_with_no_values_is_refused_by_init(tmp_path, fields, capsys):
    err = failure(capsys, ["init", "t", "--fields", fields, "--out", str(tmp_path)])
    assert f"--fields item {fields!r}: expected an enum field needs at least one class" in err
    assert not (tmp_path / "recipes").exists()


def test_a_closed_set_with_no_values_is_refused_where_the_recipe_loads(tmp_path, capsys):
    recipe = write_recipe(tmp_path, "fields:\n  - {name: a, type: str, description: p, choices: []}\n")
    assert "key 'fields.0': expected at least one choice" in failure(capsys, ["recipe", "show", str(recipe)])
    recipe.write_text(recipe.read_text().replace("type: str", "type: enum"))
    assert "an enum field needs at least one class" in failure(capsys, ["recipe", "show", str(recipe)])
    (tmp_path / "none.txt").write_text("\n\n")  # an empty line allows "", which is no class
    recipe.write_text(recipe.read_text().replace("choices: []", "choices_file: none.txt"))
    assert "none.txt: no values" in failure(capsys, ["recipe", "show", str(recipe)])


# --- 8. xtk init with odd input: a clean error, never a traceback ----------------------------------------------

@pytest.mark.parametrize("case", ["a field twice", "--out a file", "--out under a file", "--from a device",
                                  "--from nested too deeply"])
def test_init_with_odd_input_ends_in_a_clean_error(tmp_path, case, capsys):
    (tmp_path / "afile").write_text("")
    (tmp_path / "deep.jsonl").write_text('{"id": 1, "text": "x", "label": {"a": ' + "[" * 100_000 + "]" * 100_000
                                         + "}}\n")
    argv = {"a field twice": ["--fields", "a:str, a:int"],
            "--out a file": ["--fields", "a", "--out", str(tmp_path / "afile")],
            "--out under a file": ["--fields", "a", "--out", str(tmp_path / "afile" / "sub")],
            "--from a device": ["--fields", "a", "--from", "/proc/self/mem"],
            "--from nested too deeply": ["--fields", "a", "--from", str(tmp_path / "deep.jsonl")]}[case]
    err = failure(capsys, ["init", "t", "--out", str(tmp_path / "p"), *argv])
    expected = {"a field twice": "expected each field name once; given more than once: a",
                "--out a file": "afile/recipes: cannot write there: Not a directory",
                "--out under a file": "afile/sub/recipes: cannot write there: Not a directory",
                "--from a device": "/proc/self/mem:1: cannot read: Input/output error",
                "--from nested too deeply": "deep.jsonl:1: JSON nested too deeply to read"}[case]
    assert expected in err and not (tmp_path / "p" / "recipes").exists()


@pytest.mark.parametrize("override,key,expected", [
    ("train.num_train_epochs=.inf", "train.num_train_epochs", "expected a finite number, got inf"),
    ("train.learning_rate=.nan", "train.learning_rate", "expected a finite number, got nan"),
    ("teacher.price_in_per_mtok=-1", "teacher.price_in_per_mtok", "expected greater than or equal to 0, got -1"),
    ("teacher.price_out_per_mtok=-0.5", "teacher.price_out_per_mtok", "expected greater than or equal to 0"),
    ("teacher.temperature=-1", "teacher.temperature", "expected greater than or equal to 0, got -1"),
    ("train.max_steps=0", "train.max_steps", "expected a number of steps above 0, or -1"),
    ("data.test=[]", "data.test", "expected at least one test file"),
    ("data.test=[datasets/logistics_zh/test.jsonl, ./datasets/logistics_zh/test.jsonl]", "data.test.1",
     "expected each test file once: ./datasets/logistics_zh/test.jsonl is data.test[0]")])
def test_settings_that_make_no_sense_are_refused_at_their_key(override, key, expected, capsys):
    err = failure(capsys, ["recipe", "check", str(RECIPE), override])
    assert f"key '{key}' (from a command-line override): {expected}" in err


def write_test(path, texts):
    from toolkit.io.jsonl import read_jsonl, write_jsonl

    rows = read_jsonl(RECIPE.parent.parent / "datasets" / "logistics_zh" / "test.jsonl")[:len(texts)]
    return write_jsonl(path, [{**r, "text": t} for r, t in zip(rows, texts)])


@pytest.mark.parametrize("text,expected", [("", ":2: the input text is empty"),
                                           ("长" * 5_000_000, ":2: text is 5000000 characters, over "
                                                              "data.max_input_chars=4000")])
def test_an_empty_or_runaway_text_is_refused_by_eval_and_predict_with_its_line(tmp_path, text, expected, capsys):
    test = write_test(tmp_path / "t.jsonl", ["短", text])
    err = failure(capsys, ["eval", str(RECIPE), "--model", "rules", "--run", str(tmp_path / "run"),
                           "--test", str(test)])
    assert f"t.jsonl{expected}" in err and not (tmp_path / "run" / "eval").exists()
    err = failure(capsys, ["predict", str(RECIPE), "--model", "rules", "--input", str(test), "--out",
                           str(tmp_path / "out.jsonl"), "--run", str(tmp_path / "run")])
    assert f"t.jsonl:2: {'text is 5000000' if text else 'expected'}" in err and not (tmp_path / "out.jsonl").exists()


def test_advise_refuses_a_candidate_folder_that_does_not_exist(tmp_path, capsys):
    err = failure(capsys, ["advise", str(RECIPE), "--candidates", f"smollm2-135m-instruct,{tmp_path}/nope"])
    assert f"{tmp_path}/nope: no such model folder" in err


def test_an_error_at_line_100_names_line_100(tmp_path, capsys):
    """rich reads `:100:` as the emoji code for 💯 (and `:1234:` for 🔢): the CLI prints file:line as written."""
    path = write_recipe(tmp_path, "# a note\n" * 99 + "fields:\n  - {name: a, description: anything}\n"
                        "  - {name: a, description: again}\n")
    assert "typed.yaml:100: key 'fields'" in failure(capsys, ["recipe", "show", str(path)])


# --- benchmarks/bad_input.py: a case for every hole ----------------------------------------------------------------

def test_the_bad_input_benchmark_has_a_case_for_each_hole_and_each_builds(tmp_path, monkeypatch):
    import importlib.util
    import sys

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("bad_input", ROOT / "benchmarks" / "bad_input.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bad_input", bench)  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert {str(n) for n in range(1, 10)} | {"round 1"} <= {c.hole for c in bench.CASES}
    names = " | ".join(c.name for c in bench.CASES)
    for item in ("--external_plugins", "baseline: a toolkit function", "GITHUB_TOKEN", "prompts.teacher: an absolute",
                 "data/", "gate/", "out.parquet.tmp", "alias bomb", "byte-order mark", "init: ", ".inf",
                 "negative price", "negative temperature", "max_steps: 0", "empty test list", "same test file twice",
                 "empty text", "5 MB line", "enum() with no values", "advise on a folder that does not exist"):
        assert item in names, item
    assert len({c.name for c in bench.CASES}) == len(bench.CASES)
    for i, c in enumerate(bench.CASES):  # each builds what it runs, in a folder of its own
        (tmp_path / str(i)).mkdir()
        run = c.make(tmp_path / str(i))
        assert run.argv and run.expect in (0, 2, 3) and (run.file or run.key or run.says or run.check), c.name
