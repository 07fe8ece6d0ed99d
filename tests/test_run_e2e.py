"""`xtk run` end to end on the embedded student with a tiny override, then its skip and resume rules."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import RECIPE, ROOT, SMOLLM2_STUDENT

pytestmark = pytest.mark.slow
TINY = [*SMOLLM2_STUDENT, "data.train_records=12", "data.val_fraction=0.2", "train.max_steps=3", "train.save_steps=3",
        "train.eval_steps=3", "train.per_device_train_batch_size=2", "eval.backend=transformers", "eval.limit=3",
        "eval.max_new_tokens=48"]


def xtk_run(run, *extra):
    res = subprocess.run([sys.executable, "-m", "toolkit", "run", str(RECIPE), "--profile", "cpu", "--run",
                          str(run), *TINY, *extra], cwd=ROOT, capture_output=True, text=True,
                         env={**__import__("os").environ, "DASHSCOPE_API_KEY": ""})
    assert res.returncode == 0, res.stderr[-4000:]
    return res


def ran(res):
    return re.findall(r"^stage (\w+)$", res.stderr, re.M)


def test_run_makes_every_artifact_then_skips_and_resumes_precisely(tmp_path, smollm2):
    run = tmp_path / "run"
    xtk_run(run)
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    assert all(stages[s]["status"] == "done" for s in
               ("data", "prepare", "eval_base", "train", "merge", "eval_student", "eval_rules", "report"))
    assert "generator gold labels" in stages["data"]["source"]
    assert stages["train"]["argv"][:2] == ["swift", "sft"] and stages["merge"]["argv"][:2] == ["swift", "export"]
    # The cpu profile's two processes are one DDP job (else each trains alone on half the data, unsynced).
    assert "parallel_mode != ParallelMode.DISTRIBUTED" not in (run / "train" / "train.log").read_text()
    assert manifest["versions"]["ms-swift"].startswith("4.")
    for f in ("data/labelled.jsonl", "data/train.jsonl", "data/val.jsonl", "data/stats.json", "loss.png",
              "merged/config.json", "merged/model.safetensors", "report.md", "accuracy.png"):
        assert (run / f).is_file(), f
    for who in ("base", "student", "rules"):
        for test in ("test", "test_unseen"):
            m = json.loads((run / "eval" / f"{who}-{test}" / "metrics.json").read_text())
            assert m["n"] == 3
    report = (run / "report.md").read_text()
    assert "generator gold labels" in report and "(baseline, no model)" in report and "loss.png" in report

    res = xtk_run(run)
    assert res.stderr.count("complete, skipped") == 13 and not ran(res)

    shutil.rmtree(run / "merged")
    res = xtk_run(run)
    assert ran(res) == ["merge", "eval_student", "report"]

    # another training setting: trained afresh (the old adapter moved aside, never resumed or reused), and
    # merge, the student's evaluation and the report all describe the new model
    old_key = json.loads((run / "manifest.json").read_text())["stages"]["train"]["key"]
    res = xtk_run(run, "train.learning_rate=0.001")
    assert ran(res) == ["train", "merge", "eval_student", "report"]
    assert len(list(run.glob("train.superseded-*"))) == 1
    manifest = json.loads((run / "manifest.json").read_text())
    new_key = manifest["stages"]["train"]["key"]
    assert new_key != old_key and manifest["stages"]["train"]["resumed_from"] is None
    assert json.loads((run / "merged" / "xtk-model.json").read_text())["train_key"] == new_key
    for test in ("test", "test_unseen"):
        m = json.loads((run / "eval" / f"student-{test}" / "metrics.json").read_text())
        assert m["identity"]["train_key"] == new_key
    assert "student-test (fine-tuned student" in (run / "report.md").read_text()

    # the audit's case (issue 29): `--only train` with yet another learning rate, no merge, then `--only report`:
    # the loss chart, fit and minutes are the new training's, so the old student's rows are left out and named
    xtk_run(run, "train.learning_rate=0.002", "--only", "train")
    assert json.loads((run / "manifest.json").read_text())["stages"]["train"]["key"] != new_key
    xtk_run(run, "train.learning_rate=0.002", "--only", "report")
    report = (run / "report.md").read_text()
    assert "student-test (fine-tuned" not in report.split("Left out")[0] and "## Training" in report
    assert "`student-test` (made with the student of an earlier training" in report
