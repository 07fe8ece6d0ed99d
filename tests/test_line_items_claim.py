"""recipe_cpu.py's paired verdict on one field, a list of objects (invoice_zh's line items), on hand-worked
inputs: prediction rows built by `xtk eval`'s own row builder on the shipped invoice recipe and test records."""

import importlib.util
import json
import sys

from conftest import ROOT

from toolkit.evaluate.evaluation import prediction
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.task.recipe import load_recipe

sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import each other as scripts do
_spec = importlib.util.spec_from_file_location("recipe_cpu", ROOT / "benchmarks" / "recipe_cpu.py")
recipe_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe_cpu)


def items_verdict(tmp_path, student_right: set[int], rules_right: set[int]) -> dict:
    """Ten invoice_zh test records; a wrong answer has its first line item's quantity changed."""
    recipe = load_recipe(ROOT / "recipes" / "invoice_zh.yaml")
    records = list(read_jsonl(recipe.path(recipe.data.test[0])))[:10]
    for name, right in (("student", student_right), ("rules", rules_right)):
        answers = []
        for i, r in enumerate(records):
            items = [dict(item) for item in r["label"]["items"]]
            if i not in right:
                items[0]["quantity"] += 1
            answers.append({**r["label"], "items": items})
        write_jsonl(tmp_path / "eval" / f"{name}-test" / "predictions.jsonl",
                    [prediction(recipe, r["id"], r["text"], r["label"], json.dumps(a, ensure_ascii=False), a)
                     for r, a in zip(records, answers)])
    return recipe_cpu.versus_field(tmp_path, "student", "rules", "test", "items")


def test_line_items_claim_is_mcnemars_on_the_list_right_or_wrong(tmp_path):
    """Student's items right on records 0-8, the rules' on record 0 only: 8 discordant records, all the
    student's: p = 2 / 2^8 = 0.0078 < 0.05, beats."""
    v = items_verdict(tmp_path, set(range(9)), {0})
    assert v["records"] == 10 and v["student"] == 0.9 and v["rules"] == 0.1
    assert v["exact_match"] == {"student_only_right": 8, "rules_only_right": 0, "p_mcnemar": 0.0078}
    assert v["verdict"] == "beats"


def test_line_items_a_few_records_ahead_is_not_shown(tmp_path):
    """b = 6, c = 1: p = 2 * (1 + 7) / 2^7 = 0.125, not shown; the mirror of the first is below."""
    assert items_verdict(tmp_path, set(range(7)), {0, 7})["verdict"] == "not shown"
    assert items_verdict(tmp_path, {0}, set(range(9)))["verdict"] == "below"
