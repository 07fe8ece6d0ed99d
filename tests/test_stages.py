"""Recipes are data: where training labels come from, and stages that do not apply, are decided by recipe keys."""

import json

import pytest

from conftest import write_recipe
from toolkit.io.errors import StageError
from toolkit.io.jsonl import read_jsonl, write_json
from toolkit.flow.pipeline import open_run, run_stage
from toolkit.task.recipe import load_recipe
from toolkit.evaluate.report import run_report
from toolkit.io.trust import Consent

FIELDS = """\
fields:
  - {name: tone, type: enum, description: tone, choices: [好, 差]}
"""
P = {"value": 1.0, "ci95": [0.2, 1.0]}  # a proportion as metrics.json holds it


def write_labelled(path, n=3):
    path.write_text("".join(json.dumps({"id": f"r{i}", "text": f"第{i}条 很好", "label": {"tone": "好"}},
                                       ensure_ascii=False) + "\n" for i in range(n)), encoding="utf-8")


def test_own_labels_no_baseline_no_teacher_key(tmp_path, monkeypatch):
    monkeypatch.delenv("XTK_TEST_API_KEY", raising=False)
    write_labelled(tmp_path / "mine.jsonl")
    recipe = load_recipe(write_recipe(tmp_path, FIELDS, "{labelled: mine.jsonl, test: [test.jsonl], "
                                                        "train_records: 10, val_fraction: 0}"))
    with open_run(recipe, tmp_path / "run") as ctx:
        run_stage(ctx, "data")
        assert read_jsonl(tmp_path / "run" / "data" / "labelled.jsonl") == read_jsonl(tmp_path / "mine.jsonl")
        assert ctx.manifest.data["stages"]["data"]["source"] == "your labelled data (mine.jsonl)"
        assert run_stage(ctx, "eval_rules") == [] and run_stage(ctx, "eval_teacher") == []
        skipped = {k: v["skipped"] for k, v in ctx.manifest.data["stages"].items() if "skipped" in v}
    assert skipped == {"eval_rules": "the recipe names no rule baseline",
                       "eval_teacher": "$XTK_TEST_API_KEY is not set, the teacher is not evaluated"}
    write_json(tmp_path / "run" / "eval" / "base-test" / "metrics.json", {
        "n": 1, "model": "m", "test_file": "test.jsonl", "records_per_s": 1.0, "fields": {"tone": P},
        "exact_match": P, "json_parse_rate": P, "micro_f1": P})
    run_report(recipe, tmp_path / "run", skipped=skipped)
    assert ("Not run: eval_rules (the recipe names no rule baseline); eval_teacher ($XTK_TEST_API_KEY is not set, the "
            "teacher is not evaluated).") in (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "<p>Not run: eval_rules (the recipe names no rule baseline); eval_teacher" in (
        tmp_path / "run" / "report.html").read_text(encoding="utf-8")


def test_raw_texts_without_teacher_key_or_gold_say_what_to_give(tmp_path, monkeypatch):
    monkeypatch.delenv("XTK_TEST_API_KEY", raising=False)
    recipe = load_recipe(write_recipe(tmp_path, FIELDS))
    with open_run(recipe, tmp_path / "run") as ctx, pytest.raises(
            StageError, match=r"set \$XTK_TEST_API_KEY for the teacher to label pool.jsonl, or name your labelled"):
        run_stage(ctx, "data")


def test_a_bad_row_in_your_labels_names_its_line(tmp_path):
    from toolkit.io.errors import RecipeError

    write_labelled(tmp_path / "mine.jsonl")
    with (tmp_path / "mine.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "x", "text": "一般", "label": {"tone": "一般"}}, ensure_ascii=False) + "\n")
    from toolkit.flow.check import check_files

    # found where a command loads the recipe (every file it names is read then), before any stage runs
    with pytest.raises(RecipeError, match=r"key 'data.labelled': .*mine.jsonl:4: tone '一般' is not"):
        check_files(load_recipe(write_recipe(tmp_path, FIELDS, "{labelled: mine.jsonl, test: [t.jsonl], "
                                                               "train_records: 9, val_fraction: 0}")))


def tiny_builder() -> dict:
    """A data builder as a recipe names it (`test_stages:tiny_builder`): a pool of 3 with gold labels, 1 test."""
    rows = [{"id": f"g{i}", "text": f"第{i}条 很好", "label": {"tone": "好"}} for i in range(4)]
    return {"pool.jsonl": [{"id": r["id"], "text": r["text"]} for r in rows[:3]],
            "pool_gold.jsonl": [{"id": r["id"], "label": r["label"]} for r in rows[:3]], "test.jsonl": rows[3:]}


def test_missing_data_files_are_built_by_the_recipes_generator(tmp_path, monkeypatch):
    monkeypatch.delenv("XTK_TEST_API_KEY", raising=False)
    recipe = load_recipe(write_recipe(tmp_path, FIELDS, "{generator: 'test_stages:tiny_builder', pool: "
                                      "datasets/typed/pool.jsonl, pool_gold: datasets/typed/pool_gold.jsonl, "
                                      "test: [datasets/typed/test.jsonl], train_records: 9, val_fraction: 0}"),
                         consent=Consent(code=("test_stages",)))  # code outside toolkit: allowed as --allow-code does
    with open_run(recipe, tmp_path / "run") as ctx:
        run_stage(ctx, "data")
    assert sorted(p.name for p in (tmp_path / "datasets" / "typed").iterdir()) == [
        "pool.jsonl", "pool_gold.jsonl", "test.jsonl"]
    assert [r["id"] for r in read_jsonl(tmp_path / "run" / "data" / "labelled.jsonl")] == ["g0", "g1", "g2"]


def test_the_report_says_how_long_each_trained_row_trained(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, FIELDS))
    for who in ("base", "student", "head"):
        write_json(tmp_path / "run" / "eval" / f"{who}-test" / "metrics.json", {
            "n": 1, "model": "m", "test_file": "test.jsonl", "records_per_s": 2.0, "fields": {"tone": P},
            "exact_match": P, "json_parse_rate": P, "micro_f1": P, "role": who})
    run_report(recipe, tmp_path / "run", train_minutes={"student": 31.4, "head": None})
    rows = {line.split(" | ")[0].removeprefix("| ").split(" ")[0]: line.rstrip(" |").rsplit(" | ", 1)[1]
            for line in (tmp_path / "run" / "report.md").read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and "-test" in line.split(" | ")[0]}
    assert rows == {"base-test": "—", "student-test": "31.4", "head-test": "—"}  # head: not finished


def test_a_stage_that_does_not_apply_stays_skipped_until_its_reason_goes(tmp_path, monkeypatch):
    """No teacher key: eval_teacher is recorded as skipped and stays so when settings it would read change (a
    recipe without a classification head does not re-run train_head whenever train.* changes); once the key is
    set it is stale and runs; a stage that ran and then stops applying is stale too (its record turns into a
    skip)."""
    from toolkit.flow.pipeline import STAGES, is_stale

    monkeypatch.delenv("XTK_TEST_API_KEY", raising=False)
    path = write_recipe(tmp_path, FIELDS)
    teacher = next(s for s in STAGES if s.name == "eval_teacher")
    with open_run(load_recipe(path), tmp_path / "run") as ctx:
        assert is_stale(ctx, teacher, [])  # never run
        run_stage(ctx, "eval_teacher")
        assert not is_stale(ctx, teacher, [])
    with open_run(load_recipe(path, None, ["teacher.model=other", "eval.limit=2"]), tmp_path / "run") as ctx:
        assert not is_stale(ctx, teacher, [])
        monkeypatch.setenv("XTK_TEST_API_KEY", "k")
        assert is_stale(ctx, teacher, [])
        ctx.manifest.start("eval_teacher")  # as if the teacher had been evaluated
        ctx.manifest.done("eval_teacher", [], config="whatever")
        monkeypatch.delenv("XTK_TEST_API_KEY")
        assert is_stale(ctx, teacher, [])
