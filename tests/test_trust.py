"""Runs you can trust: every way a run could silently report the wrong model, lose a label, pay twice, leak a
key or run foreign code, each checked against real files, real HTTP and real subprocesses."""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import RECIPE, ROOT
from teacher_server import TeacherServer
from toolkit.cli import main
from toolkit.io.errors import StageError
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.io.errors import DataError
from toolkit.data.label import run_label
from toolkit.io.trust import Consent
from toolkit.task.recipe import load_recipe

KEY = "sk-trust-0a1b2c3d4e5f-SECRET"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)


def raw_file(tmp_path, rows):
    return write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])


class StatusServer:
    """A test double for what no real endpoint does on cue: answer every request with one fixed status, its
    body echoing the request's Authorization header, as some gateways' error pages do."""

    def __init__(self, status: int):
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.requests += 1
                data = json.dumps({"error": {"message": f"denied for {self.headers.get('authorization')}"}}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


# --- 1. a training folder belongs to one configuration ---------------------------------------------------

def test_a_finished_training_of_other_settings_is_moved_aside_and_never_returned(tmp_path, smollm2_ref):
    from toolkit.train.swift import OWNER, run_train, train_key, trained_checkpoint

    recipe = load_recipe(RECIPE, "cpu", ["data.val_fraction=0", "train.early_stop_evals=null"])
    data = tmp_path / "data"
    from toolkit.data.prepare import gold_records, run_prepare

    run_prepare(recipe, gold_records(recipe)[:4], data)
    out = tmp_path / "train"
    ckpt = out / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    (out / "logging.jsonl").write_text(json.dumps({"last_model_checkpoint": str(ckpt)}) + "\n")
    (out / OWNER).write_text(json.dumps({"key": "an older configuration"}))
    key = train_key(recipe, smollm2_ref, data / "train.jsonl", None)
    assert trained_checkpoint(out, key) is None  # merge and eval never take it for this configuration
    # run_train moves it aside before training afresh: swift fails at once on a folder with no weights, which
    # is enough to see that nothing of the old run was reused or resumed from
    broken = smollm2_ref.__class__(str(tmp_path / "no-model"), "llama", "chatml", True)
    with pytest.raises(StageError, match="swift sft failed"):
        run_train(recipe, broken, data, out)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("train.superseded-")]
    assert len(aside) == 1 and (aside[0] / "checkpoint-5" / "trainer_state.json").is_file()
    assert not (out / "checkpoint-5").exists()
    log = (out / "train.log").read_text()
    assert "--resume_from_checkpoint" not in log
    # same settings: an unfinished folder is resumed, not moved; `xtk run --from train` (fresh) moves it too
    ckpt = out / "checkpoint-1"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text("{}")
    with pytest.raises(StageError):
        run_train(recipe, broken, data, out)
    assert "--resume_from_checkpoint" in (out / "train.log").read_text()
    with pytest.raises(StageError):
        run_train(recipe, broken, data, out, fresh=True)
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("train.superseded-")]) == 2


@pytest.fixture(scope="module")
def smollm2_ref():
    from toolkit.model.models import ResolvedModel

    return ResolvedModel("/nonexistent/smollm2", "llama", "chatml", True)


def test_the_report_leaves_out_evaluations_of_another_model(tmp_path):
    from toolkit.flow.pipeline import open_run, run_stage

    recipe = load_recipe(RECIPE, "cpu")
    with open_run(recipe, tmp_path) as ctx:
        from toolkit.flow.pipeline import evaluate_model, role

        evaluate_model(ctx, role(ctx, "rules"), tests=[str(recipe.path(recipe.data.test[0]))])
    # the same run folder, now with another prompt for the student: the rules evaluation describes the old one
    changed = load_recipe(RECIPE, "cpu", ["eval.max_new_tokens=99"])
    with open_run(changed, tmp_path) as ctx:
        with pytest.raises(StageError, match=r"(?s)no current evaluations.*rules-test: made with other settings"):
            run_stage(ctx, "report")
    with open_run(recipe, tmp_path) as ctx:
        report = run_stage(ctx, "report")[0].read_text()
    assert "rules-test (baseline, no model)" in report


# --- 2. run identity ------------------------------------------------------------------------------------

def test_each_student_gets_its_own_run_folder_and_eval_names_do_not_collide(tmp_path, capsys):
    from toolkit.run.manifest import default_run_dir, slug

    a = default_run_dir(load_recipe(RECIPE, "gpu"))
    b = default_run_dir(load_recipe(RECIPE, "gpu", ["student.model=unsloth/Qwen3-0.6B"]))
    assert a != b and a.parent == b.parent
    assert slug("Qwen/Qwen3-0.6B") != slug("unsloth/Qwen3-0.6B")
    assert slug(str(tmp_path / "x" / "model")) != slug(str(tmp_path / "y" / "model"))
    for bad in ("../../etc", "a/b", "-x", ".."):
        code = main(["eval", str(RECIPE), "--run", str(tmp_path / "run"), "--model", "rules", f"--name={bad}"])
        assert code == 2 and "--name" in capsys.readouterr().err
    assert not (tmp_path / "etc").exists()


# --- 3. endpoint evaluation -----------------------------------------------------------------------------

def test_endpoint_eval_over_several_batches_keeps_what_it_paid_for(tmp_path, monkeypatch, capsys):
    """The double answers from the test file's gold labels; one record's 200 has a truncated body."""
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    recipe = load_recipe(RECIPE)
    rows = read_jsonl(recipe.path(recipe.data.test[0]))[:12]
    test = write_jsonl(tmp_path / "t.jsonl", rows)
    gold = {r["text"]: r["label"] for r in rows}
    run = tmp_path / "run"
    args = ["eval", str(RECIPE), "--run", str(run), "--model", "teacher", "--test", str(test),
            "eval.batch_size=4", "teacher.max_retries=1"]
    with TeacherServer(gold, {rows[5]["text"]: "truncated_body"}) as server:
        assert main(args + ["--base-url", server.base_url]) == 0
        first = sum(server.requests.values())
        assert first == 12
        preds = read_jsonl(run / "eval" / "teacher-t" / "predictions.jsonl")
        assert [p["id"] for p in preds] == [r["id"] for r in rows]
        assert sum(p["exact"] for p in preds) == 11 and preds[5]["parsed"] is None
        # a re-run, and a run with another limit, pay for nothing they already have
        assert main(args + ["--base-url", server.base_url]) == 0
        assert main(args + ["--base-url", server.base_url, "eval.limit=6", "eval.base_limit=3"]) == 0
        assert sum(server.requests.values()) == first
    journal = (run / "cache" / "endpoint-answers.jsonl").read_text()
    assert KEY not in journal and len(journal.splitlines()) == 12
    capsys.readouterr()


def test_an_endpoint_slower_than_the_time_out_is_named_as_such(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    recipe = load_recipe(RECIPE)
    rows = read_jsonl(recipe.path(recipe.data.test[0]))[:2]
    test = write_jsonl(tmp_path / "t.jsonl", rows)
    # each answer would take 600 s; the server stops waiting when the client's 1 s time-out closes the connection
    with TeacherServer({r["text"]: r["label"] for r in rows}, latency_s=600) as server:
        code = main(["eval", str(RECIPE), "--run", str(tmp_path / "run"), "--model", "teacher", "--test",
                     str(test), "--base-url", server.base_url, "teacher.timeout_s=1", "teacher.max_retries=1"])
    err = capsys.readouterr().err
    assert code == 2 and "no answer within 1 s" in err and "is the server running" not in err.lower()


# --- 4, 6, 7. labels are never lost, never paid twice, one bad answer stops nothing -----------------------

def test_a_garbled_line_in_the_middle_stops_with_file_and_line_and_deletes_nothing(tmp_path, pool, key):
    rows = pool[:6]
    out = tmp_path / "out"
    with TeacherServer({r["text"]: r["label"] for r in rows}) as server:
        run_label(load_recipe(RECIPE), raw_file(tmp_path, rows[:4]), out, base_url=server.base_url)
        path = out / "labelled.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        lines[1] = lines[1][:30] + "\n"  # damaged by hand, not torn by a crash
        path.write_text("".join(lines))
        before = path.read_bytes()
        with pytest.raises(DataError, match=r"labelled.jsonl:2: not a complete JSON row"):
            run_label(load_recipe(RECIPE), raw_file(tmp_path, rows), out, base_url=server.base_url)
        assert path.read_bytes() == before
        # a torn last line (a crash mid-write) is the one thing dropped, and only its record is asked again
        good = [lines[0], lines[2]]
        path.write_text("".join(good) + lines[3][:25])
        server.requests.clear()
        summary = run_label(load_recipe(RECIPE), raw_file(tmp_path, rows), out, base_url=server.base_url)
        assert summary["already_done"] == 2 and sum(server.requests.values()) == 4
        assert path.read_text().startswith("".join(good))
        assert sorted(r["id"] for r in read_jsonl(path)) == sorted(r["id"] for r in rows)


def test_delivered_but_unusable_answers_are_kept_and_asked_again_only_on_request(tmp_path, pool, key):
    rows = pool[:8]
    modes = {rows[0]["text"]: "truncated_body", rows[1]["text"]: "number", rows[2]["text"]: "hallucinated",
             rows[3]["text"]: "schema", rows[4]["text"]: "429_nan"}
    recipe = load_recipe(RECIPE, None, ["teacher.max_retries=2"])
    with TeacherServer({r["text"]: r["label"] for r in rows}, modes) as server:
        summary = run_label(recipe, raw_file(tmp_path, rows), tmp_path, base_url=server.base_url)
        bad = {r["id"]: r["reason"] for r in read_jsonl(tmp_path / "rejects.jsonl")}
        assert bad == {rows[0]["id"]: "malformed", rows[1]["id"]: "malformed", rows[2]["id"]: "ungrounded",
                       rows[3]["id"]: "schema"}
        assert summary["accepted"] == 4 and summary["retries"] == 1  # the nan Retry-After was retried
        server.requests.clear()
        again = run_label(recipe, raw_file(tmp_path, rows), tmp_path, base_url=server.base_url)
        assert again["already_done"] == 8 and not server.requests  # paid answers are never asked again
        again = run_label(recipe, raw_file(tmp_path, rows), tmp_path, base_url=server.base_url, retry_rejects=True)
        assert sum(server.requests.values()) == 4 and again["already_done"] == 4


def test_retry_after_values_that_are_not_a_delay_fall_back_to_back_off():
    from email.utils import formatdate

    from toolkit.model.endpoint import retry_after

    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after": "nan"}) is None and retry_after({"retry-after": "-3"}) is None
    assert retry_after({"retry-after": "inf"}) is None and retry_after({"retry-after": "soon"}) is None
    assert 1 < retry_after({"retry-after": formatdate(time.time() + 5, usegmt=True)}) <= 5


@pytest.mark.parametrize("status,expect", [(401, "refused the API key"), (404, "answered the first request with HTTP 404")])
def test_an_endpoint_that_refuses_everything_stops_the_run_at_once(tmp_path, pool, status, expect, capsys):
    rows = pool[:50]
    with StatusServer(status) as server:
        env = {**os.environ, "DASHSCOPE_API_KEY": KEY}
        start = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "toolkit", "label", str(RECIPE), "--input",
                              str(raw_file(tmp_path, rows)), "--out", str(tmp_path / "out"), "--base-url",
                              server.base_url, "teacher.gate.records=0"], cwd=ROOT, env=env, capture_output=True,
                             text=True)
    assert res.returncode == 2 and expect in res.stderr, res.stderr[-2000:]
    # stopped at once: a handful of requests, not one per record; the time (seconds, most of it Python starting
    # up) only bounds a run that would sit out the back-off of 50 records
    assert time.monotonic() - start < 120 and server.requests <= 16
    assert KEY not in res.stderr + res.stdout
    for p in (tmp_path / "out").rglob("*"):
        assert KEY not in p.read_text(errors="replace")


def test_an_unreachable_endpoint_stops_the_run_at_once(tmp_path, pool, key):
    from toolkit.train.swift import free_port

    start = time.monotonic()
    with pytest.raises(StageError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1"):
        run_label(load_recipe(RECIPE), raw_file(tmp_path, pool[:40]), tmp_path / "out",
                  base_url=f"http://127.0.0.1:{free_port()}/v1")
    assert time.monotonic() - start < 15


def test_an_error_text_that_echoes_the_key_is_redacted_in_rejects_and_in_the_error(tmp_path, pool, key):
    recipe = load_recipe(RECIPE, None, ["teacher.max_retries=0"])
    with StatusServer(500) as server:
        with pytest.raises(StageError) as error:
            run_label(recipe, raw_file(tmp_path, pool[:2]), tmp_path, base_url=server.base_url)
    rejects = (tmp_path / "rejects.jsonl").read_text()
    assert rejects.count("denied for Bearer ***") == 2 and KEY not in rejects
    assert "denied for Bearer ***" in str(error.value) and KEY not in str(error.value)


# --- 5. one writer per folder ----------------------------------------------------------------------------

def test_a_second_labeller_into_the_same_folder_is_refused(tmp_path, pool):
    rows = pool[:40]
    raw = raw_file(tmp_path, rows)
    env = {**os.environ, "DASHSCOPE_API_KEY": KEY}
    # the server holds every answer after the first: the first labeller is still at work, however long the
    # second takes to start, until the test releases it
    with TeacherServer({r["text"]: r["label"] for r in rows}, hold_after=1) as server:
        args = [sys.executable, "-m", "toolkit", "label", str(RECIPE), "--input", str(raw), "--out",
                str(tmp_path / "out"), "--base-url", server.base_url, "teacher.concurrency=2", "teacher.gate.records=0"]
        first = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        labelled = tmp_path / "out" / "labelled.jsonl"
        server.wait_until(lambda: server.hold_after is None, 600)
        while not labelled.is_file() or not labelled.read_text():
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.05)
        second = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
        assert first.poll() is None  # it was still labelling while the second was refused
        server.release()
        assert first.wait(timeout=600) == 0
    assert second.returncode == 2 and "in use by another xtk label (pid" in second.stderr
    assert sorted(r["id"] for r in read_jsonl(labelled)) == sorted(r["id"] for r in rows)
    assert max(server.requests.values()) == 1


def test_manifest_writers_do_not_overwrite_each_other(tmp_path):
    from toolkit.run.manifest import Manifest

    a, b = Manifest(tmp_path), Manifest(tmp_path)
    a.record("eval_x", note="a")
    b.record("eval_y", note="b")  # b was read before a wrote
    assert set(Manifest(tmp_path).data["stages"]) == {"eval_x", "eval_y"}


# --- 8. secrets -------------------------------------------------------------------------------------------

def test_children_get_the_hub_tokens_they_need_and_logs_show_none(tmp_path, monkeypatch):
    from toolkit.io.runner import run_logged

    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnop")
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    code = ("import os, sys; print('hf', os.environ.get('HF_TOKEN')); "
            "print('teacher', os.environ.get('DASHSCOPE_API_KEY')); print('argv', sys.argv[1:])")
    run_logged([sys.executable, "-c", code, "--hub_token", "ms-hubtoken-123456"], tmp_path / "log")
    log = (tmp_path / "log").read_text()
    assert "hf ***" in log and "teacher None" in log  # passed on, yet never written
    assert "hf_abcdefghijklmnop" not in log and "ms-hubtoken-123456" not in log and KEY not in log
    from toolkit.io.secrets import child_env

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # a setting, not a secret: children keep it
    assert child_env()["TOKENIZERS_PARALLELISM"] == "false" and "DASHSCOPE_API_KEY" not in child_env()


def test_args_json_written_by_ms_swift_is_scrubbed_of_secret_arguments(tmp_path):
    """ms-swift writes every argument it was given into args.json (a --hub_token makes it log in to the hub,
    which this machine cannot reach, so the file is written here as ms-swift writes it)."""
    from toolkit.io.secrets import scrub_files, secret_arg_values

    argv = ["swift", "sft", "--model", "m", "--hub_token", "ms-hubtoken-123456"]
    args = tmp_path / "v0" / "args.json"
    args.parent.mkdir()
    args.write_text(json.dumps({"model": "m", "hub_token": "ms-hubtoken-123456", "lora_rank": 8}, indent=2))
    scrub_files(tmp_path.rglob("args.json"), secret_arg_values(argv))
    assert json.loads(args.read_text()) == {"model": "m", "hub_token": "***", "lora_rank": 8}


def test_secret_extra_args_never_reach_the_manifest(tmp_path, monkeypatch):
    from toolkit.flow.pipeline import open_run

    monkeypatch.setattr(sys, "argv", ["xtk", "run", "train.extra_args=[--hub_token,ms-hubtoken-123456]"])
    recipe = load_recipe(RECIPE, "cpu", ["train.extra_args=[--hub_token,ms-hubtoken-123456]"])
    with open_run(recipe, tmp_path):
        pass
    text = (tmp_path / "manifest.json").read_text()
    assert "ms-hubtoken-123456" not in text and "--hub_token" in text


# --- 9. custom code ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["tokenizer_config.json", "py"])
def test_a_folder_with_code_anywhere_is_refused_with_an_opt_in_that_exists(tmp_path, where, capsys):
    from toolkit.model.models import ModelError, check_custom_code

    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if where == "py":
        (model / "tokenization_x.py").write_text("open('/tmp/pwned', 'w')\n")
    else:
        (model / where).write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_x.X", None]}}))
    with pytest.raises(ModelError):
        check_custom_code(model, trust_remote_code=False)
    for command in (["eval", str(RECIPE), "--model", str(model), "--backend", "transformers"],
                    ["prepare", str(RECIPE), "student.model=" + str(model)]):
        code = main(command + ["--run", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 2 and "--trust-remote-code" in err
    from toolkit.cli import make_parser

    for name in ("eval", "prepare", "train", "run"):
        args = make_parser().parse_args([name, str(RECIPE), "--trust-remote-code"] +
                                        (["--model", "x"] if name == "eval" else []))
        assert args.trust_remote_code


# --- 12. internal errors are not user errors ------------------------------------------------------------

def test_a_bug_shows_its_traceback_and_vllm_is_closed_on_every_way_out(tmp_path, monkeypatch):
    import toolkit.infer.backends
    import toolkit.run.roles

    closed = []

    class Engine(toolkit.infer.backends.Backend):
        name = "fake"

        def generate(self, batch, max_tokens):
            raise KeyError("a bug")

        def close(self):
            closed.append(True)

    monkeypatch.setattr(toolkit.run.roles, "make_backend", lambda *a, **k: Engine())  # where engine() finds it
    with pytest.raises(KeyError):
        main(["eval", str(RECIPE), "--run", str(tmp_path), "--model", "base", "eval.limit=1"])
    assert closed == [True]


def test_a_key_at_its_default_does_not_change_a_stages_digest():
    """A newer xtk adds recipe keys with defaults: spelt out at that default, or absent, a section is the same
    configuration, and finished stages stay finished; another value is another configuration."""
    from conftest import RECIPE
    from toolkit.flow.pipeline import config_digest
    from toolkit.task.recipe import load_recipe

    plain = load_recipe(RECIPE, "cpu")
    assert config_digest(load_recipe(RECIPE, "cpu", ["train.deepspeed=null", "train.nnodes=1"]),
                         ("train",)) == config_digest(plain, ("train",))
    assert config_digest(load_recipe(RECIPE, "cpu", ["train.nnodes=2", "train.master_addr=h"]),
                         ("train",)) != config_digest(plain, ("train",))


def test_an_edited_prompt_file_changes_the_digests_of_what_read_it(tmp_path):
    """The same prompt file name with other words in it is another configuration for the stages that read that
    prompt (prepare writes it into every training row; evaluations ask with it), and the same one for the rest."""
    from conftest import RECIPE
    from toolkit.flow.pipeline import BY_NAME, config_digest
    from toolkit.task.recipe import load_recipe

    prompt = tmp_path / "student.md"
    digests = []
    for words in ("Extract the address as JSON.", "Extract the address as JSON, please."):
        prompt.write_text(words, encoding="utf-8")
        recipe = load_recipe(RECIPE, "cpu", [f"prompts.student={prompt}"], Consent(paths=(str(tmp_path),)))
        digests.append({name: config_digest(recipe, BY_NAME[name].config)
                        for name in ("prepare", "eval_student", "train", "data")})
    assert [name for name in digests[0] if digests[0][name] != digests[1][name]] == ["prepare", "eval_student"]
