"""xtk label against a local OpenAI-compatible server (tests/teacher_server.py) that injects faults."""

import json
import os
import subprocess
import sys

import pytest

from conftest import RECIPE, ROOT, kill_labelling_after
from teacher_server import TeacherServer
from toolkit.io.errors import Unanswered
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.model.endpoint import EndpointError
from toolkit.data.label import GAVE_UP, check_gold, majority, run_label
from toolkit.task.recipe import load_recipe

KEY = "sk-test-9f8e7d6c5b4a-SECRET"
MODES = {"fenced": "ok", "think": "ok", "429": "ok", "500": "ok", "slow": "ok", "drop": "ok",
         "truncated": "unparseable", "hallucinated": "ungrounded", "schema": "schema", "empty": "empty",
         "always500": GAVE_UP}
# A 10 s time-out: ten times the slowest answer seen under load (a 1 s one was hit by an answer that was merely
# late, on 2 loaded cores with client and server in one process). The `slow` fault waits for the client to give up
# (an event), so no answer here races the time-out and every attempt is one the fault modes call for.
RETRIES = ["teacher.max_retries=3", "teacher.timeout_s=10", "teacher.concurrency=32"]
SLOW_S = 600  # far past the time-out: a `slow` first attempt ends only when the client gives up on it


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)


def inputs_file(tmp_path, rows):
    return write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])


def assert_key_nowhere(folder, *texts):
    for p in folder.rglob("*"):
        if p.is_file():
            assert KEY not in p.read_text(errors="replace"), p
    for t in texts:
        assert KEY not in t


def test_thousand_records_with_faults_end_up_once_with_the_right_reason(tmp_path, pool, key, capfd):
    rows = pool[:1000]
    names = list(MODES)
    modes = {r["text"]: names[i % len(names)] for i, r in enumerate(rows[:220])}  # 20 of each mode
    recipe = load_recipe(RECIPE, None, RETRIES)
    with TeacherServer({r["text"]: r["label"] for r in rows}, modes, slow_s=SLOW_S) as server:
        # records that gave up end the run with exit 3, never 0: the next run asks them again
        with pytest.raises(Unanswered, match="20 records got no answer after 3 retries each .* 980 of 1000 records "
                                             "are answered .* run the same command again to ask the 20 others"):
            run_label(recipe, inputs_file(tmp_path, rows), tmp_path / "out", base_url=server.base_url, yes=True)
        summary = json.loads((tmp_path / "out" / "label_summary.json").read_text())
        good, bad = read_jsonl(tmp_path / "out" / "labelled.jsonl"), read_jsonl(tmp_path / "out" / "rejects.jsonl")
        ids = [r["id"] for r in good + bad]
        assert sorted(ids) == sorted(r["id"] for r in rows)  # every record exactly once
        expected = {r["id"]: MODES.get(modes.get(r["text"], "ok"), "ok") for r in rows}
        assert {r["id"]: "ok" for r in good} | {r["id"]: r["reason"] for r in bad} == expected
        gold = {r["id"]: r["label"] for r in rows}
        assert all(r["label"] == gold[r["id"]] for r in good)
        from teacher_server import TRANSIENT_TRIES

        # The exact figures come from the server's log, per record: transient faults were retried as often as
        # needed and no more, a record without a fault was asked once, and every record but the ones that gave up
        # was paid for (delivered) exactly once: an answer that reached the client is never asked for again.
        server.settled()
        retries = 0
        for r in rows:
            mode = modes.get(r["text"], "ok")
            tries = 4 if mode == "always500" else TRANSIENT_TRIES.get(mode, 0) + 1
            paid = 0 if mode == "always500" else 1
            assert (server.requests[r["text"]], server.delivered[r["text"]]) == (tries, paid), (r["id"], mode)
            retries += tries - 1
        assert summary["accepted"] == 1000 - 100 and summary["rejected"][GAVE_UP] == 20
        assert summary["retries"] == retries  # the client reports the retries the faults called for, no more
        assert summary["tokens_in"] == 100 * (1000 - 20) and summary["cost"] > 0
        assert set(server.auth_headers) == {f"Bearer {KEY}"}

        # a re-run pays for nothing that finished; only the records that gave up are asked again, and as
        # the endpoint still fails every one of them the same way, the run stops saying so
        before = server.requests.copy()
        with pytest.raises(EndpointError, match="all failed without a single answer.*HTTP 500"):
            run_label(recipe, inputs_file(tmp_path, rows), tmp_path / "out", base_url=server.base_url)
        asked = {t for t in server.requests if server.requests[t] > before[t]}
        assert asked and asked <= {t for t, m in modes.items() if m == "always500"}
        bad = read_jsonl(tmp_path / "out" / "rejects.jsonl")
        assert len({r["id"] for r in bad}) == len(bad) and len(bad) >= 80  # each at most once, none lost
    out, err = capfd.readouterr()
    assert_key_nowhere(tmp_path, out, err)


def test_sigkill_mid_run_then_rerun_loses_nothing_and_repeats_nothing(tmp_path, pool):
    rows = pool[:200]
    raw = inputs_file(tmp_path, rows)
    out_dir = tmp_path / "data"
    # the server holds its answers after 60 (the labeller is killed mid-run however slowly this test polls)
    with TeacherServer({r["text"]: r["label"] for r in rows}, latency_s=0.1, hold_after=60) as server:
        args = [sys.executable, "-m", "toolkit", "label", str(RECIPE), "--input", str(raw), "--out", str(out_dir),
                "--base-url", server.base_url, "teacher.concurrency=4", "teacher.gate.records=0"]
        env = {**os.environ, "DASHSCOPE_API_KEY": KEY}
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        labelled = out_dir / "labelled.jsonl"
        kill_labelling_after(proc, server, labelled, 40)  # held: 60 answers out, the rest waits
        first = {r["id"] for r in read_jsonl(labelled)}
        assert 40 <= len(first) < 200
        server.release()
        server.requests.clear()
        res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
        final = read_jsonl(labelled)
        assert sorted(r["id"] for r in final) == sorted(r["id"] for r in rows)  # none lost, none twice
        by_id = {r["id"]: r["text"] for r in rows}
        assert not [i for i in first if server.requests[by_id[i]]]  # no request for a finished record
        assert_key_nowhere(tmp_path, res.stdout, res.stderr)


def test_votes_keep_the_fieldwise_majority_and_reject_a_split():
    recipe = load_recipe(RECIPE)
    a = {"province": "天津市", "city": "天津市", "district": "和平区", "specific_location": "南京路1号",
         "name": "张三", "phone": "13812345678"}
    label, _ = majority(recipe, [a, {**a, "name": "张山"}, a])
    assert label == a
    label, field = majority(recipe, [a, {**a, "name": "张山"}, {**a, "name": "章三"}])
    assert label is None and field == "name"


def test_votes_against_the_server_and_check_gold(tmp_path, pool, key):
    rows = pool[:30]
    recipe = load_recipe(RECIPE)
    with TeacherServer({r["text"]: r["label"] for r in rows}, {rows[0]["text"]: "hallucinated"}) as server:
        summary = run_label(recipe, inputs_file(tmp_path, rows), tmp_path, base_url=server.base_url, votes=3)
        assert summary["requests"] == 90 and summary["accepted"] == 29
    gold = write_jsonl(tmp_path / "gold.jsonl", [{"id": r["id"], "label": r["label"]} for r in rows])
    m = check_gold(recipe, tmp_path / "labelled.jsonl", gold, tmp_path / "check.json")
    assert m["n"] == 30 and m["exact_match"]["k"] == 29 and m["json_parse_rate"]["k"] == 29


def test_missing_key_and_bad_input_are_clear_errors(tmp_path, monkeypatch):
    from toolkit.io.errors import StageError
    from toolkit.io.errors import DataError

    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    recipe = load_recipe(RECIPE)
    with pytest.raises(StageError, match=r"set \$DASHSCOPE_API_KEY"):
        run_label(recipe, tmp_path / "x.txt", tmp_path)
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"id": 1, "text": "a"}\n{"id": 2}\n')
    with pytest.raises(DataError, match=r"in.jsonl:2: expected a JSON object with a non-empty text"):
        run_label(recipe, bad, tmp_path)
    txt = tmp_path / "in.txt"
    txt.write_text("第一条\n\n第二条\n")
    from toolkit.data.label import read_inputs

    assert read_inputs(txt, 100) == [{"id": "line-1", "text": "第一条"}, {"id": "line-3", "text": "第二条"}]


def test_a_label_outside_the_table_is_repaired_where_the_table_tells_how_else_rejected_with_why(tmp_path, pool, key):
    """logistics_zh binds province, city and district to the MCA table: an answer naming a county under another
    province is repaired from the county (the row records what changed), one naming a county the table lacks is
    rejected with its reason. The teacher double answers these labels as given."""
    recipe = load_recipe(RECIPE)
    table = recipe.table_of("district")
    unique = {d for d in table.values("district") if sum(c[2] == d for c in table.rows) == 1}
    rows = [r for r in pool if r["label"]["district"] in unique][:3]
    other = next(p for p in table.values("province") if p != rows[0]["label"]["province"])
    answers = {rows[0]["text"]: {**rows[0]["label"], "province": other},
               rows[1]["text"]: {**rows[1]["label"], "district": "滨江西路区"},
               rows[2]["text"]: rows[2]["label"]}
    with TeacherServer(answers) as server:
        summary = run_label(recipe, inputs_file(tmp_path, rows), tmp_path, base_url=server.base_url)
    good = {r["id"]: r for r in read_jsonl(tmp_path / "labelled.jsonl")}
    bad = {r["id"]: r for r in read_jsonl(tmp_path / "rejects.jsonl")}
    assert summary["accepted"] == 2 and summary["rejected"] == {"not in the table": 1}
    assert good[rows[0]["id"]]["label"] == rows[0]["label"]
    assert good[rows[0]["id"]]["repaired"] == {"province": [other, rows[0]["label"]["province"]]}
    assert "repaired" not in good[rows[2]["id"]] and good[rows[2]["id"]]["label"] == rows[2]["label"]
    assert bad[rows[1]["id"]]["detail"] == "district '滨江西路区' is not in the table"
