"""`xtk recipe check` (toolkit/check.py): a recipe's files, rows, leftovers of a copied recipe and sizes, checked
before anything runs; `xtk run` runs the same check first."""

import json
import re

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
                           "val_fraction: 0.25}", extra=""):
    write_rows(tmp_path / "data" / "labelled.jsonl", ROWS[:4])
    write_rows(tmp_path / "data" / "test.jsonl", ROWS[4:])
    return str(write_recipe(tmp_path, FIELDS, data, extra))


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
    assert re.search(r"typed.yaml:5: key 'data.labelled': \S*data/labeled.jsonl: no such file \(misspelt\?\), and no "
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
        assert f"warning: {tmp_path}/recipes/invoice.yaml:{line}: key '{key}': {value} is task msra_ner's, not invoice's" in err


def test_sizes_beyond_the_rows_there_are_are_said(tmp_path, capsys):
    recipe = invoice(tmp_path, extra="profiles:\n  cpu:\n    data: {train_records: 2400}\n"
                                     "    eval: {limit: 50}\n")
    assert main(["recipe", "check", recipe, "--profile", "cpu", "train.per_device_train_batch_size=4"]) == 0
    err = capsys.readouterr().err.replace("\n", "")
    # the profile's line, not the recipe's: the profile set it
    assert "typed.yaml:15: key 'data.train_records': is 2400, but data/labelled.jsonl has 4 rows: training takes " \
           "at most those 4" in err
    # 4 rows, a quarter held out: 1 validation row; 3 training rows, fewer than one step's 4
    assert "one optimiser step takes 4 rows (batch x accumulation x processes), more than the 3 training rows" in err
    assert "typed.yaml:16: key 'eval.limit': 50, but the test files have at most 1 rows" in err
    assert main(["recipe", "check", recipe, "data.train_records=1"]) == 0
    assert "key 'data.val_fraction': 0.25 of 1 row holds out none" in capsys.readouterr().err.replace("\n", "")
    assert main(["recipe", "check", recipe, "data.val_fraction=0.9"]) == 2
    assert "data/labelled.jsonl has 4 rows: nothing is left to train on after the validation split" in \
        capsys.readouterr().err.replace("\n", "")


def test_run_checks_the_recipe_before_any_stage(tmp_path, capsys):
    recipe = invoice(tmp_path, "{labelled: data/labeled.jsonl, test: [data/test.jsonl], train_records: 4, "
                               "val_fraction: 0}")
    assert main(["run", recipe, "--out", str(tmp_path / "run")]) == 2
    assert "no such file (misspelt?)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started
