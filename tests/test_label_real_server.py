"""`xtk label` and `xtk eval --backend openai` against a real `swift deploy` of the embedded student on
loopback (slow: the protocol, not the quality: a 135M model's labels are poor and must be handled, not crash)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import RECIPE
from toolkit.cli import main
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.data.label import run_label
from toolkit.task.recipe import load_recipe
from toolkit.train.swift import free_port

pytestmark = pytest.mark.slow
REASONS = {"unparseable", "schema", "ungrounded", "empty", "no majority", "not allowed"}


@pytest.fixture(scope="module")
def deployed(smollm2, tmp_path_factory):
    """`swift deploy` of the embedded student, served as "smollm2"; yields (base_url, stop)."""
    port = free_port()
    log = tmp_path_factory.mktemp("deploy") / "deploy.log"
    swift = str(Path(sys.executable).parent / "swift")
    server = subprocess.Popen([swift, "deploy", "--model", str(smollm2), "--model_type", "llama", "--template",
                               "chatml", "--infer_backend", "transformers", "--host", "127.0.0.1", "--port",
                               str(port), "--served_model_name", "smollm2", "--verbose", "false"],
                              stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop():  # `swift deploy` runs the server in a child process: stop the whole group
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=120)
            except subprocess.TimeoutExpired:  # a loaded box can be slow to shut down: nothing is left running
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()

    try:
        deadline = time.monotonic() + 900  # a bound for a stuck server only, not a measure of a slow start
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                assert server.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "swift deploy did not come up in 900 s"
                time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1", stop
    finally:
        stop()


def test_ten_records_through_swift_deploy(tmp_path, deployed, monkeypatch):
    base_url, _ = deployed
    monkeypatch.setenv("DASHSCOPE_API_KEY", "local")
    recipe = load_recipe(RECIPE, None, ["teacher.max_tokens=48", "teacher.concurrency=4",
                                        "teacher.enable_thinking=null", "teacher.timeout_s=300"])
    rows = read_jsonl(recipe.path(recipe.data.pool))[:10]
    raw = write_jsonl(tmp_path / "raw.jsonl", rows)
    summary = run_label(recipe, raw, tmp_path / "out", base_url=base_url, model="smollm2")
    good, bad = read_jsonl(tmp_path / "out" / "labelled.jsonl"), read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert sorted(r["id"] for r in good + bad) == sorted(r["id"] for r in rows)
    assert {r["reason"] for r in bad} <= REASONS  # answered every time: no transport failure
    assert summary["tokens_out"] > 0 and summary["requests"] == 10


def test_synth_then_label_what_it_wrote_through_swift_deploy(tmp_path, deployed, monkeypatch):
    """`xtk synth` asks the served student for new inputs in batches of 3 concurrent requests (4 inputs each),
    then `xtk label` labels the pool it wrote. The protocol end to end: a 135M model's inputs are poor, and
    whatever it writes must be parsed, filtered and labelled or rejected, never crash."""
    from toolkit.data.synth import run_synth

    base_url, _ = deployed
    monkeypatch.setenv("DASHSCOPE_API_KEY", "local")
    recipe = load_recipe(RECIPE, None, ["teacher.max_tokens=96", "teacher.concurrency=3", "teacher.timeout_s=300",
                                        "teacher.enable_thinking=null", "synth.per_request=4", "synth.smoke=12",
                                        "synth.examples_shown=3"])
    examples = write_jsonl(tmp_path / "examples.jsonl", read_jsonl(recipe.path(recipe.data.pool))[:10])
    summary = run_synth(recipe, examples, 12, tmp_path / "synth", yes=True, base_url=base_url, model="smollm2")
    journal = read_jsonl(tmp_path / "synth" / "synth-answers.jsonl")
    assert len(journal) == summary["requests"] >= 3 and summary["unanswered"] == 0  # every request answered
    assert all(r["raw"] and r["tokens"][1] > 0 for r in journal)
    pool = read_jsonl(tmp_path / "synth" / "pool.jsonl")
    assert len(pool) == summary["written"] and 1 <= len(pool) <= 12
    tests = {r["text"] for f in recipe.data.test for r in read_jsonl(recipe.path(f))}
    assert not tests & {r["text"] for r in pool}
    labelled = run_label(recipe, tmp_path / "synth" / "pool.jsonl", tmp_path / "labels", base_url=base_url,
                         model="smollm2")
    good, bad = read_jsonl(tmp_path / "labels" / "labelled.jsonl"), read_jsonl(tmp_path / "labels" / "rejects.jsonl")
    assert sorted(r["id"] for r in good + bad) == sorted(r["id"] for r in pool)
    assert {r["reason"] for r in bad} <= REASONS and labelled["requests"] == len(pool)


def test_endpoint_eval_over_three_batches_then_from_its_journal_with_the_server_gone(tmp_path, deployed):
    """Runs last in this module: it stops the server to prove the re-run sends nothing."""
    base_url, stop = deployed
    run = tmp_path / "run"
    args = ["eval", str(RECIPE), "--run", str(run), "--model", "smollm2", "--backend", "openai", "--base-url",
            base_url, "--name", "served", "eval.batch_size=4", "eval.limit=12", "eval.max_new_tokens=24",
            "teacher.timeout_s=300"]
    assert main(args) == 0
    first = read_jsonl(run / "eval" / "served-test" / "predictions.jsonl")
    assert len(first) == 12 and all(p["raw"] for p in first)  # 3 batches, every record answered
    journal = read_jsonl(run / "cache" / "endpoint-answers.jsonl")
    assert len(journal) == 24  # 12 records x the recipe's two test files, each paid once
    stop()
    assert main(args) == 0  # nothing to ask: every answer comes from the journal
    again = read_jsonl(run / "eval" / "served-test" / "predictions.jsonl")
    assert [p["raw"] for p in again] == [p["raw"] for p in first]
    metrics = json.loads((run / "eval" / "served-test" / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["backend"] == "openai"
