"""Knowledge tables as a recipe feature, on a second task: a small product catalogue (category -> product ->
unit, tests/tables/catalogue.csv) bound in a test recipe. Guided decoding, label repair, scoring and the recipe
check take the table from the recipe alone: nothing here is logistics_zh's."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT, write_recipe

from toolkit.cli import main
from toolkit.data.label import repair_label
from toolkit.evaluate.report import table_error_lines
from toolkit.task.recipe import load_recipe
from toolkit.task.scoring import compute_metrics
from toolkit.task.tables import NOT_IN_TABLE, WRONG_IN_TABLE

FIELDS = """\
fields:
  - {name: category, description: aisle, type: enum, choices: [dairy, bakery, drinks]}
  - {name: product, description: what is ordered}
  - {name: unit, description: how it is sold}
  - {name: quantity, description: how many, type: int}
"""
TABLE = "tables: [{file: catalogue.csv, fields: [category, product, unit]}]\n"
ORDER = {"category": "dairy", "product": "cheese", "unit": "kg", "quantity": 2}


@pytest.fixture
def catalogue(tmp_path):
    shutil.copy(ROOT / "tests" / "tables" / "catalogue.csv", tmp_path / "catalogue.csv")
    return load_recipe(write_recipe(tmp_path, FIELDS, extra=TABLE))


def accepts(schema: dict, answer: dict) -> bool:
    """Whether vLLM's grammar engine (xgrammar, as the vllm backend compiles it) lets the student write it."""
    xgr = pytest.importorskip("xgrammar")
    grammar = xgr.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
    return xgr.testing._is_grammar_accept_string(grammar, json.dumps(answer, separators=(", ", ": ")))


def test_the_guided_schema_takes_the_catalogues_rows_and_refuses_a_product_under_another_category(catalogue):
    schema = catalogue.json_schema()
    assert accepts(schema, ORDER) and accepts(schema, {**ORDER, "product": "milk", "unit": "bottle"})
    assert not accepts(schema, {**ORDER, "category": "bakery"})  # cheese is dairy
    assert not accepts(schema, {**ORDER, "unit": "loaf"})  # cheese is sold by the kg
    assert not accepts(schema, {**ORDER, "product": "caviar"})  # not in the catalogue
    assert accepts(schema, {**ORDER, "quantity": 12})  # the free field keeps its own type


def test_a_label_under_the_wrong_category_is_repaired_and_one_the_table_cannot_tell_is_rejected(catalogue):
    label, repaired, why = repair_label(catalogue, "2 kg of cheese", {**ORDER, "category": "drinks"})
    assert label == ORDER and repaired == {"category": ["drinks", "dairy"]} and not why
    # water comes by the litre and by the bottle: the unit "crate" is not in the table, nothing to repair from
    label, repaired, why = repair_label(catalogue, "a crate of water", {**ORDER, "product": "water", "unit": "crate"})
    assert label is None and why == "unit 'crate' is not in the table"
    assert repair_label(catalogue, "", ORDER) == (ORDER, {}, "")


def test_scoring_tells_a_value_not_in_the_table_from_one_wrongly_chosen(catalogue, tmp_path):
    rows = [{"parsed": p, "gold": ORDER} for p in (ORDER, {**ORDER, "product": "caviar"},
                                                   {**ORDER, "product": "milk", "unit": "litre"}, None)]
    m = compute_metrics(catalogue, rows, bootstrap=10)
    assert m["table_errors"]["product"] == {NOT_IN_TABLE: 2, WRONG_IN_TABLE: 1}  # caviar, the unparseable; milk
    assert m["table_errors"]["unit"] == {NOT_IN_TABLE: 1, WRONG_IN_TABLE: 1}
    assert m["table_errors"]["category"] == {NOT_IN_TABLE: 1, WRONG_IN_TABLE: 0}
    line = table_error_lines([("student-test", m)])[-1]
    assert line == ("- **student-test**: category 1 not in the table, 0 in the table but wrong; product 2 not in the "
                    "table, 1 in the table but wrong; unit 1 not in the table, 1 in the table but wrong")


@pytest.mark.parametrize("text,line,says", [
    ("category,product,unit\ndairy,milk,litre\ndairy,milk,litre\n", 3, "duplicated row: the same as line 2"),
    ("category,product,unit\ndairy,milk,litre\ndrinks,milk,bottle\n", 3, "contradictory row"),
    ("", 1, "the file is empty"),
    ("category,product,colour\ndairy,milk,white\n", 1, "column 'colour' is not a field the table binds"),
    ("\ufeffcategory,product,unit\ndairy,milk,litre\n", 1, "byte order mark"),
])
def test_a_bad_table_stops_the_recipe_check_with_its_file_and_line(tmp_path, capsys, text, line, says):
    (tmp_path / "catalogue.csv").write_text(text, encoding="utf-8")
    recipe = write_recipe(tmp_path, FIELDS, extra=TABLE)
    for command in (["recipe", "check", str(recipe)], ["run", str(recipe), "--run", str(tmp_path / "run")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"key 'tables.0.file'" in err and f"catalogue.csv:{line}:" in err and says in err, err
    assert not (tmp_path / "run").exists()


def test_a_table_binds_only_the_recipes_own_fields(tmp_path, capsys):
    shutil.copy(ROOT / "tests" / "tables" / "catalogue.csv", tmp_path / "catalogue.csv")
    recipe = write_recipe(tmp_path, FIELDS, extra="tables: [{file: catalogue.csv, fields: [category, item, unit]}]\n")
    assert main(["recipe", "check", str(recipe)]) == 2
    assert "key 'tables.0.fields'" in (err := capsys.readouterr().err) and "'item' is not a field" in err


def test_a_bad_aliases_file_stops_the_recipe_check_with_its_file_and_line(tmp_path, capsys):
    shutil.copy(ROOT / "tests" / "tables" / "catalogue.csv", tmp_path / "catalogue.csv")
    (tmp_path / "aliases.csv").write_text("value,alias\nmilk,moo juice\nchocolate,choc\n", encoding="utf-8")
    recipe = write_recipe(tmp_path, FIELDS, extra="tables: [{file: catalogue.csv, fields: [category, product, unit], "
                                                  "aliases: aliases.csv}]\n")
    for command in (["recipe", "check", str(recipe)], ["run", str(recipe), "--run", str(tmp_path / "run")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "key 'tables.0.aliases'" in err and "aliases.csv:3: 'chocolate' is not a value" in err, err
    assert not (tmp_path / "run").exists()
