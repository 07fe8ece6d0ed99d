"""The benchmark scripts' own arithmetic, on hand-worked inputs: recipe_cpu.py's paired verdict of the student
against the baseline (the prediction rows are real ones, scored by `xtk eval`'s own row builder on the recipes'
real fields)."""

import importlib.util
import json
import sys

import pytest
from conftest import ROOT, RECIPE

from toolkit.evaluate import prediction
from toolkit.jsonl import read_jsonl, write_jsonl
from toolkit.recipe import load_recipe

sys.path.insert(0, str(ROOT / "benchmarks"))
spec = importlib.util.spec_from_file_location("recipe_cpu", ROOT / "benchmarks" / "recipe_cpu.py")
recipe_cpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe_cpu)


def write_eval(run_dir, name, recipe, records, answers):
    """eval/<name>-test/predictions.jsonl as `xtk eval` writes it, each record answered with `answers[i]`."""
    rows = [prediction(recipe, r["id"], r["text"], r["label"], json.dumps(a, ensure_ascii=False), a)
            for r, a in zip(records, answers)]
    write_jsonl(run_dir / "eval" / f"{name}-test" / "predictions.jsonl", rows)


def logistics(tmp_path, student_right: set[int], rules_right: set[int]):
    """Ten logistics_zh test records; a wrong answer has its phone number changed (the record is not exact)."""
    recipe = load_recipe(RECIPE)
    records = list(read_jsonl(recipe.path(recipe.data.test[0])))[:10]

    def answers(right):
        return [r["label"] if i in right else {**r["label"], "phone": "10000000000"} for i, r in enumerate(records)]

    write_eval(tmp_path, "student", recipe, records, answers(student_right))
    write_eval(tmp_path, "rules", recipe, records, answers(rules_right))
    return recipe_cpu.versus(recipe, tmp_path, "student", "rules", "test")


def test_exact_match_claim_is_mcnemars(tmp_path):
    """Student right on records 0-8, rules on record 0 only: 8 discordant records, all the student's, so
    p = 2 * C(8,0) / 2^8 = 0.0078 < 0.05: beats."""
    v = logistics(tmp_path, set(range(9)), {0})
    assert v["metric"] == "whole-record exact match" and v["records"] == 10
    assert v["student"] == 0.9 and v["rules"] == 0.1 and v["difference"]["value"] == 0.8
    assert v["exact_match"] == {"student_only_right": 8, "rules_only_right": 0, "p_mcnemar": 0.0078}
    assert v["decided_by"].startswith("McNemar") and v["verdict"] == "beats"


def test_a_large_gap_on_few_records_is_not_shown(tmp_path):
    """Student right on 0-6 (70%), rules on 0 and 7 (20%): b = 6, c = 1, p = 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125:
    50 points ahead, and still not shown at the 5% level."""
    v = logistics(tmp_path, set(range(7)), {0, 7})
    assert v["difference"]["value"] == 0.5
    assert v["exact_match"] == {"student_only_right": 6, "rules_only_right": 1, "p_mcnemar": 0.125}
    assert v["verdict"] == "not shown"


ENTITIES = [("张伟在北京工作", {"persons": ["张伟"], "locations": ["北京"], "organizations": []}),
            ("李娜去了上海", {"persons": ["李娜"], "locations": ["上海"], "organizations": []}),
            ("新华社报道", {"persons": [], "locations": [], "organizations": ["新华社"]}),
            ("王芳住在广州", {"persons": ["王芳"], "locations": ["广州"], "organizations": []}),
            ("刘洋加入清华大学", {"persons": ["刘洋"], "locations": [], "organizations": ["清华大学"]})]


@pytest.mark.parametrize("rules_answer, expected", [
    (lambda gold: {"persons": [], "locations": [], "organizations": []}, ("beats", 1.0, [1.0, 1.0])),
    (lambda gold: gold, ("not shown", 0.0, [0.0, 0.0])),
])
def test_entity_f1_claim_is_the_paired_bootstrap(tmp_path, rules_answer, expected):
    """msra_ner's headline is entity F1. The student finds every entity of five sentences that each have one:
    F1 1.0 in every resample. Rules finding none score 0.0 in every resample, so the difference's interval is
    [1, 1] (beats); rules answering as the student does differ by 0 in every resample (not shown)."""
    recipe = load_recipe(ROOT / "recipes" / "msra_ner.yaml")
    records = [{"id": f"r{i}", "text": t, "label": g} for i, (t, g) in enumerate(ENTITIES)]
    write_eval(tmp_path, "student", recipe, records, [g for _, g in ENTITIES])
    write_eval(tmp_path, "rules", recipe, records, [rules_answer(g) for _, g in ENTITIES])
    v = recipe_cpu.versus(recipe, tmp_path, "student", "rules", "test")
    assert v["decided_by"] == "paired bootstrap of the entity F1 (micro, every list field) difference"
    assert (v["verdict"], v["difference"]["value"], v["difference"]["ci95"]) == expected
