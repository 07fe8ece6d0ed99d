"""Real ms-swift training and merging of the embedded SmolLM2 student on CPU (slow: minutes)."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import pytest

from conftest import RECIPE, ROOT, SMOLLM2_STUDENT
from toolkit.train.swift import checkpoints, read_log, stale_trainers

pytestmark = pytest.mark.slow
TINY = [*SMOLLM2_STUDENT, "data.train_records=24", "data.val_fraction=0.1", "train.per_device_train_batch_size=2",
        "train.per_device_eval_batch_size=2", "train.logging_steps=1"]


def xtk(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=ROOT, capture_output=True, text=True,
                          **kwargs)


def test_train_then_merge_for_real(tmp_path):
    run = tmp_path / "run"
    res = xtk("train", str(RECIPE), "--profile", "cpu", "--run", str(run), *TINY,
              "train.max_steps=8", "train.save_steps=4", "train.eval_steps=4")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_log(run / "train")
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 8 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learned
    assert any("eval_loss" in r for r in rows)
    assert (run / "loss.png").stat().st_size > 10_000
    assert (run / "train" / "images" / "train_loss.png").is_file()
    manifest = json.loads((run / "manifest.json").read_text())
    train = manifest["stages"]["train"]
    assert train["status"] == "done" and "--tuner_type" in train["argv"]
    stats = json.loads((run / "data" / "stats.json").read_text())
    assert train["train_rows_seen_by_swift"] == stats["train"] == 22  # no row silently dropped

    res = xtk("merge", str(RECIPE), "--profile", "cpu", "--run", str(run), *TINY,
              "train.max_steps=8", "train.save_steps=4", "train.eval_steps=4")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "moved" not in res.stderr  # merged what was trained, under the same settings
    merged = run / "merged"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(merged), AutoModelForCausalLM.from_pretrained(merged)
    assert not (merged / "adapter_config.json").exists()  # a plain model, LoRA folded in
    ids = tok.apply_chat_template([{"role": "user", "content": "张三 13812345678 北京市朝阳区建国路1号"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert len(tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()) > 0


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    """kill -9 of the job's process group leaves torchrun's workers training (they run in sessions of their
    own) and rotating checkpoints away; the re-run must stop them, then resume from the newest checkpoint.
    20 steps: with 6, the orphans finished the training before the re-run started (failed in CI twice)."""
    run = tmp_path / "run"
    args = ["train", str(RECIPE), "--profile", "cpu", "--run", str(run), *TINY, "data.val_fraction=0",
            "train.early_stop_evals=null", "train.max_steps=20", "train.save_steps=2"]
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not checkpoints(run / "train") and time.monotonic() < deadline:
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # xtk and swift, as a crash or `kill -9` of the job would
    proc.wait()
    # Freeze the orphans where they are: on a busy machine they finished all 20 steps before the re-run began,
    # leaving nothing to resume (CI). Frozen, they still hold the folder, and the re-run must still stop them.
    for pid in stale_trainers(run / "train"):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
    done = checkpoints(run / "train")
    assert done, "no checkpoint was written before the deadline"
    first = int(done[-1].name.split("-")[1])
    assert first < 20
    # Workers that outlived the job (torchrun starts them in sessions of their own) may keep training and
    # rotating checkpoints away, or die on their next write to the dead job's pipe: either way the re-run
    # must find none left and resume.

    res = xtk(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not stale_trainers(run / "train")
    train = json.loads((run / "manifest.json").read_text())["stages"]["train"]
    resumed = int(Path(train["resumed_from"]).name.split("-")[1])  # the orphans may have saved one more
    assert first <= resumed < 20
    steps = [int(r["global_step/max_steps"].split("/")[0]) for r in read_log(run / "train") if "loss" in r]
    assert steps[-1] == 20 and steps.count(1) == 1  # continued after the checkpoint, did not start over
    assert checkpoints(run / "train")[-1].name == "checkpoint-20"
