"""`xtk recipe check` (toolkit/flow/check.py): a recipe's files, rows, leftovers of a copied recipe and sizes, checked
before anything runs; `xtk run` runs the same check first."""

import json
import re

import pytest

from conftest import ROOT, write_recipe
from toolkit.cli import main

FIELDS = """\
fields:
  - {name: seller, description: 卖方}
  - {name: amount, type: "float?", description: 金额}
"""
ROWS = [{"id": f"r{i}", "text": f"发票{i}：华为，金额 {i}00 元", "label": {"seller": "华为", "amount": i * 100.0}}
        for i in range(1, 6)]


def write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def invoice(tmp_path, data="{labelled: data/labelled.jsonl, test: [data/test.jsonl], train_records: 4, "
                           "val_fraction: 0.25}", extra="", prompts=""):
    """The invoice recipe over 4 labelled rows and 1 test row; its prompts rendered from the fields unless given
    (`prompts`: the recipe's prompts line)."""
    write_rows(tmp_path / "data" / "labelled.jsonl", ROWS[:4])
    write_rows(tmp_path / "data" / "test.jsonl", ROWS[4:])
    path = write_recipe(tmp_path, FIELDS, data, extra)
    text = path.read_text(encoding="utf-8").replace("prompts: {teacher: t.md, base: d.md, student: s.md}\n", prompts)
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_recipe_whose_files_fit_passes_and_counts_their_rows(tmp_path, capsys):
    assert main(["recipe", "check", invoice(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "fields seller (str), amount (float?)" in out.out
    assert "data.labelled: data/labelled.jsonl: 4 rows" in out.out and "data.test.0: data/test.jsonl: 1 rows" in out.out
    assert out.out.rstrip().endswith("ok") and "warning" not in out.err


def test_a_misspelt_file_is_an_error_naming_its_key_and_line(tmp_path, capsys):
    recipe = invoice(tmp_path, "{labelled: data/labeled.jsonl, test: [data/test.jsonl], train_records: 4,\n"
                               "       val_fraction: 0}")
    assert main(["recipe", "check", recipe]) == 2
    err = capsys.readouterr().err
    assert re.search(r"typed.yaml:4: key 'data.labelled': \S*data/labeled.jsonl: no such file \(misspelt\?\), and no "
                     r"data.generator builds it", err.replace("\n", ""))
    assert main(["recipe", "show", recipe]) == 0  # other commands read the files there are, as before


def test_a_row_without_a_valid_value_is_an_error_with_file_and_line(tmp_path, capsys):
    recipe = invoice(tmp_path)
    write_rows(tmp_path / "data" / "test.jsonl", [ROWS[4], {**ROWS[0], "id": "x", "label": {"seller": "华为"}}])
    assert main(["recipe", "check", recipe]) == 2
    assert "test.jsonl:2: label fields must be exactly ['seller', 'amount']; missing ['amount']" in \
        capsys.readouterr().err.replace("\n", "")
    write_rows(tmp_path / "data" / "test.jsonl", [{**ROWS[4], "label": {"seller": "华为", "amount": "¥500"}}])
    assert main(["recipe", "check", recipe]) == 2
    assert "test.jsonl:1: field 'amount' must be a number, got \"¥500\"" in capsys.readouterr().err.replace("\n", "")


def test_a_copied_recipe_is_told_what_it_left_from_the_other_task(tmp_path, capsys):
    """The issue's case: msra_ner's recipe copied and given new name, fields and labelled data: its generator,
    pool, test file, prompts and baseline are still msra_ner's."""
    text = (ROOT / "recipes" / "msra_ner.yaml").read_text(encoding="utf-8")
    text = text.replace("name: msra_ner", "name: invoice").replace(
        "  pool: datasets/msra_ner/pool.jsonl", "  labelled: data/labelled.jsonl\n  pool: datasets/msra_ner/pool.jsonl")
    text = re.sub(r"fields:\n.*?\nprompts:", FIELDS + "prompts:", text, flags=re.S)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "invoice.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "prompts" / "msra_ner").mkdir(parents=True)
    for p in ("teacher", "detailed", "short"):
        (tmp_path / "prompts" / "msra_ner" / f"{p}.md").write_text("Answer JSON.\n", encoding="utf-8")
    write_rows(tmp_path / "data" / "labelled.jsonl", ROWS)
    assert main(["recipe", "check", str(tmp_path / "recipes" / "invoice.yaml")]) == 2
    err = capsys.readouterr().err.replace("\n", "")
    # the generator writes datasets/invoice/, so msra_ner's files will never be built for this recipe
    assert "invoice.yaml:25: key 'data.pool': " in err and "msra_ner/pool.jsonl: no such file" in err
    for line, key, value in [(23, "data.generator", "toolkit.tasks.msra_ner.generate:build"),
                             (15, "prompts.teacher", "prompts/msra_ner/teacher.md"),
                             (20, "baseline", "toolkit.tasks.msra_ner.baseline:jieba_entities")]:
        assert (f"warning: {tmp_path}/recipes/invoice.yaml:{line}: key '{key}': {value} is task msra_ner's, not "
                "invoice's") in err


def test_sizes_beyond_the_rows_there_are_are_said(tmp_path, capsys):
    recipe = invoice(tmp_path, extra="profiles:\n  cpu:\n    data: {train_records: 2400}\n"
                                     "    eval: {limit: 50}\n")
    assert main(["recipe", "check", recipe, "--profile", "cpu", "train.per_device_train_batch_size=4"]) == 0
    err = capsys.readouterr().err.replace("\n", "")
    # the profile's line, not the recipe's: the profile set it
    assert "typed.yaml:14: key 'data.train_records': is 2400, but data/labelled.jsonl has 4 rows: training takes " \
           "at most those 4" in err
    # 4 rows, a quarter held out: 1 validation row; 3 training rows, fewer than one step's 4
    assert "one optimiser step takes 4 rows (batch x accumulation x processes), more than the 3 training rows" in err
    assert "typed.yaml:15: key 'eval.limit': 50, but the test files have at most 1 rows" in err
    assert main(["recipe", "check", recipe, "data.train_records=1"]) == 0
    assert "key 'data.val_fraction': 0.25 of 1 row holds out none" in capsys.readouterr().err.replace("\n", "")
    assert main(["recipe", "check", recipe, "data.val_fraction=0.9"]) == 2
    assert "data/labelled.jsonl has 4 rows: nothing is left to train on after the validation split" in \
        capsys.readouterr().err.replace("\n", "")


def test_run_checks_the_recipe_before_any_stage(tmp_path, capsys):
    recipe = invoice(tmp_path, "{labelled: data/labeled.jsonl, test: [data/test.jsonl], train_records: 4, "
                               "val_fraction: 0}")
    assert main(["run", recipe, "--run", str(tmp_path / "run")]) == 2
    assert "no such file (misspelt?)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started


# --- prompts rendered from the fields -------------------------------------------------------------------------

INVOICE = """\
fields:
  - {name: seller, description: 卖方, grounded: true}
  - {name: amount, type: "float?", description: 金额}
  - {name: date, type: date, description: 开票日期}
  - {name: currency, type: enum, description: 币种, choices: [CNY, USD]}
description: 发票的卖方、金额、日期和币种。
"""


def test_prompts_left_out_are_rendered_from_the_fields(tmp_path):
    from toolkit.task.recipe import load_recipe

    path = write_recipe(tmp_path, INVOICE)
    path.write_text(path.read_text(encoding="utf-8").replace("prompts: {teacher: t.md, base: d.md, student: s.md}\n",
                                                              "prompts: {base: d.md}\n"), encoding="utf-8")
    recipe = load_recipe(path)
    assert recipe.prompt("teacher") == """\
发票的卖方、金额、日期和币种。

Read the input and answer with one JSON object and nothing else. Its keys, in this order:
- seller: 卖方 (text copied from the input as written)
- amount: 金额 (a JSON number, without thousands separators or currency; null when the input does not say)
- date: 开票日期 (a date as YYYY-MM-DD)
- currency: 币种 (one of "CNY", "USD")

An answer looks like this (the values are only examples):
{"seller": "...", "amount": 1234.5, "date": "2024-03-05", "currency": "CNY"}"""
    assert recipe.prompt("student") == "Extract as JSON: seller, amount, date, currency."
    assert recipe.prompt("base") == "Answer JSON."  # a file given is used as written


def test_a_recipe_template_renders_the_prompts_and_a_bad_placeholder_is_named(tmp_path):
    from toolkit.task.recipe import load_recipe
    from toolkit.io.errors import RecipeError

    (tmp_path / "tpl.md").write_text("任务：$task\n键：$keys\n示例：$example\n费用 $$5\n", encoding="utf-8")
    path = write_recipe(tmp_path, INVOICE)
    path.write_text(path.read_text(encoding="utf-8").replace(
        "prompts: {teacher: t.md, base: d.md, student: s.md}", "prompts: {template: tpl.md}"), encoding="utf-8")
    assert load_recipe(path).prompt("base") == ("任务：发票的卖方、金额、日期和币种。\n键：seller, amount, date, currency\n示例："
                                                '{"seller": "...", "amount": 1234.5, "date": "2024-03-05", '
                                                '"currency": "CNY"}\n费用 $5')
    (tmp_path / "tpl.md").write_text("$task $fieldz\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"typed.yaml:7: key 'prompts.template': tpl.md: 'fieldz' is not one of "
                                          r"\$task, \$fields"):
        load_recipe(path)


def test_a_hand_written_prompt_that_leaves_a_field_unnamed_is_warned_of(tmp_path, capsys):
    (tmp_path / "teacher.md").write_text("Give seller and amount as JSON.\n", encoding="utf-8")
    recipe = invoice(tmp_path, prompts="prompts: {teacher: teacher.md}\n")
    assert main(["recipe", "check", recipe]) == 0
    err = capsys.readouterr().err.replace("\n", "")
    assert "typed.yaml:4: key 'prompts.teacher': teacher.md never names" not in err  # both fields named
    (tmp_path / "teacher.md").write_text("Give the seller as JSON.\n", encoding="utf-8")
    assert main(["recipe", "check", recipe]) == 0
    assert "typed.yaml:4: key 'prompts.teacher': teacher.md never names amount: name every field" in \
        capsys.readouterr().err.replace("\n", "")


def test_the_teachers_key_is_needed_only_where_the_teacher_alone_would_label(tmp_path, capsys, monkeypatch):
    """data.pool with no labelled rows and no gold labels: labelling needs the teacher, so an unset key is an error
    naming the key's line; the key set, or gold labels beside the pool, or labelled rows, and it passes."""
    monkeypatch.delenv("XTK_TEST_API_KEY", raising=False)
    write_rows(tmp_path / "data" / "pool.jsonl", [{"id": r["id"], "text": r["text"]} for r in ROWS[:4]])
    recipe = invoice(tmp_path, "{pool: data/pool.jsonl, test: [data/test.jsonl], train_records: 4, "
                               "val_fraction: 0.25}")
    assert main(["recipe", "check", recipe]) == 2
    assert re.search(r"typed.yaml:5: key 'teacher.api_key_env': \$XTK_TEST_API_KEY is not set, and the teacher "
                     r"labels data.pool \(data/pool.jsonl\)", capsys.readouterr().err.replace("\n", ""))
    monkeypatch.setenv("XTK_TEST_API_KEY", "sk-test")
    assert main(["recipe", "check", recipe]) == 0
    monkeypatch.delenv("XTK_TEST_API_KEY")
    write_rows(tmp_path / "data" / "gold.jsonl", [{"id": r["id"], "label": r["label"]} for r in ROWS[:4]])
    assert main(["recipe", "check", recipe, "data.pool_gold=data/gold.jsonl"]) == 0  # the gold labels, no teacher
    assert main(["recipe", "check", invoice(tmp_path)]) == 0  # labelled rows
