"""A recipe, a bake-off spec or an output folder may come from someone else (issue 29): nothing in one runs code,
writes outside its folder or through a planted link without the user's consent on the command line, and every
file a recipe names is checked when it loads, before anything is paid for. The audit's cases, each reproduced."""

import json

import pytest

from conftest import RECIPE, write_recipe
from teacher_server import TeacherServer
from toolkit.cli import main
from toolkit.io.errors import StageError
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.io.errors import DataError
from toolkit.task.recipe import load_recipe

KEY = "sk-consent-0a1b2c3d"


def planted(folder, name, target_text="precious\n"):
    """A link `folder/name` to a file outside the folder that xtk must never write."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder.parent / f"victim-{name.strip('.')}"
    target.write_text(target_text)
    (folder / name).symlink_to(target)
    return target


# --- planted links --------------------------------------------------------------------------------------------

def test_a_run_folder_whose_lock_is_a_link_is_refused_and_the_file_kept(tmp_path, capsys):
    run = tmp_path / "run"
    victim = planted(run, ".xtk.lock")
    assert main(["report", str(RECIPE), "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert ".xtk.lock is a link" in err and victim.read_text() == "precious\n"


def test_temporary_files_planted_as_links_are_not_followed(tmp_path, monkeypatch):
    from toolkit.flow.pipeline import open_run

    run = tmp_path / "run"
    victims = [planted(run, "manifest.json.tmp"), planted(run, "manifest.json.lock")]
    with pytest.raises(StageError, match="manifest.json.lock is a link"):
        with open_run(load_recipe(RECIPE, "cpu"), run):
            pass
    (run / "manifest.json.lock").unlink()
    with open_run(load_recipe(RECIPE, "cpu"), run) as ctx:
        ctx.manifest.record("data", note="x")
    assert all(v.read_text() == "precious\n" for v in victims)
    manifest = run / "manifest.json"
    assert not manifest.is_symlink() and json.loads(manifest.read_text())["stages"]["data"]["note"] == "x"


def test_labels_never_go_through_a_planted_link(tmp_path, pool, monkeypatch):
    from toolkit.data.label import run_label

    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    rows = pool[:3]
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    out = tmp_path / "out"
    summary_victim = planted(out, "label_summary.json.tmp")
    with TeacherServer({r["text"]: r["label"] for r in rows}) as server:
        run_label(load_recipe(RECIPE), raw, out, base_url=server.base_url)
        assert summary_victim.read_text() == "precious\n"
        summary = out / "label_summary.json"
        assert not summary.is_symlink() and json.loads(summary.read_text())["accepted"] == 3
        # a journal that is a link is refused, never appended to (nor repaired) through the link
        (out / "labelled.jsonl").unlink()
        journal_victim = planted(out, "labelled.jsonl", "")
        with pytest.raises(DataError, match="labelled.jsonl: is a link"):
            run_label(load_recipe(RECIPE), raw, out, base_url=server.base_url)
    assert journal_victim.read_text() == ""


# --- code named in a recipe or spec -----------------------------------------------------------------------------

FIELD = "fields:\n  - {name: a, description: anything}\n"


def line_of(path, key):
    """The line where `key` starts a line of the file (after indentation and a quote)."""
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if line.lstrip(" '").startswith(key))


def test_a_recipe_cannot_run_code_outside_xtk_without_allow_code(tmp_path, capsys):
    """The audit's case: `baseline: os:system` and a test row that is a shell command."""
    pwned = tmp_path / "pwned"
    recipe = write_recipe(tmp_path, FIELD, extra="baseline: os:system\n")
    write_jsonl(tmp_path / "test.jsonl", [{"id": 1, "text": f"touch {pwned}", "label": {"a": "x"}}])
    code = main(["eval", str(recipe), "--model", "rules", "--run", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and not pwned.exists()
    assert f"typed.yaml:{line_of(recipe, 'baseline:')}: key 'baseline'" in err and "--allow-code os" in err
    for key, value in (("baseline", "subprocess:call"), ("data.generator", "shutil:rmtree")):
        assert main(["recipe", "show", str(recipe), "baseline=null", f"{key}={value}"]) == 2
        assert f"key '{key}'" in capsys.readouterr().err


def test_code_the_user_allows_runs_and_is_never_taken_from_the_current_folder(tmp_path, monkeypatch, capsys):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "my_rules.py").write_text("import json\n\ndef answer(text):\n    return json.dumps({'a': text[:1]})\n")
    monkeypatch.syspath_prepend(str(lib))
    recipe = write_recipe(tmp_path / "p", FIELD, extra="baseline: my_rules:answer\n")
    write_jsonl(tmp_path / "p" / "test.jsonl", [{"id": 1, "text": "xyz", "label": {"a": "x"}}])
    run = tmp_path / "run"
    assert main(["eval", str(recipe), "--model", "rules", "--run", str(run), "--allow-code", "my_rules"]) == 0
    assert json.loads((run / "eval" / "rules-test" / "metrics.json").read_text())["exact_match"]["value"] == 1
    # a generator planted beside a downloaded recipe, run from its folder: never imported, even when allowed
    beside = tmp_path / "downloaded"
    recipe = write_recipe(beside, FIELD, extra="")
    recipe.write_text(recipe.read_text().replace("data: {", "data: {generator: 'evil_gen:build', "))
    (beside / "evil_gen.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\ndef build():\n    return {{}}\n")
    monkeypatch.chdir(beside)
    assert main(["data", "generate", str(recipe)]) == 2
    assert "--allow-code evil_gen" in capsys.readouterr().err
    assert main(["data", "generate", str(recipe), "--allow-code", "evil_gen"]) == 2
    assert "cannot import evil_gen" in capsys.readouterr().err and not (tmp_path / "pwned").exists()


def test_a_generators_file_names_stay_inside_its_datasets_folder(tmp_path, monkeypatch, capsys):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "climbing_gen.py").write_text("def build():\n    return {'ok.txt': 'fine', '../../../escaped.txt': 'x'}\n")
    monkeypatch.syspath_prepend(str(lib))
    recipe = write_recipe(tmp_path / "p", FIELD)
    recipe.write_text(recipe.read_text().replace("data: {", "data: {generator: 'climbing_gen:build', "))
    out = tmp_path / "p" / "a" / "b" / "datasets"
    assert main(["data", "generate", str(recipe), "--out", str(out), "--allow-code", "climbing_gen"]) == 2
    assert "'../../../escaped.txt' is not a file name inside" in capsys.readouterr().err
    assert not list(tmp_path.rglob("escaped.txt")) and not (out / "ok.txt").exists()


def test_a_recipe_or_spec_cannot_grant_itself_trust_remote_code(tmp_path, capsys):
    from toolkit.choose.bakeoff_spec import SpecError, load_spec
    from toolkit.io.trust import Consent

    recipe = write_recipe(tmp_path, FIELD)
    recipe.write_text(recipe.read_text().replace("template: chatml}", "template: chatml,\n  trust_remote_code: true}"))
    assert main(["recipe", "show", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f":{line_of(recipe, 'trust_remote_code')}: key 'student.trust_remote_code'" in err
    assert "--trust-remote-code" in err
    assert main(["recipe", "show", str(recipe), "--trust-remote-code"]) == 0
    capsys.readouterr()
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"students:\n  - model: smollm2-135m-instruct\n    trust_remote_code: true\n"
                    f"recipes:\n  - recipe: {RECIPE}\n")
    with pytest.raises(SpecError, match=r"spec.yaml:3: key 'students.0.trust_remote_code'.*--trust-remote-code"):
        load_spec(spec, tmp_path / "out")
    assert load_spec(spec, tmp_path / "out", Consent(remote_code=True)).consent.argv() == ["--trust-remote-code"]
    # a spec's overrides are the spec's, not the command line's
    spec.write_text(f"students: [smollm2-135m-instruct]\nrecipes:\n  - recipe: {RECIPE}\n"
                    "    overrides: ['baseline=os:system']\n")
    with pytest.raises(SpecError, match=r"key 'baseline'.*--allow-code os"):
        load_spec(spec, tmp_path / "out")


# --- paths derived from a recipe --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped-xtk", ".hidden", "a/b"])
def test_a_recipe_name_that_is_not_one_folder_name_is_refused_where_it_loads(tmp_path, name, capsys):
    recipe = write_recipe(tmp_path, FIELD)
    recipe.write_text(recipe.read_text().replace("name: typed", f"name: {json.dumps(name)}"))
    assert main(["recipe", "show", str(recipe)]) == 2
    assert f"typed.yaml:{line_of(recipe, 'name: ')}: key 'name': expected a plain name" in capsys.readouterr().err


def test_a_profile_name_that_climbs_out_of_runs_is_refused(tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tmp_path, FIELD, extra="profiles:\n  '../../../x': {eval: {limit: 1}}\n")
    run = tmp_path / "cwd"
    run.mkdir()
    monkeypatch.chdir(run)
    assert main(["eval", str(recipe), "--profile", "../../../x", "--model", "rules"]) == 2
    err = capsys.readouterr().err
    assert f"typed.yaml:{line_of(recipe, '../../../x')}: profile: expected a plain name" in err
    assert not [p for p in tmp_path.parent.rglob("x") if p.is_dir()]


# --- bad input found when the recipe loads ----------------------------------------------------------------------

@pytest.mark.parametrize("content,expect", [(b"Answer \xff JSON.\n", "t.md:1: not valid UTF-8"),
                                            (b"  \n\n", "t.md: the prompt file is empty")])
def test_a_teacher_prompt_that_is_not_utf8_or_empty_is_refused_by_recipe_show(tmp_path, content, expect, capsys):
    recipe = write_recipe(tmp_path, FIELD)
    (tmp_path / "t.md").write_bytes(content)
    assert main(["recipe", "show", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "key 'prompts.teacher'" in err and expect in err


def test_a_bad_choices_file_is_found_before_a_single_answer_is_paid(tmp_path, pool, monkeypatch, capsys):
    monkeypatch.setenv("XTK_TEST_API_KEY", KEY)
    (tmp_path / "places.txt").write_bytes("北京市\n上海市\n\xa0\n".encode() + b"\xc3\x28\n")
    recipe = write_recipe(tmp_path, "fields:\n  - {name: province, description: p, choices_file: places.txt}\n")
    rows = pool[:3]
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    with TeacherServer({r["text"]: {"province": r["label"]["province"]} for r in rows}) as server:
        code = main(["label", str(recipe), "--input", str(raw), "--out", str(tmp_path / "out"),
                     "--base-url", server.base_url])
    err = capsys.readouterr().err
    assert code == 2 and "places.txt:4: not valid UTF-8" in err and "key 'fields.0.choices_file'" in err
    assert sum(server.requests.values()) == 0


def test_duplicate_ids_in_a_test_file_are_an_error_with_file_and_line(tmp_path, capsys):
    recipe = load_recipe(RECIPE)
    rows = read_jsonl(recipe.path(recipe.data.test[0]))[:5]
    test = write_jsonl(tmp_path / "dup.jsonl", rows + [rows[2]])
    code = main(["eval", str(RECIPE), "--model", "rules", "--test", str(test), "--run", str(tmp_path / "run")])
    assert code == 2 and f"dup.jsonl:6: duplicate id {rows[2]['id']!r} (first on line 3)" in capsys.readouterr().err
    # a recipe's own test file is checked where the recipe loads
    spec = write_recipe(tmp_path / "p", FIELD)
    write_jsonl(tmp_path / "p" / "test.jsonl", [{"id": 1, "text": "t", "label": {"a": "x"}}] * 2)
    assert main(["recipe", "show", str(spec)]) == 2
    assert "key 'data.test.0'" in (err := capsys.readouterr().err) and "test.jsonl:2: duplicate id 1" in err


@pytest.mark.parametrize("flag,value", [("--rows", "-5"), ("--rows", "0"), ("--ram", "0"), ("--ram", "inf"),
                                        ("--gpu", "nan"), ("--ram", "-1")])
def test_advise_refuses_sizes_that_are_not_finite_and_positive(flag, value, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["advise", str(RECIPE), flag, value, "--json"])
    err = capsys.readouterr()
    assert exit.value.code == 2 and f"argument {flag}" in err.err and "NaN" not in err.out


@pytest.mark.parametrize("override,key", [("root=/tmp", "root"), ("profile=gpu", "profile"),
                                          ("data.spread_over=[nope]", "data.spread_over")])
def test_every_override_error_names_its_key(override, key, capsys):
    assert main(["recipe", "show", str(RECIPE), override]) == 2
    err = capsys.readouterr().err
    assert f"key '{key}' (from a command-line override)" in err and "multiple values" not in err


def test_errors_of_checks_across_keys_name_the_key_and_its_line(tmp_path, capsys):
    recipe = write_recipe(tmp_path, FIELD, "{pool: pool.jsonl, test: [test.jsonl], train_records: 10,\n"
                          "       val_fraction: 0, spread_over: [nope]}")
    assert main(["recipe", "show", str(recipe)]) == 2
    assert f":{line_of(recipe, 'val_fraction: 0, spread_over')}: key 'data.spread_over'" in capsys.readouterr().err
    recipe = write_recipe(tmp_path, "fields: []\n")
    assert main(["recipe", "show", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "key 'fields': expected at least one field, got []" in err and "got [], got []" not in err


# --- a teacher that never answers -------------------------------------------------------------------------------

def test_a_teacher_that_never_answers_is_given_up_on_after_its_first_requests(tmp_path, pool, monkeypatch, capsys):
    """A real HTTP server that takes longer than the time-out on every request: at the defaults (120 s x 7 tries)
    the first records alone held a job ~14 minutes; now each of the first requests is tried twice."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    rows = pool[:6]
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    with TeacherServer({r["text"]: r["label"] for r in rows}, latency_s=4) as server:
        # max_retries at its 6; no teacher gate: its requests would be the first given up on
        code = main(["label", str(RECIPE), "--input", str(raw), "--out", str(tmp_path / "out"), "--base-url",
                     server.base_url, "teacher.timeout_s=1", "teacher.concurrency=2", "teacher.gate.records=0"])
        asked = sum(server.requests.values())
    err = capsys.readouterr().err
    assert code == 2 and "has never answered" in err and "no answer within 1 s" in err
    assert asked <= 2 * 2  # the first two requests, each tried twice; none of the other records was sent


# --- one report, one model --------------------------------------------------------------------------------------

def test_the_report_never_shows_a_trainings_loss_beside_another_trainings_student(tmp_path):
    """The audit's case is `xtk run --only train` with a new learning rate, then `--only report`: merged/ and the
    student's evaluation still hold the previous training while train/ holds the new one. Training twice takes
    minutes on CPU, so the two trainings' records are written as the train and merge stages write them; the
    student's evaluation is a real one (the rule backend standing in for the merged model)."""
    from dataclasses import replace

    from toolkit.io.jsonl import write_json
    from toolkit.train.losschart import plot_loss
    from toolkit.io.markers import MARKER
    from toolkit.flow.pipeline import current_train_key, evaluate_model, open_run, role, run_stage
    from toolkit.data.prepare import gold_records, run_prepare

    recipe = load_recipe(RECIPE, "cpu", ["data.val_fraction=0"])
    test = [str(recipe.path(recipe.data.test[0]))]
    with open_run(recipe, tmp_path) as ctx:
        run_prepare(recipe, gold_records(recipe)[:8], ctx.data_dir)
        old = current_train_key(ctx)
        write_json(ctx.merged_dir / MARKER, {"train_key": old})
        evaluate_model(ctx, replace(role(ctx, "student"), backend="rules", guided_json=False, limit=5), tests=test)
        evaluate_model(ctx, role(ctx, "rules"), tests=test)
        verdict = plot_loss([{"loss": 1.0, "global_step/max_steps": "1/2"},
                             {"loss": 0.5, "global_step/max_steps": "2/2"}], ctx.run_dir / "loss.png")
        ctx.manifest.record("train", key=old, diagnosis=verdict)
        same = run_stage(ctx, "report")[0].read_text()
    assert "student-test (fine-tuned student" in same and "## Training" in same
    newer = load_recipe(RECIPE, "cpu", ["data.val_fraction=0", "train.learning_rate=0.003"])
    with open_run(newer, tmp_path) as ctx:
        ctx.manifest.record("train", key=current_train_key(ctx), diagnosis="the new training's verdict")
        report = run_stage(ctx, "report")[0].read_text()
    table = report.split("Left out")[0]
    assert "student-test" not in table and "rules-test" in table
    assert "`student-test` (made with the student of an earlier training" in report
