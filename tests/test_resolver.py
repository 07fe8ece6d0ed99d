"""logistics_zh's resolver (province and city from the predicted district, by the MCA table) and the `resolved`
evaluation: the student's answers re-scored through it, as a row of their own."""

import json
import shutil

import pytest
from conftest import RECIPE
from toolkit.io.errors import StageError
from toolkit.io.jsonl import read_jsonl, write_json, write_jsonl
from toolkit.flow.pipeline import identity, open_run, role, run_stage
from toolkit.task.recipe import load_recipe
from toolkit.evaluate.report import run_report
from toolkit.tasks.logistics_zh.generate import shared_district_names
from toolkit.tasks.logistics_zh.resolver import complete_admin


def test_a_unique_district_gives_its_prefecture_and_province():
    answer = {"province": "", "city": "大理市", "district": "大理市", "name": "张三"}
    assert complete_admin("大理市人民路25号", answer) == {
        "province": "云南省", "city": "大理白族自治州", "district": "大理市", "name": "张三"}
    assert answer["province"] == ""  # the model's own answer is not changed in place


def test_a_shared_district_name_is_settled_by_the_city_the_province_or_the_text_else_left_alone():
    # 鼓楼区: 南京市 and 徐州市 (江苏省), 福州市 (福建省), 开封市 (河南省); 和平区: 天津市, 沈阳市 (辽宁省)
    assert complete_admin("", {"province": "", "city": "南京市", "district": "鼓楼区"})["province"] == "江苏省"
    assert complete_admin("", {"province": "河南省", "city": "", "district": "鼓楼区"})["city"] == "开封市"
    assert complete_admin("福州 鼓楼区 八一七路", {"province": "", "city": "", "district": "鼓楼区"}) == {
        "province": "福建省", "city": "福州市", "district": "鼓楼区"}
    unsettled = {"province": "江苏省", "city": "", "district": "鼓楼区"}  # 南京 or 徐州: no guess
    assert complete_admin("鼓楼区 中山路", unsettled) == unsettled
    assert complete_admin("天津 和平区", {"province": "", "city": "", "district": "和平区"})["city"] == "天津市"


def test_without_a_district_only_a_citys_province_is_filled_and_anything_else_passes_through():
    assert complete_admin("", {"province": "", "city": "济源市", "district": ""})["province"] == "河南省"
    assert complete_admin("", {"province": "", "city": "东莞市", "district": ""})["province"] == "广东省"
    for answer in (None, {"province": "火星省", "city": "", "district": "奥林帕斯区"}, {"district": 3}):
        assert complete_admin("x", answer) == answer


def test_the_resolved_row_rescores_the_students_answers_and_leaves_them_alone(tmp_path):
    recipe = load_recipe(RECIPE, "cpu")
    run = tmp_path / "run"
    shared = shared_district_names()
    for test in recipe.data.test:
        stem = test.split("/")[-1].removesuffix(".jsonl")
        rows = [r for r in read_jsonl(recipe.path(test)) if r["label"]["district"] not in shared
                and r["label"]["district"]][:3]
        fixable = {**rows[0]["label"], "province": "", "city": rows[0]["label"]["district"]}  # two fields wrong
        wrong_district = {**rows[1]["label"], "province": "", "district": "不存在区"}  # the city gives the province
        parsed = [fixable, wrong_district, None]
        student = run / "eval" / f"student-{stem}"
        write_jsonl(student / "predictions.jsonl", [
            {"id": r["id"], "input": r["text"], "gold": r["label"], "raw": json.dumps(p, ensure_ascii=False),
             "parsed": p, "correct": {}, "exact": False} for r, p in zip(rows, parsed)])
        write_json(student / "metrics.json", {"model": "merged", "backend": "vllm", "prompt": "student",
                                              "test_file": test, "seconds": 3.0, "load_seconds": 1.0})
    with open_run(recipe, run) as ctx, pytest.raises(StageError, match="not the current student's evaluation"):
        run_stage(ctx, "eval_resolved")  # answers of no known student are not named after the current one
    with open_run(recipe, run) as ctx:
        current = identity(ctx, role(ctx, "student"))
    for test in recipe.data.test:
        metrics = run / "eval" / f"student-{test.split('/')[-1].removesuffix('.jsonl')}" / "metrics.json"
        write_json(metrics, {**json.loads(metrics.read_text()), "identity": current})
    before = {p: p.read_bytes() for p in (run / "eval").rglob("*.jsonl")}
    with open_run(recipe, run) as ctx:
        outputs = run_stage(ctx, "eval_resolved")
    assert {p.parent.name for p in outputs} == {"resolved-test", "resolved-test_unseen"}
    for test in ("test", "test_unseen"):
        m = json.loads((run / "eval" / f"resolved-{test}" / "metrics.json").read_text())
        assert m["n"] == 3 and m["exact_match"]["value"] == 1 / 3  # only the first: its district is in the table
        assert m["fields"]["province"]["value"] == 2 / 3 and m["fields"]["district"]["value"] == 1 / 3
        assert m["json_parse_rate"]["value"] == 2 / 3
        assert m["role"] == "resolved" and m["identity"]["resolver"] == "toolkit.tasks.logistics_zh.resolver:complete_admin"
        assert m["backend"] == "vllm + resolver" and m["source"] == f"student-{test}"
        rows = read_jsonl(run / "eval" / f"resolved-{test}" / "predictions.jsonl")
        assert [r["exact"] for r in rows] == [True, False, False] and rows[2]["parsed"] is None
    assert {p: p.read_bytes() for p in before} == before
    for test in ("test", "test_unseen"):  # the hand-written student metrics are not complete enough to report
        shutil.rmtree(run / "eval" / f"student-{test}")
    run_report(recipe, run)
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "resolved-test (fine-tuned student + the recipe's resolver, not the student alone)" in report


def test_a_recipe_without_a_resolver_skips_the_stage(tmp_path):
    recipe = load_recipe(RECIPE, "cpu", ["resolver=null"])
    with open_run(recipe, tmp_path / "run") as ctx:
        assert run_stage(ctx, "eval_resolved") == []
        assert ctx.manifest.data["stages"]["eval_resolved"]["skipped"] == "the recipe names no resolver"
