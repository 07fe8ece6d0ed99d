"""A recipe written by hand (no baseline, no data builder, the user's own labelled JSONL) runs `xtk run` end to
end on the embedded student, with no code change (`xtk init`'s recipe: tests/test_init.py)."""

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, write_recipe
from test_run_e2e import TINY

pytestmark = pytest.mark.slow
FIELDS = """\
fields:
  - {name: fruits, type: "list[str]", description: 水果, grounded: true, max_items: 4, max_chars: 4}
  - {name: count, type: int, description: 件数}
  - {name: mood, type: enum, description: 评价, choices: [good, bad]}
"""
FRUITS = ["苹果", "香蕉", "橙子", "葡萄", "西瓜", "草莓"]


def order(i: int) -> dict:
    fruits, count, mood = [FRUITS[i % 6], FRUITS[(i + 2) % 6]], i % 5 + 1, ["good", "bad"][i % 2]
    text = f"买了{'和'.join(fruits)}共{count}件，{'很好吃' if mood == 'good' else '不新鲜'}"
    return {"id": f"o{i}", "text": text, "label": {"fruits": fruits, "count": count, "mood": mood}}


def test_a_fresh_recipe_runs_end_to_end(tmp_path, smollm2):
    for name, rows in (("mine.jsonl", range(20)), ("test.jsonl", range(20, 23))):
        (tmp_path / name).write_text("".join(json.dumps(order(i), ensure_ascii=False) + "\n" for i in rows),
                                     encoding="utf-8")
    recipe = write_recipe(tmp_path, FIELDS, "{labelled: mine.jsonl, test: [test.jsonl], train_records: 20, "
                                            "val_fraction: 0.2}")
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "toolkit", "run", str(recipe), "--run", str(run), *TINY],
                         cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ, "XTK_TEST_API_KEY": ""})
    assert res.returncode == 0, res.stderr[-4000:]
    assert re.findall(r"^stage (\w+)$", res.stderr, re.M) == [
        "teacher_gate", "data", "prepare", "eval_base", "eval_likelihood", "train", "merge", "eval_student",
        "train_head", "eval_head", "eval_rules", "eval_teacher", "report"]
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    assert stages["data"]["source"] == "your labelled data (mine.jsonl)"
    assert stages["eval_rules"]["skipped"] == "the recipe names no rule baseline"
    assert stages["train_head"]["skipped"] == stages["eval_head"]["skipped"] == ("the recipe asks for no "
                                                                                 "classification head")
    assert stages["eval_likelihood"]["skipped"] == ("option likelihood chooses among classes, and not every field "
                                                   "is enum")
    for who in ("base", "student"):
        m = json.loads((run / "eval" / f"{who}-test" / "metrics.json").read_text())
        assert m["n"] == 3 and set(m["entities"]) == {"fruits", "overall"} and set(m["enums"]) == {"mood"}
    report = (run / "report.md").read_text(encoding="utf-8")
    assert "- training labels: your labelled data (mine.jsonl)" in report
    assert "eval_rules (the recipe names no rule baseline)" in report.split("Not run: ")[1]
    page = (run / "report.html").read_text(encoding="utf-8")  # the types' sections: in the page to browse
    assert "<h2>Entities" in page and "<h2>Classes" in page and (run / "confusion-mood.png").is_file()
