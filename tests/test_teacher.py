"""The teacher gate, the labelling budget, the gap closed: against the local test teacher (tests/teacher_server.py,
a real HTTP server answering scripted labels with the faults named)."""

import json

import pytest

from conftest import RECIPE, ROOT
from teacher_server import TeacherServer
from toolkit.cli import main
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.task.recipe import load_recipe

KEY = "sk-test-gate-7a6b5c-SECRET"


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)


@pytest.fixture(scope="module")
def tests_rows():
    recipe = load_recipe(RECIPE)
    return read_jsonl(recipe.path(recipe.data.test[0]))


def run_data(tmp_path, server, pool_rows, *more):
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"id": r["id"], "text": r["text"]} for r in pool_rows])
    return main(["run", str(RECIPE), "--only", "data", "--run", str(tmp_path / "run"), f"data.pool={pool}",
                 "--allow-path", str(tmp_path), f"teacher.base_url={server.base_url}", "teacher.gate.records=20", *more])


def gate_entry(tmp_path):
    return json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["teacher_gate"]


@pytest.mark.parametrize("mode, faulty, verdict, exact", [("hallucinated", 10, "ITERATE", 0.5),
                                                          ("empty", 16, "RETHINK", 0.2)])
def test_a_weak_teacher_stops_the_run_before_it_labels_the_pool(tmp_path, key, pool, tests_rows, capsys, mode,
                                                                faulty, verdict, exact):
    """10 of the first 20 test answers with a made-up phone: exact match and phone 50% (ITERATE: below 60% and
    70%); 16 empty answers: 20% exact match, below rethink_exact 30% (RETHINK). Not one pool text is asked for;
    --force labels the pool and keeps the verdict."""
    gold = {r["text"]: r["label"] for r in tests_rows + pool[:30]}
    modes = {r["text"]: mode for r in tests_rows[:faulty]}
    with TeacherServer(gold, modes) as server:
        assert run_data(tmp_path, server, pool[:30]) == 2
        err = capsys.readouterr().err
        assert f"teacher gate: {verdict}" in err and "--force" in err and tests_rows[0]["id"] in err
        assert sum(server.requests[r["text"]] for r in pool[:30]) == 0  # nothing paid for the pool
        assert sum(server.requests.values()) == 20
        entry = gate_entry(tmp_path)
        assert (entry["verdict"], entry["n"], entry["exact_match"]["value"]) == (verdict, 20, exact)
        assert entry["status"] == "running" and not (tmp_path / "run" / "data" / "labelled.jsonl").exists()
        if verdict == "ITERATE":
            assert entry["reasons"] == ["exact match 50.0% is below teacher.gate.min_exact 60%",
                                        "phone 50.0% is below teacher.gate.min_field 70%"]
            assert list(entry["fields"])[0] == "phone"  # worst first

        # a second try asks the teacher nothing again: the gate's answers are journalled in the run
        assert run_data(tmp_path, server, pool[:30]) == 2
        assert sum(server.requests.values()) == 20

        assert run_data(tmp_path, server, pool[:30], "--force") == 0
        assert len(read_jsonl(tmp_path / "run" / "data" / "labelled.jsonl")) == 30
        assert all(server.requests[r["text"]] == 1 for r in pool[:30])
        entry = gate_entry(tmp_path)
        assert (entry["verdict"], entry["forced"], entry["status"]) == (verdict, True, "done")
    assert KEY not in (tmp_path / "run" / "manifest.json").read_text()


def test_a_good_teacher_proceeds_and_its_evaluation_pays_for_the_gate_records_once(tmp_path, key, pool,
                                                                                      tests_rows):
    gold = {r["text"]: r["label"] for r in tests_rows + pool[:10]}
    with TeacherServer(gold) as server:
        assert run_data(tmp_path, server, pool[:10]) == 0
        assert gate_entry(tmp_path)["verdict"] == "PROCEED"
        assert len(read_jsonl(tmp_path / "run" / "data" / "labelled.jsonl")) == 10
        assert main(["eval", str(RECIPE), "--model", "teacher", "--run", str(tmp_path / "run"),
                     "--test", str(load_recipe(RECIPE).path(load_recipe(RECIPE).data.test[0])),
                     f"teacher.base_url={server.base_url}", "eval.limit=25", "--allow-path", str(tmp_path)]) == 0
        # the 20 the gate asked are not asked again; the 5 more are asked once
        assert [server.requests[r["text"]] for r in tests_rows[:26]] == [1] * 25 + [0]


@pytest.mark.parametrize("setting, thinking", [("teacher.model=deepseek-v3", False),
                                               ("teacher.temperature=0.3", False),
                                               ("teacher.enable_thinking=true", True),
                                               ("teacher.enable_thinking=null", None)])
def test_the_gate_asks_the_teacher_with_the_settings_it_labels_with(tmp_path, key, pool, tests_rows, setting,
                                                                     thinking):
    """The gate scores the teacher as it will label: its 20 requests and labelling's carry the same settings
    beside the chat: length, temperature and teacher.enable_thinking whatever the teacher's name (before, the
    gate sent the switch only to a model named qwen3, and asked with eval's length and temperature 0). Null sends
    no switch at all."""
    gold = {r["text"]: r["label"] for r in tests_rows + pool[:5]}
    with TeacherServer(gold) as server:
        assert run_data(tmp_path, server, pool[:5], setting) == 0
    settings = {json.dumps({k: v for k, v in body.items() if k != "messages"}, sort_keys=True)
                for body in server.bodies}
    assert len(server.bodies) == 25 and len(settings) == 1, settings  # 20 for the gate, 5 to label
    [sent] = map(json.loads, settings)
    assert sent.get("enable_thinking", "not sent") == ("not sent" if thinking is None else thinking)



def test_a_served_model_other_than_the_teacher_is_asked_as_eval_asks(tmp_path, key, tests_rows):
    """Only the recipe's teacher is asked with its labelling settings: a student behind `swift deploy`, evaluated
    with --backend openai, is asked greedily with eval's length (with the teacher's 512 tokens, the served base
    model rambled until the real-server test timed out)."""
    with TeacherServer({r["text"]: r["label"] for r in tests_rows}) as server:
        assert main(["eval", str(RECIPE), "--run", str(tmp_path / "run"), "--model", "served-student", "--backend",
                     "openai", "--base-url", server.base_url, "--name", "served", "--test",
                     str(load_recipe(RECIPE).path(load_recipe(RECIPE).data.test[0])), "eval.limit=3",
                     "eval.max_new_tokens=24", "teacher.temperature=0.3", "teacher.max_tokens=512"]) == 0
    assert server.bodies and {(b["max_tokens"], b["temperature"]) for b in server.bodies} == {(24, 0.0)}

def test_xtk_label_runs_the_gate_before_it_asks_for_one_text(tmp_path, key, pool, tests_rows, capsys):
    """`xtk label` alone gates the teacher as `xtk run` does, the teacher named by --base-url: 10 made-up phones
    in the 20 gate records stop it (exit 2, ITERATE) before one of the texts is asked for; a second try asks
    nothing again; --force labels them; a later label without --force reuses the forced verdict."""
    rows = pool[:10]
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    gold = {r["text"]: r["label"] for r in tests_rows + rows}
    with TeacherServer(gold, {r["text"]: "hallucinated" for r in tests_rows[:10]}) as server:
        argv = ["label", str(RECIPE), "--input", str(raw), "--run", str(tmp_path / "run"), "--out",
                str(tmp_path / "labels"), "--base-url", server.base_url, "teacher.gate.records=20"]
        assert main(argv) == 2
        assert "teacher gate: ITERATE" in capsys.readouterr().err
        assert sum(server.requests[r["text"]] for r in rows) == 0 and sum(server.requests.values()) == 20
        assert not (tmp_path / "labels" / "labelled.jsonl").exists()
        assert main(argv) == 2 and sum(server.requests.values()) == 20
        assert main([*argv, "--force"]) == 0
        assert len(read_jsonl(tmp_path / "labels" / "labelled.jsonl")) == 10
        assert (gate_entry(tmp_path)["verdict"], gate_entry(tmp_path)["forced"]) == ("ITERATE", True)
        assert main(argv) == 0 and sum(server.requests.values()) == 30  # nothing asked again
    assert KEY not in (tmp_path / "run" / "manifest.json").read_text()


def test_the_budget_stops_labelling_cleanly_and_a_resume_pays_exactly_the_rest(tmp_path, key, pool, capsys):
    """Each answer of the test teacher is 100 tokens in and 40 out: at 1000 and 2500 a million, 0.2 each. With
    answers of at most 40 tokens, a request's worst case is its prompt's bound (its UTF-8 bytes, no tokenizer
    named) at 1000 a million and 0.1 out, about 1.5: one at a time, a max_cost of 5.6 stops before the request
    whose worst case would pass it, after 21 answers (4.2 paid). The estimate from the first 20 answers says 30
    records cost 6. A re-run under the same cap asks nothing (the folder has paid); without a cap it asks for the
    others only."""
    from toolkit.data.cost import count_prompts
    from toolkit.data.label import BudgetStop, run_label

    rows = pool[:30]
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    prices = ["teacher.price_in_per_mtok=1000", "teacher.price_out_per_mtok=2500", "teacher.concurrency=1",
              "teacher.max_tokens=40"]
    capped = load_recipe(RECIPE, None, [*prices, "teacher.max_cost=5.6"])
    bounds = count_prompts(capped.teacher, capped.prompt("teacher"), [r["text"] for r in rows]).bound
    worst = [b * 1000 / 1e6 + 40 * 2500 / 1e6 for b in bounds]
    asked = next(n for n in range(30) if n * 0.2 + worst[n] > 5.6)  # the first record whose worst case passes
    assert asked == 21
    with TeacherServer({r["text"]: r["label"] for r in rows}) as server:
        with pytest.raises(BudgetStop, match="teacher.max_cost 5.6 USD reached: the folder has paid 4.2 USD and "
                                             "the next request's worst case would pass it. 21 of 30 records"):
            run_label(capped, raw, tmp_path / "out", base_url=server.base_url, yes=True)
        assert "20 answers: 100 tokens in, 40 out a record; 30 records ≈ 6 USD at teacher.price_*; teacher.max_cost " \
               "5.6 USD stops it" in capsys.readouterr().err
        summary = json.loads((tmp_path / "out" / "label_summary.json").read_text())
        assert (summary["accepted"], summary["cost"], summary["estimate"]["cost"]) == (21, 4.2, 6.0)
        server.settled()
        assert sum(server.delivered.values()) == 21 and len(read_jsonl(tmp_path / "out" / "labelled.jsonl")) == 21

        with pytest.raises(BudgetStop, match="the folder has paid 4.2 USD"):
            run_label(capped, raw, tmp_path / "out", base_url=server.base_url, yes=True)
        assert sum(server.requests.values()) == 21

        again = run_label(load_recipe(RECIPE, None, prices), raw, tmp_path / "out", base_url=server.base_url, yes=True)
        assert (again["already_done"], again["accepted"], again["cost"], again["spent_by_folder"]) == (21, 9, 1.8, 6.0)
        server.settled()
        assert all(server.delivered[r["text"]] == 1 for r in rows)  # nothing paid twice
        # a re-run over the finished folder asks nothing, and its summary still reports every label the folder holds
        last = run_label(load_recipe(RECIPE, None, prices), raw, tmp_path / "out", base_url=server.base_url)
        assert (last["accepted"], last["journal"]) == (0, {"accepted": 30, "rejected": {}})


def test_the_report_reads_the_gap_closed_the_cost_and_the_gate(tmp_path):
    """Hand-worked: on 10 records the base is right on 2, the teacher on 10, the student on 8 (the base's two
    among them): (0.8 - 0.2) / (1.0 - 0.2) = 0.75, iterate. The teacher spent 2.0 on 100 answers: 20,000 a
    million; the student's 50 records/s at 1.8 an hour: 1e6 / 50 / 3600 * 1.8 = 10.00 a million."""
    from toolkit.evaluate.teacher import report_lines

    run = tmp_path / "run"
    right = {"base": range(2), "teacher": range(10), "student": range(8)}
    results = []
    for who, ok in right.items():
        write_jsonl(run / "eval" / f"{who}-test" / "predictions.jsonl",
                    [{"id": f"r{i}", "exact": i in ok} for i in range(10)])
        results.append((f"{who}-test", {"role": who, "test_file": "datasets/x/test.jsonl",
                                        "records_per_s": 50.0 if who == "student" else 3.0}))
    (run / "manifest.json").write_text(json.dumps({"stages": {
        "teacher_gate": {"verdict": "PROCEED", "forced": False, "n": 100, "test_file": "test.jsonl",
                         "exact_match": {"value": 0.93}, "reasons": []},
        "data": {"summary": {"accepted": 98, "rejected": {"schema": 2}, "cost": 2.0, "seconds": 120.0,
                             "records_per_s": 0.83}}}}))
    text = "\n".join(report_lines(load_recipe(RECIPE), run, results, hourly=1.8))
    assert "Gate: **PROCEED**: exact match 93.0% on the first 100 records of test.jsonl." in text
    assert ("- Teacher (labelling, at teacher.price_*): spent 2.00 in 2.0 min, 0.83 records/s; 1M records would "
            "cost 20,000.00.") in text
    assert "- Student (evaluation, at 1.8 an hour): 50.00 records/s; 1M records would cost 10.00." in text
    assert "Gap closed: **0.75** [" in text and "whole-record exact match (n=10" in text and "**iterate**" in text


def test_gap_closed_interval_is_paired_and_a_gapless_resample_is_left_out():
    from toolkit.task.scoring import EXACT_MATCH
    from toolkit.maths.ranking import Evaluation, gap_closed

    def e(ok):
        return Evaluation([i in ok for i in range(20)], EXACT_MATCH.statistic)

    g = gap_closed(e(range(12)), e(range(4)), e(range(20)))
    assert g["value"] == 0.5  # (0.6 - 0.2) / (1.0 - 0.2)
    lo, hi = g["ci95"]
    assert lo < 0.5 < hi and 0 <= lo and hi <= 1  # the student is right wherever the base is: never below 0
    assert gap_closed(e(range(5)), e(range(4)), e(range(4))) == {"value": None, "ci95": None}


# --- xtk synth ----------------------------------------------------------------------------------------------------

def synth_script(pool, tests_rows):
    """The test teacher's answers to synth requests, in the order they arrive (concurrency 1): request k writes
    8 pool texts 100 + 8k..., with, in request 0, a test input last; in request 1 a copy of request 0's first
    input and a near copy (one more character) of its second; in request 2 a copy of example 1. Pool texts are
    far apart (trigram Jaccard < 0.12, measured), so these 4 are the only removals."""
    asked = []

    def script(text):
        # the recipe's synth block steers each request
        assert ("Topic: 校园快递" if len(asked) % 2 == 0 else "Topic: 写字楼") in text
        k = len(asked)
        asked.append(text)
        batch = [r["text"] for r in pool[100 + 8 * k: 108 + 8 * k]]
        if k == 0:
            batch[7] = tests_rows[3]["text"]
        if k == 1:
            batch[7], batch[6] = pool[100]["text"], pool[101]["text"] + "。"
        if k == 2:
            batch[7] = pool[0]["text"]
        return "Here they are:\n```json\n" + json.dumps(batch, ensure_ascii=False) + "\n```"

    return script, asked


def test_synth_smoke_batch_then_the_rest_removing_duplicates_copies_and_test_inputs(tmp_path, key, pool,
                                                                                    tests_rows, capsys):
    examples = write_jsonl(tmp_path / "examples.jsonl", [{"id": r["id"], "text": r["text"]} for r in pool[:10]])
    script, asked = synth_script(pool, tests_rows)
    out = tmp_path / "synth"
    with TeacherServer({}, script=script) as server:
        argv = ["synth", str(RECIPE), "--examples", str(examples), "--n", "32", "--out", str(out),
                f"teacher.base_url={server.base_url}", "teacher.concurrency=1", "synth.smoke=16",
                "synth.topics=[校园快递, 写字楼]"]
        # smoke: 16 asked for in 2 requests; the test input and the two copies removed leave 13, so a third
        # request (where the copy of an example goes) tops it up to 16
        assert main(argv) == 0
        err = capsys.readouterr().err
        smoke = read_jsonl(out / "smoke.jsonl")
        assert [r["text"] for r in smoke] == [r["text"] for r in pool[100:107] + pool[108:114] + pool[116:119]]
        assert "synth-00016: " + pool[118]["text"] in err and "--yes" in err and not (out / "pool.jsonl").exists()
        assert len(asked) == 3

        # --yes: 4 requests planned for 32 (3 from the journal): 13 + 7 + 8 = 28 kept, so one more
        assert main(argv + ["--yes"]) == 0
        assert len(asked) == 5 and sum(server.requests.values()) == 5  # each request paid once
    kept = read_jsonl(out / "pool.jsonl")
    assert len(kept) == 32 and kept[:16] == smoke
    removed = {r["reason"]: r for r in read_jsonl(out / "removed.jsonl")}
    assert sorted(removed) == ["copies an example", "in a test file", "near-duplicate"]
    assert removed["in a test file"]["detail"].startswith(f"test.jsonl id {tests_rows[3]['id']}, similarity 1.00")
    assert removed["copies an example"]["detail"] == "example 1, similarity 1.00"
    summary = json.loads((out / "synth_summary.json").read_text())
    assert summary["removed"] == {"in a test file": 1, "near-duplicate": 2, "copies an example": 1}
    div = json.loads((out / "diversity.json").read_text())
    lengths = sorted(len(r["text"]) for r in kept)
    assert div["n"] == 32 and (div["length_chars"]["min"], div["length_chars"]["max"]) == (lengths[0], lengths[-1])
    assert div["nearest_example_similarity"]["max"] < 0.12 and 0 < div["distinct_2grams"] <= 1
    assert all(KEY not in f.read_text() for f in out.iterdir())
    # what synth wrote is a pool: labelled as any other
    from toolkit.data.label import read_inputs

    assert [r["id"] for r in read_inputs(out / "pool.jsonl", 4000)][:2] == ["synth-00001", "synth-00002"]


def test_synth_needs_ten_examples_and_a_balance_field_with_choices(tmp_path, key, pool, capsys):
    few = write_jsonl(tmp_path / "few.jsonl", [{"id": r["id"], "text": r["text"]} for r in pool[:9]])
    assert main(["synth", str(RECIPE), "--examples", str(few), "--n", "5", "--out", str(tmp_path / "s")]) == 2
    assert f"{few}: 9 examples: give at least 10" in " ".join(capsys.readouterr().err.split())
    assert main(["synth", str(RECIPE), "--examples", str(few), "--n", "5", "synth.balance=phone"]) == 2
    assert "synth.balance names 'phone': expected a field with choices" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "s").exists()


def test_synth_balance_spreads_the_requests_over_a_fields_choices():
    from toolkit.data.synth import parse_inputs, plan

    recipe = load_recipe(ROOT / "recipes" / "review_sentiment_zh.yaml", None,
                         ["synth.balance=sentiment", "synth.lengths=[short, long]", "synth.examples_shown=3"])
    choices = recipe.choices("sentiment")
    examples = [f"example {i}" for i in range(10)]
    asks = [plan(recipe, examples, i)[1]["content"] for i in range(4)]
    assert all(f"Each input's sentiment must be: {choices[i % 2]}" in a for i, a in enumerate(asks))
    assert ["Length: short" in a for a in asks] == [True, False, True, False]
    assert all(sum(e in a for e in examples) == 3 for a in asks)
    assert plan(recipe, examples, 2) == plan(recipe, examples, 2)  # the same request, the same journal key
    # an answer as a JSON array, or failing that as lines without list markers
    assert parse_inputs('Sure: ["a", " b "]') == ["a", "b"]
    assert parse_inputs("1. first\n- second\n\n3) third") == ["first", "second", "third"]
