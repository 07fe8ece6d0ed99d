"""The teacher's money and a teacher that dies, against the local test teacher (tests/teacher_server.py): the
estimate before anything is paid, its confirmation, teacher.max_cost over a folder's runs at concurrency 16, and
exit 3 with the resume hint when the teacher stops answering."""

import json
import os
import pty
import subprocess
import sys
import threading
import time

import pytest

from conftest import RECIPE, ROOT, kill_labelling_after
from teacher_server import TeacherServer
from toolkit.cli import main
from toolkit.data.cost import count_prompts
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.task.recipe import load_recipe

KEY = "sk-test-money-3c2b1a-SECRET"
# Each answer of the test teacher is 100 tokens in, 40 out: at these prices 0.1 + 0.1 = 0.2 an answer.
PRICES = ["teacher.price_in_per_mtok=1000", "teacher.price_out_per_mtok=2500"]
ANSWER_COST = 0.2
NO_GATE = "teacher.gate.records=0"
TIMEOUT = "teacher.timeout_s=10"  # ten times the slowest answer seen under load; only a held teacher reaches it


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)


def label_argv(tmp_path, rows, base_url, *more):
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    return ["label", str(RECIPE), "--input", str(raw), "--out", str(tmp_path / "out"), "--base-url", base_url,
            NO_GATE, TIMEOUT, *more]


def gold(rows):
    return {r["text"]: r["label"] for r in rows}


def test_a_teacher_that_answers_three_then_hangs_stops_with_exit_3_and_the_resume_hint(tmp_path, key, pool, capsys):
    """Before: the 27 others each waited out 7 time-outs and their back-off, then "gave up", and the run ended
    with exit 0. Now the first round of time-outs (16 in flight) is DOWN_AFTER requests in a row without a
    response: exit 3, the answers kept, and the same command, once the teacher is back, asks only the rest."""
    rows = pool[:30]
    with TeacherServer(gold(rows), hold_after=3) as server:
        argv = label_argv(tmp_path, rows, server.base_url)
        start = time.monotonic()
        assert main(argv) == 3
        assert time.monotonic() - start < 300  # one round of 10 s time-outs; before: minutes, then exit 0
        err = capsys.readouterr().err
        # "3 answers" is at least 3: requests already past the server's gate when it held still deliver (seen: 5)
        done = len(read_jsonl(tmp_path / "out" / "labelled.jsonl"))
        assert 3 <= done < 30
        assert f"stopped answering: after {done} answers" in err and "no answer within 10 s" in err
        assert f"{done} of 30 records are answered and kept in" in err and \
               f"run the same command again to ask the {30 - done} others" in err
        assert json.loads((tmp_path / "out" / "label_summary.json").read_text())["accepted"] == done

        server.release()
        assert main(argv) == 0
        server.settled()
        assert len(read_jsonl(tmp_path / "out" / "labelled.jsonl")) == 30
        assert all(server.delivered[r["text"]] == 1 for r in rows)  # nothing paid twice


def test_a_teacher_that_dies_and_refuses_connections_stops_with_exit_3(tmp_path, key, pool, capsys):
    """The teacher's process is killed after its first answers: the requests in flight lose their connection and
    every new one is refused. Exit 3, whatever was answered kept; a teacher back (here another one) is asked only
    for the others."""
    rows = pool[:30]
    teacher = subprocess.Popen([sys.executable, str(ROOT / "tests" / "teacher_server.py"), "--latency", "0.3"],
                               stdout=subprocess.PIPE, text=True)
    try:
        base_url = teacher.stdout.readline().strip()
        labelled = tmp_path / "out" / "labelled.jsonl"

        def kill_after_three_answers():
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and not (labelled.is_file() and labelled.read_text().count("\n") >= 3):
                time.sleep(0.01)
            teacher.kill()

        threading.Thread(target=kill_after_three_answers, daemon=True).start()
        argv = label_argv(tmp_path, rows, base_url, "teacher.concurrency=4")
        assert main(argv) == 3
    finally:
        teacher.kill()
        teacher.wait()
    err = capsys.readouterr().err
    first = {r["id"] for r in read_jsonl(labelled)}
    assert "stopped answering" in err and "Connect" in err  # refused connections, the last of the failures
    assert f"{len(first)} of 30 records are answered" in err and 3 <= len(first) < 30
    with TeacherServer(gold(rows)) as server:
        argv[argv.index("--base-url") + 1] = server.base_url
        assert main(argv) == 0
        assert not [r for r in rows if r["id"] in first and server.requests[r["text"]]]
    assert len(read_jsonl(labelled)) == 30


def test_the_estimate_counts_the_prompts_as_sent_with_the_teachers_tokenizer(tmp_path, key, pool, capsys):
    """With teacher.tokenizer (here Qwen's, of the Qwen3 teacher the recipe names) the estimate is the exact token
    count of every chat the teacher then received, rendered by its chat template; without one, it says it is an
    estimate without a tokenizer. Each figure names the currency."""
    from qwen3_fixture import qwen3_tiny_folder
    from transformers import AutoTokenizer

    rows = pool[:10]
    folder = qwen3_tiny_folder()
    with TeacherServer(gold(rows)) as server:
        argv = label_argv(tmp_path, rows, server.base_url, f"teacher.tokenizer={folder}", "teacher.currency=CNY",
                          "teacher.price_in_per_mtok=2", "teacher.price_out_per_mtok=8")
        assert main(argv) == 0
    tok = AutoTokenizer.from_pretrained(folder)
    sent = [len(tok.apply_chat_template(b["messages"], tokenize=True, add_generation_prompt=True,
                                        enable_thinking=False)["input_ids"]) for b in server.bodies]
    planned = json.loads((tmp_path / "out" / "label_summary.json").read_text())["planned"]
    assert len(sent) == 10 and planned["prompt_tokens"] == sum(sent)
    in_cost, most = sum(sent) * 2 / 1e6, (sum(sent) * 2 + 10 * 512 * 8) / 1e6
    assert (planned["prompts_cost"], planned["at_most"]) == (round(in_cost, 6), round(most, 6))
    err = capsys.readouterr().err
    assert f"label: 10 records to ask: 10 requests, prompts of {sum(sent) / 10:,.0f} tokens each (counted with " \
           f"{folder}) ≈ {in_cost:.4g} CNY, answers of at most 512 tokens: at most {most:.4g} CNY" in err

    with TeacherServer(gold(pool[10:20])) as server:
        assert main(label_argv(tmp_path / "b", pool[10:20], server.base_url)) == 0
    assert "estimated without a tokenizer" in capsys.readouterr().err


def test_an_estimate_over_confirm_above_needs_yes_without_a_terminal(tmp_path, key, pool, capsys):
    rows = pool[:10]
    with TeacherServer(gold(rows)) as server:
        argv = label_argv(tmp_path, rows, server.base_url, "teacher.confirm_above=0.001")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "label: 10 records to ask" in err and "over teacher.confirm_above 0.001 USD: nothing was asked" in err
        assert "--yes" in err and sum(server.requests.values()) == 0
        assert main([*argv, "--yes"]) == 0
        assert len(read_jsonl(tmp_path / "out" / "labelled.jsonl")) == 10


def test_xtk_run_prints_the_estimate_and_needs_yes_as_label_does(tmp_path, key, pool, capsys):
    rows = pool[:10]
    raw = write_jsonl(tmp_path / "pool.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    with TeacherServer(gold(rows)) as server:
        argv = ["run", str(RECIPE), "--only", "data", "--run", str(tmp_path / "run"), f"data.pool={raw}",
                "--allow-path", str(tmp_path), f"teacher.base_url={server.base_url}", NO_GATE, TIMEOUT,
                "teacher.confirm_above=0.001"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "label: 10 records to ask" in err and "over teacher.confirm_above 0.001 USD: nothing was asked" in err
        assert sum(server.requests.values()) == 0
        assert main([*argv, "--yes"]) == 0
    assert len(read_jsonl(tmp_path / "run" / "data" / "labelled.jsonl")) == 10


def test_on_a_terminal_the_estimate_is_confirmed_before_anything_is_asked(tmp_path, pool):
    rows = pool[:5]
    env = {**os.environ, "DASHSCOPE_API_KEY": KEY}
    with TeacherServer(gold(rows)) as server:
        argv = [sys.executable, "-m", "toolkit", *label_argv(tmp_path, rows, server.base_url,
                                                             "teacher.confirm_above=0.001")]
        for answer, code in (("n", 2), ("y", 0)):
            leader, follower = pty.openpty()
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=follower, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            os.close(follower)
            os.write(leader, f"{answer}\n".encode())
            out, err = proc.communicate(timeout=600)
            os.close(leader)
            assert proc.returncode == code, err[-2000:]
            assert "over teacher.confirm_above 0.001 USD. Go on?" in " ".join(err.split())  # wrapped at 80
            if answer == "n":
                assert "not confirmed: nothing was asked" in err and sum(server.requests.values()) == 0
        assert len(read_jsonl(tmp_path / "out" / "labelled.jsonl")) == 5


def test_a_cap_without_prices_is_refused(tmp_path, key, pool, capsys):
    """Before, teacher.max_cost with the prices at 0 (what `xtk init` writes) was silently off."""
    rows = pool[:5]
    with TeacherServer(gold(rows)) as server:
        argv = label_argv(tmp_path, rows, server.base_url, "teacher.max_cost=5", "teacher.price_in_per_mtok=0",
                          "teacher.price_out_per_mtok=0")
        assert main(argv) == 2
        assert sum(server.requests.values()) == 0
    err = capsys.readouterr().err
    assert "key 'teacher.max_cost'" in err and "at prices of 0 nothing is counted" in err


def test_max_cost_holds_at_concurrency_16_across_a_kill_and_a_resume(tmp_path, key, pool, capsys):
    """400 records, 16 in flight, a cap of 50 (about 250 answers): the labeller is killed after 100 answers (20
    paid), the same command resumes, counts what the folder paid, and stops before the cap. What the teacher
    delivered (its log: every delivered answer billed) and what the folder's records say it paid agree, stay under
    the cap, and leave less than one request's worst case unspent. A third run asks nothing."""
    rows, cap = pool[:400], 50
    settings = [*PRICES, f"teacher.max_cost={cap}", "teacher.max_tokens=100", "teacher.concurrency=16"]
    env = {**os.environ, "DASHSCOPE_API_KEY": KEY}
    with TeacherServer(gold(rows), latency_s=0.05, hold_after=100) as server:
        argv = label_argv(tmp_path, rows, server.base_url, *settings, "--yes")
        command = [sys.executable, "-m", "toolkit", *argv]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        labelled = tmp_path / "out" / "labelled.jsonl"
        kill_labelling_after(proc, server, labelled, 100)  # held: 100 answers out, the rest waits
        server.release()

        resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 2, resumed.stderr[-2000:]
        assert f"teacher.max_cost {cap} USD reached: the folder has paid" in resumed.stderr
        server.settled()
        delivered = sum(server.delivered.values())
        answers = read_jsonl(labelled) + read_jsonl(tmp_path / "out" / "rejects.jsonl")
        paid = sum(r["cost"] for r in answers)
        assert len(answers) == delivered and paid == pytest.approx(delivered * ANSWER_COST)
        recipe = load_recipe(RECIPE, None, settings)
        prompts = count_prompts(recipe.teacher, recipe.prompt("teacher"), [r["text"] for r in rows])
        worst = max(prompts.bound) * 1000 / 1e6 + 100 * 2500 / 1e6
        assert cap - worst < paid <= cap  # under the cap, by less than one request's worst case

        asked = sum(server.requests.values())
        assert main(argv) == 2 and sum(server.requests.values()) == asked  # the folder's cap holds for every run
        assert f"the folder has paid {paid:.4g} USD" in capsys.readouterr().err
