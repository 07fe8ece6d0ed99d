"""`xtk label` against a real `swift deploy` of the embedded student on loopback (slow: the protocol, not
the quality: a 135M model's labels are poor and must be handled, not crash)."""

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import RECIPE
from toolkit.jsonl import read_jsonl, write_jsonl
from toolkit.label import run_label
from toolkit.recipe import load_recipe
from toolkit.train import free_port

pytestmark = pytest.mark.slow
REASONS = {"unparseable", "schema", "ungrounded", "empty", "no majority"}


def test_ten_records_through_swift_deploy(tmp_path, smollm2, monkeypatch):
    port = free_port()
    swift = str(Path(sys.executable).parent / "swift")
    server = subprocess.Popen([swift, "deploy", "--model", str(smollm2), "--model_type", "llama", "--template",
                               "chatml", "--infer_backend", "transformers", "--host", "127.0.0.1", "--port",
                               str(port), "--served_model_name", "smollm2", "--verbose", "false"],
                              stdout=(tmp_path / "deploy.log").open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "deploy.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "swift deploy did not come up in 300 s"
                time.sleep(2)
        monkeypatch.setenv("DASHSCOPE_API_KEY", "local")
        recipe = load_recipe(RECIPE, None, ["teacher.max_tokens=48", "teacher.concurrency=4",
                                            "teacher.enable_thinking=null", "teacher.timeout_s=300"])
        rows = read_jsonl(recipe.path(recipe.data.pool))[:10]
        raw = write_jsonl(tmp_path / "raw.jsonl", rows)
        summary = run_label(recipe, raw, tmp_path / "out", base_url=f"http://127.0.0.1:{port}/v1", model="smollm2")
    finally:  # `swift deploy` runs the server in a child process: stop the whole group
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    good, bad = read_jsonl(tmp_path / "out" / "labelled.jsonl"), read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert sorted(r["id"] for r in good + bad) == sorted(r["id"] for r in rows)
    assert {r["reason"] for r in bad} <= REASONS  # answered every time: no transport failure
    assert summary["tokens_out"] > 0 and summary["requests"] == 10
