"""Scoring checked against figures worked out by hand."""

import json

import pytest

from conftest import RECIPE
from toolkit.task.recipe import load_recipe
from toolkit.task.scoring import compute_metrics, extract_json, score_record
from toolkit.maths.stats import wilson

GOLD_TJ = {"province": "天津市", "city": "天津市", "district": "和平区", "specific_location": "南京路1号",
           "name": "欧阳丽", "phone": "13812345678"}
GOLD_DG = {"province": "广东省", "city": "东莞市", "district": "", "specific_location": "东城街道人民路5号",
           "name": "张三", "phone": "07691234567"}


@pytest.fixture(scope="module")
def recipe():
    return load_recipe(RECIPE)


def rows(recipe):
    a = {**GOLD_TJ, "phone": "138-1234-5678", "name": " 欧阳丽 ", "specific_location": "南京路１号"}  # all right
    c = {k: v for k, v in GOLD_TJ.items() if k != "district"} | {"extra": "x"}  # district missing: wrong
    d = {**GOLD_DG, "district": "东城区"}  # a district where gold has none: wrong
    return [{"parsed": a, "gold": GOLD_TJ}, {"parsed": None, "gold": GOLD_TJ},
            {"parsed": c, "gold": GOLD_TJ}, {"parsed": d, "gold": GOLD_DG}]


def test_normalisers_make_separators_width_and_spaces_equal(recipe):
    a = rows(recipe)[0]
    assert score_record(recipe, a["parsed"], a["gold"]) == {f: True for f in recipe.field_names}
    wrong = score_record(recipe, {**GOLD_TJ, "phone": "1381234567"}, GOLD_TJ)  # 10 digits
    assert not wrong["phone"] and sum(wrong.values()) == 5
    assert not score_record(recipe, {**GOLD_TJ, "city": "天津"}, GOLD_TJ)["city"]  # short name is not the convention


def test_unparseable_answer_is_wrong_in_every_field(recipe):
    assert score_record(recipe, None, GOLD_TJ) == {f: False for f in recipe.field_names}


def test_metrics_match_hand_worked_figures(recipe):
    m = compute_metrics(recipe, rows(recipe))
    assert m["n"] == 4
    assert (m["json_parse_rate"]["k"], m["exact_match"]["k"]) == (3, 1)
    assert {f: s["k"] for f, s in m["fields"].items()} == {
        "province": 3, "city": 3, "district": 1, "specific_location": 3, "name": 3, "phone": 3}
    # TP = 6 (a) + 5 (c) + 5 (d) = 16; FP = 1 (d's district); FN = 6 (b) + 1 (c's district) = 7
    assert m["micro_f1"]["value"] == pytest.approx(32 / 40)
    lo, hi = m["micro_f1"]["ci95"]
    assert 0 <= lo <= 0.8 <= hi <= 1


def test_wilson_interval():
    assert wilson(3, 4) == pytest.approx((0.3006, 0.9544), abs=1e-4)
    assert wilson(0, 10)[0] == 0 and wilson(10, 10)[1] == 1
    assert wilson(0, 0) == (0.0, 0.0)


@pytest.mark.parametrize("text,expected", [
    ('{"a": "1"}', {"a": "1"}),
    ('```json\n{"a": "1"}\n```', {"a": "1"}),
    ('<think>\nthe {"a": "no"} draft\n</think>\n\n{"a": "1"}', {"a": "1"}),
    ('Sure! Here it is: {"a": "1"} Hope that helps.', {"a": "1"}),
    ('{"a": "1", "b": ', None),  # truncated
    ("no json at all", None),
    ('["a list"]', None),
])
def test_extract_json(text, expected):
    assert extract_json(text) == expected


def test_metrics_recomputed_from_predictions_file_equal_the_written_ones(recipe, tmp_path):
    from toolkit.evaluate.evaluation import run_eval
    from toolkit.infer.engines import RulesBackend
    from toolkit.io.jsonl import read_jsonl

    test = tmp_path / "t.jsonl"
    test.write_text("".join(json.dumps({"id": f"x{i}", "text": f"欧阳丽 13812345678 天津市和平区南京路{i}号",
                                        "label": {**GOLD_TJ, "specific_location": f"南京路{i}号"}},
                                       ensure_ascii=False) + "\n" for i in range(1, 6)), encoding="utf-8")
    m = run_eval(recipe, RulesBackend(recipe), test, "student", tmp_path / "out", "rules")
    preds = read_jsonl(tmp_path / "out" / "predictions.jsonl")
    assert [p["id"] for p in preds] == [f"x{i}" for i in range(1, 6)]
    again = compute_metrics(recipe, preds)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["exact_match"] == again["exact_match"]
    assert m["exact_match"]["k"] == 5


def test_test_file_without_gold_is_a_clear_error(recipe, tmp_path):
    from toolkit.data.prepare import load_test
    from toolkit.io.errors import DataError

    bad = tmp_path / "nogold.jsonl"
    bad.write_text('{"id": "1", "text": "x", "label": {}}\n{"id": "2", "text": "y"}\n')
    with pytest.raises(DataError, match=r"nogold.jsonl:1: label fields must be exactly"):
        load_test(recipe, bad)
    bad.write_text('{"id": "2", "text": "y"}\n')
    with pytest.raises(DataError, match=r"nogold.jsonl:1: no gold label"):
        load_test(recipe, bad)
