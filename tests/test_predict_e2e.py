"""The student at work, for real: the embedded SmolLM2 stands in a run folder as its merged student (what
`--model student` resolves), decoding guided by the recipe's schema under vLLM. `xtk predict` answers, record
for record, what `xtk eval` scored."""

import json
import subprocess
import sys

import pytest

from conftest import RECIPE, ROOT, SMOLLM2_STUDENT
from toolkit.jsonl import read_jsonl, write_jsonl
from toolkit.recipe import load_recipe

pytestmark = pytest.mark.slow
N = 6
SMALL = [*SMOLLM2_STUDENT, f"eval.limit={N}", f"eval.batch_size={N}", "eval.max_new_tokens=64",
         "eval.guided_json=true"]
TEST = ROOT / "datasets" / "logistics_zh" / "test.jsonl"
FIELDS = load_recipe(RECIPE, "cpu").field_names


def xtk(*argv):
    res = subprocess.run([sys.executable, "-m", "toolkit", *map(str, argv), "--profile", "cpu", *SMALL], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2):
    root = tmp_path_factory.mktemp("predict")
    (root / "run").mkdir()
    (root / "run" / "merged").symlink_to(smollm2, target_is_directory=True)
    write_jsonl(root / "texts.jsonl", [{"id": r["id"], "text": r["text"]} for r in read_jsonl(TEST)[:N]])
    return root


@pytest.fixture(scope="module")
def answers(run):
    res = xtk("predict", RECIPE, "--run-dir", run / "run", "--input", run / "texts.jsonl", "--out",
              run / "answers.jsonl")
    return read_jsonl(run / "answers.jsonl"), json.loads(res.stdout[res.stdout.index("{\n"):])


def test_predict_answers_what_eval_scored(run, answers):
    xtk("eval", RECIPE, "--run-dir", run / "run", "--model", "student", "--test", TEST)
    scored = read_jsonl(run / "run" / "eval" / "student-test" / "predictions.jsonl")
    rows, summary = answers
    assert [a["id"] for a in rows] == [s["id"] for s in scored] and len(rows) == N
    for a, s in zip(rows, scored):
        assert a["raw"] == s["raw"] and a["problems"] == s["problems"], a["id"]
        assert {f: a[f] for f in FIELDS} == {f: (s["parsed"] or {}).get(f) for f in FIELDS}, a["id"]
    assert summary["records"] == N and summary["valid"] == sum(not s["problems"] for s in scored)
