"""The benchmark scripts' own arithmetic, on hand-worked inputs: recipe_cpu.py's paired verdict of the student
against the baseline (the prediction rows are real ones, scored by `xtk eval`'s own row builder on the recipes'
real fields), gpu_flow.py's on-paper estimate and its refusal of a machine without a GPU, and what
teacher_noise_cpu.py trains its students on."""

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import ROOT, RECIPE

from toolkit.evaluate.evaluation import prediction
from toolkit.io.jsonl import read_jsonl, write_jsonl
from toolkit.io.errors import DataError
from toolkit.task.recipe import load_recipe

sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import each other as scripts do


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe_cpu, gpu_flow, teacher_noise = script("recipe_cpu"), script("gpu_flow"), script("teacher_noise_cpu")


def write_eval(run_dir, name, recipe, records, answers):
    """eval/<name>-test/predictions.jsonl as `xtk eval` writes it, each record answered with `answers[i]`."""
    rows = [prediction(recipe, r["id"], r["text"], r["label"], json.dumps(a, ensure_ascii=False), a)
            for r, a in zip(records, answers)]
    write_jsonl(run_dir / "eval" / f"{name}-test" / "predictions.jsonl", rows)


def logistics(tmp_path, student_right: set[int], rules_right: set[int]):
    """Ten logistics_zh test records; a wrong answer has its phone number changed (the record is not exact)."""
    recipe = load_recipe(RECIPE)
    records = list(read_jsonl(recipe.path(recipe.data.test[0])))[:10]

    def answers(right):
        return [r["label"] if i in right else {**r["label"], "phone": "10000000000"} for i, r in enumerate(records)]

    write_eval(tmp_path, "student", recipe, records, answers(student_right))
    write_eval(tmp_path, "rules", recipe, records, answers(rules_right))
    return recipe_cpu.versus(recipe, tmp_path, "student", "rules", "test")


def test_exact_match_claim_is_mcnemars(tmp_path):
    """Student right on records 0-8, rules on record 0 only: 8 discordant records, all the student's, so
    p = 2 * C(8,0) / 2^8 = 0.0078 < 0.05: beats."""
    v = logistics(tmp_path, set(range(9)), {0})
    assert v["metric"] == "whole-record exact match" and v["records"] == 10
    assert v["student"] == 0.9 and v["rules"] == 0.1 and v["difference"]["value"] == 0.8
    assert v["exact_match"] == {"student_only_right": 8, "rules_only_right": 0, "p_mcnemar": 0.0078}
    assert v["decided_by"].startswith("McNemar") and v["verdict"] == "beats"


def test_a_large_gap_on_few_records_is_not_shown(tmp_path):
    """Student right on 0-6 (70%), rules on 0 and 7 (20%): b = 6, c = 1, p = 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125:
    50 points ahead, and still not shown at the 5% level."""
    v = logistics(tmp_path, set(range(7)), {0, 7})
    assert v["difference"]["value"] == 0.5
    assert v["exact_match"] == {"student_only_right": 6, "rules_only_right": 1, "p_mcnemar": 0.125}
    assert v["verdict"] == "not shown"


def test_a_student_shown_behind_is_below(tmp_path):
    """The mirror of the first: rules right on 0-8, the student on 0 only: p 0.0078, and the verdict says the
    student is below, not merely "not shown"."""
    v = logistics(tmp_path, {0}, set(range(9)))
    assert v["exact_match"] == {"student_only_right": 0, "rules_only_right": 8, "p_mcnemar": 0.0078}
    assert v["verdict"] == "below"


ENTITIES = [("张伟在北京工作", {"persons": ["张伟"], "locations": ["北京"], "organizations": []}),
            ("李娜去了上海", {"persons": ["李娜"], "locations": ["上海"], "organizations": []}),
            ("新华社报道", {"persons": [], "locations": [], "organizations": ["新华社"]}),
            ("王芳住在广州", {"persons": ["王芳"], "locations": ["广州"], "organizations": []}),
            ("刘洋加入清华大学", {"persons": ["刘洋"], "locations": [], "organizations": ["清华大学"]})]


NONE = {"persons": [], "locations": [], "organizations": []}


@pytest.mark.parametrize("student_answer, rules_answer, expected", [
    (lambda gold: gold, lambda gold: NONE, ("beats", 1.0, [1.0, 1.0])),
    (lambda gold: gold, lambda gold: gold, ("not shown", 0.0, [0.0, 0.0])),
    (lambda gold: NONE, lambda gold: gold, ("below", -1.0, [-1.0, -1.0])),
])
def test_entity_f1_claim_is_the_paired_bootstrap(tmp_path, student_answer, rules_answer, expected):
    """msra_ner's headline is entity F1. Five sentences that each have an entity: an answer with every entity
    scores F1 1.0 in every resample, one with none 0.0. A student finding all against rules finding none differs
    by 1 in every resample, interval [1, 1] (beats); the same answers differ by 0 (not shown); the student
    finding none against rules finding all, [-1, -1] (below)."""
    recipe = load_recipe(ROOT / "recipes" / "msra_ner.yaml")
    records = [{"id": f"r{i}", "text": t, "label": g} for i, (t, g) in enumerate(ENTITIES)]
    write_eval(tmp_path, "student", recipe, records, [student_answer(g) for _, g in ENTITIES])
    write_eval(tmp_path, "rules", recipe, records, [rules_answer(g) for _, g in ENTITIES])
    v = recipe_cpu.versus(recipe, tmp_path, "student", "rules", "test")
    assert v["decided_by"] == "paired bootstrap of the entity F1 (micro, every list field) difference"
    assert (v["verdict"], v["difference"]["value"], v["difference"]["ci95"]) == expected


# --- gpu_flow.py: the GPU flow on paper -----------------------------------------------------------------------

# By hand from gpu_flow.PAPER (docs/gpu.md's inputs), in seconds:
#   data          4,000 records x 3 s / 16 at a time                              = 750 s      = 12.5 min
#   eval_base     60 s start + 800 records x 256 tokens / 12,148 tokens/s         = 76.86 s    = 1.28 min
#   train         6 x 595,984,384 x 388,766 x 10 = 1.3902e16 FLOP
#                 / (989.4e12 x 0.35 = 3.4629e14 FLOP/s) = 40.15 s, + 60 s        = 100.15 s   = 1.67 min
#   merge         30 s                                                             = 0.5 min
#   eval_student  60 s + 800 x 64 / 12,148                                         = 64.21 s    = 1.07 min
#   eval_teacher  800 x 3 s / 16                                                   = 150 s      = 2.5 min
#   without the teacher's stages 271.2 s = 4.5 min; with them 1,171.2 s = 19.5 min
BY_HAND = {"stages": {"data": 12.5, "eval_base": 1.28, "train": 1.67, "merge": 0.5, "eval_student": 1.07,
                      "eval_teacher": 2.5}, "with_teacher": 19.5, "without_teacher": 4.5}


def test_the_estimate_is_the_hand_computation():
    assert gpu_flow.expected_minutes() == BY_HAND
    # twice the utilisation halves the training compute (40.15 s -> 20.07 s), not its fixed 60 s: 80.07 s
    assert gpu_flow.expected_minutes({**gpu_flow.PAPER, "utilisation": 0.7})["stages"]["train"] == 1.33


def test_docs_state_the_scripts_estimate():
    """docs/gpu.md's table of expected minutes is the function's, for the H100 and the H200 alike."""
    doc = (ROOT / "docs" / "gpu.md").read_text(encoding="utf-8")
    for stage, minutes in BY_HAND["stages"].items():
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{stage}` |"))
        assert row.endswith(f"| {minutes:.2f} | {minutes:.2f} |"), row
    for total in ("with_teacher", "without_teacher"):
        assert f"**{BY_HAND[total]:.1f} min**" in doc


# The range, each input at the end of its range that makes the stage shortest, then longest (gpu_flow.INPUTS):
#   data          4,000 x 1 s / 16 = 250 s = 4.17 min;  4,000 x 6 s / 16 = 1,500 s = 25.0 min
#   eval_base     34 s + 800 x 64 / 12,148 = 38.21 s = 0.64 min;  90 s + 800 x 256 / 8,588 = 113.85 s = 1.90 min
#   train         1.3902e16 FLOP / (989.4e12 x 0.40) = 35.13 s, + 30 s = 65.13 s = 1.09 min;
#                 / (989.4e12 x 0.10) = 140.51 s, + 180 s = 320.51 s = 5.34 min
#   merge         15 s = 0.25 min;  90 s = 1.5 min
#   eval_student  38.21 s = 0.64 min;  90 s + 800 x 64 / 8,588 = 95.96 s = 1.60 min
#   eval_teacher  800 x 1 s / 16 = 50 s = 0.83 min;  800 x 6 s / 16 = 300 s = 5.0 min
#   without the teacher 156.56 s = 2.6 min, 620.32 s = 10.3 min; with it 456.56 s = 7.6 min, 2,420.32 s = 40.3 min
BY_HAND_RANGE = {"stages": {"data": [4.17, 25.0], "eval_base": [0.64, 1.9], "train": [1.09, 5.34],
                            "merge": [0.25, 1.5], "eval_student": [0.64, 1.6], "eval_teacher": [0.83, 5.0]},
                 "with_teacher": [7.6, 40.3], "without_teacher": [2.6, 10.3]}


def test_the_range_is_the_hand_computation_and_every_input_is_sourced():
    """Every input says where it comes from; an assumption always has a range around its value, a figure read
    from this repository never has one; the estimate's range is the hand-worked one above."""
    for name, i in gpu_flow.INPUTS.items():
        low, high = i.range
        assert i.source in gpu_flow.SOURCES and i.where, name
        assert low <= i.value <= high, name
        assert (low < high) if i.source == "assumption" else True, f"{name}: an assumption needs a range"
        assert (low == high) if i.source == "repository" else True, f"{name}: read from a file, it has no range"
    assert gpu_flow.expected_range() == BY_HAND_RANGE
    assert gpu_flow.expected_minutes() == gpu_flow.expected_minutes(gpu_flow.PAPER)  # the ranges leave the centre


def number(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def test_docs_state_every_input_its_range_and_the_estimates_range():
    """docs/gpu.md's inputs table has a row per input, with its value, range and kind, and its table of expected
    minutes shows each stage's range and the totals' ranges."""
    doc = (ROOT / "docs" / "gpu.md").read_text(encoding="utf-8")
    for name, i in gpu_flow.INPUTS.items():
        low, high = i.range
        span = "—" if low == high else f"{number(low)}–{number(high)}"
        assert f"| `{name}` | {number(i.value)} | {span} | {i.source} |" in doc, name
    for stage, (low, high) in BY_HAND_RANGE["stages"].items():
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{stage}` |"))
        assert f"| {low:.2f}–{high:.2f} |" in row, row
    for total in ("with_teacher", "without_teacher"):
        assert "range **{:.1f}–{:.1f} min**".format(*BY_HAND_RANGE[total]) in doc


def test_the_gpu_install_path_is_marked_not_run_until_a_gpu_run_is_recorded():
    """Until benchmarks/results/gpu_flow.json exists, nothing has run setup.sh's GPU branch or the gpu profile on a
    GPU: the README, the set-up section and docs/gpu.md say so."""
    if (ROOT / "benchmarks" / "results" / "gpu_flow.json").exists():
        pytest.skip("measured on a GPU: the marks may go")
    for doc in ("README.md", "docs/flow.md", "docs/gpu.md"):
        text = " ".join((ROOT / doc).read_text(encoding="utf-8").split()).lower()
        assert "not yet run on a gpu" in text, doc


def test_gpu_flow_refuses_a_machine_without_a_gpu(tmp_path):
    """An empty PATH stands for a machine without nvidia-smi (so that the test says the same on a GPU runner): exit
    2, a message saying why, and the results file as it was (absent, or unchanged)."""
    results = ROOT / "benchmarks" / "results" / "gpu_flow.json"
    before = results.read_bytes() if results.exists() else None
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_flow.py")], cwd=ROOT, capture_output=True,
                         text=True, env={"PATH": str(tmp_path)})
    assert out.returncode == 2 and "no GPU here" in out.stderr
    assert (results.read_bytes() if results.exists() else None) == before


def test_every_teacher_answer_is_the_accepted_labels_and_the_rejects_that_parse(tmp_path):
    """Set (b): an accepted label, a rejected answer whose fields all parse with their types (ungrounded: kept,
    the gate's verdict is what (b) ignores), and three that cannot train anything (no JSON, a field missing, a
    phone that is a list): (b) holds the first two, in id order."""
    recipe = load_recipe(RECIPE, "cpu")
    r1, r2, r3, r4, r5 = list(read_jsonl(recipe.path(recipe.data.test[0])))[:5]
    wrong = {**r1["label"], "name": "不在文中"}
    write_jsonl(tmp_path / "labelled.jsonl", [{"id": r2["id"], "text": r2["text"], "label": r2["label"], "key": "k"}])
    write_jsonl(tmp_path / "rejects.jsonl", [
        {"id": r1["id"], "text": r1["text"], "reason": "ungrounded", "raw": json.dumps(wrong, ensure_ascii=False)},
        {"id": r3["id"], "text": r3["text"], "reason": "unparseable", "raw": "province: 广东省"},
        {"id": r4["id"], "text": r4["text"], "reason": "schema",
         "raw": json.dumps({k: v for k, v in r4["label"].items() if k != "phone"}, ensure_ascii=False)},
        {"id": r5["id"], "text": r5["text"], "reason": "schema",
         "raw": json.dumps({**r5["label"], "phone": ["1"]}, ensure_ascii=False)}])
    rows = teacher_noise.every_answer(recipe, tmp_path)
    assert rows == sorted([{"id": r1["id"], "text": r1["text"], "label": wrong},
                           {"id": r2["id"], "text": r2["text"], "label": r2["label"]}], key=lambda r: r["id"])


def test_the_arms_are_built_from_the_label_folders(tmp_path, monkeypatch):
    """Six test records as a label folder holds them: r1, r2 accepted as answered; r3 accepted after the table
    repaired its province; r4 rejected (before labels were repaired) for a province that 阳泉市's 城区 does not lie
    in; r5 for a district that does not exist; r6 ungrounded. (b) holds all six as answered; (c) the two accepted
    as answered; (d) the one --votes 3 accepted as answered; (e) two of (b) (as many as (c)); (f) (b) repaired:
    r3 and r4 take the province their county lies in, r5 is dropped, r6 stays (the table has nothing against it)."""
    monkeypatch.setattr(teacher_noise, "WORK", tmp_path)
    recipe = load_recipe(RECIPE, "cpu")
    r1, r2, r3, r4, r5, r6 = list(read_jsonl(recipe.path(recipe.data.test[0])))[:6]
    assert (r3["label"]["province"], r4["label"]["city"], r4["label"]["district"]) == ("陕西省", "阳泉市", "城区")

    def row(r, **extra):
        return {"id": r["id"], "text": r["text"], "label": r["label"], "key": "k", **extra}

    def reject(r, reason, **label):
        return {"id": r["id"], "text": r["text"], "reason": reason,
                "raw": json.dumps({**r["label"], **label}, ensure_ascii=False)}

    write_jsonl(tmp_path / "label-1" / "labelled.jsonl",
                [row(r1), row(r2), row(r3, repaired={"province": ["湖北省", "陕西省"]})])
    write_jsonl(tmp_path / "label-1" / "rejects.jsonl", [
        reject(r4, "not allowed", province="河北省"), reject(r5, "not in the table", district="滨江西路区"),
        reject(r6, "ungrounded", name="不在文中")])
    write_jsonl(tmp_path / "label-3" / "labelled.jsonl", [row(r1), row(r2, repaired={"city": ["益阳", "益阳市"]})])
    write_jsonl(tmp_path / "label-3" / "rejects.jsonl", [])
    sets = teacher_noise.label_sets(recipe, [r1])

    def ids(name):
        return [r["id"] for r in sets[name]]

    assert set(sets) == set(teacher_noise.SETS) and sets["a"] == [r1]
    assert ids("b") == [r["id"] for r in (r1, r2, r3, r4, r5, r6)]
    assert {r["id"]: r["label"] for r in sets["b"]}[r3["id"]] == {**r3["label"], "province": "湖北省"}
    assert ids("c") == [r1["id"], r2["id"]] and ids("d") == [r1["id"]]
    assert len(sets["e"]) == len(sets["c"]) and all(r in sets["b"] for r in sets["e"])
    assert ids("f") == [r["id"] for r in (r1, r2, r3, r4, r6)]
    fixed = {r["id"]: r["label"] for r in sets["f"]}
    assert fixed[r3["id"]] == r3["label"] and fixed[r4["id"]] == r4["label"]
    assert fixed[r6["id"]]["name"] == "不在文中"
    assert teacher_noise.label_sets(recipe, [r1])["e"] == sets["e"]  # the same seed draws the same rows


def test_the_size_matched_draw_is_seeded_exact_and_from_every_row():
    """Ten rows drawn down to four: exactly four, in id order, the same for a seed; over 40 seeds every row is
    drawn at least once (none is favoured by where it came from); more rows than there are is an error."""
    rows = [{"id": f"r{i}", "text": str(i), "label": {}} for i in range(10)]
    draws = [teacher_noise.size_matched(rows, 4, seed) for seed in range(40)]
    assert all(len(d) == 4 and d == sorted(d, key=lambda r: r["id"]) for d in draws)
    assert teacher_noise.size_matched(rows, 4, 7) == draws[7] and draws[7] != draws[8]
    assert {r["id"] for d in draws for r in d} == {r["id"] for r in rows}
    with pytest.raises(ValueError, match="cannot draw 11 rows from 10"):
        teacher_noise.size_matched(rows, 11)


def test_set_b_trains_under_a_recipe_with_no_closed_sets_and_only_that_differs(tmp_path, monkeypatch):
    """Most of a real teacher's rejected answers name a place outside a closed set (92 of 94 in the first run),
    and prepare refuses those under the shipped recipe: set (b) trains under a copy without the closed sets, which
    takes such a label and is the shipped recipe in every other field and path."""
    from toolkit.data.prepare import read_records

    monkeypatch.setattr(teacher_noise, "WORK", tmp_path)
    shipped, opened = load_recipe(RECIPE, "cpu"), load_recipe(teacher_noise.open_recipe(), "cpu")
    row = {**read_jsonl(shipped.path(shipped.data.test[0]))[0]}
    row["label"] = {**row["label"], "city": "宁夏回族自治区"}  # a province where a city belongs (seen in that run)
    write_jsonl(tmp_path / "b.jsonl", [row])
    with pytest.raises(DataError, match="city '宁夏回族自治区' is not one of the allowed values"):
        read_records(shipped, tmp_path / "b.jsonl")
    assert read_records(opened, tmp_path / "b.jsonl")[0]["label"]["city"] == "宁夏回族自治区"
    assert [opened.allowed_values(f) for f in ("district", "city", "province")] == [None, None, None]
    assert [f.model_dump(exclude={"choices_file"}) for f in opened.fields] == \
        [f.model_dump(exclude={"choices_file"}) for f in shipped.fields]
    assert opened.prompt("student") == shipped.prompt("student") and opened.data == shipped.data
    assert opened.path(opened.data.pool).read_bytes() == shipped.path(shipped.data.pool).read_bytes()


def test_the_teachers_pool_shares_no_text_with_the_shipped_files():
    """The teacher was trained on the shipped pool and the students are scored on the test files: its pool is
    new strings, none equal to a shipped one once whitespace is removed, none twice."""
    recipe = load_recipe(RECIPE, "cpu")
    shipped = {"".join(r["text"].split()) for f in ("pool.jsonl", "test.jsonl", "test_unseen.jsonl")
               for r in read_jsonl(ROOT / "datasets" / "logistics_zh" / f)}
    rows = teacher_noise.fresh_pool(30)
    texts = ["".join(r["text"].split()) for r in rows]
    assert len(rows) == 30 and len(set(texts)) == 30 and not set(texts) & shipped
    assert all(set(r["label"]) == set(recipe.field_names) for r in rows)


def test_one_run_only_when_every_stage_ran_in_this_invocation_at_this_commit():
    """A results file says "one run" only of stages this invocation made at its commit: a stage finished before
    it began, or made by a tree with changes, makes it not one run; a skipped stage made nothing and counts not."""
    from provenance import git_state

    short = git_state()["commit"][:12]
    began = "2026-12-04T10:00:00"
    ran = {"status": "done", "commit": short, "finished": "2026-12-04T10:30:00"}
    skipped = {"status": "done", "commit": "0" * 12, "finished": "2026-01-01T00:00:00", "skipped": "no teacher"}
    made = recipe_cpu.made_by({"train": ran, "eval_teacher": skipped}, began)
    assert made["one_run"] is True and set(made["made_by"]) == {"train"}
    assert made["made_by"]["train"] == {"commit": short, "finished": "2026-12-04T10:30:00", "this_invocation": True}
    earlier = {**ran, "finished": "2026-12-03T23:00:00"}
    assert recipe_cpu.made_by({"train": ran, "prepare": earlier}, began)["one_run"] is False
    assert recipe_cpu.made_by({"train": {**ran, "commit": short + "-dirty"}}, began)["one_run"] is False
    assert recipe_cpu.made_by({"train": {**ran, "commit": None}}, began)["one_run"] is False


@pytest.mark.parametrize("first_right, second_right, verdict", [
    (range(9), [0], "beats"), ([0], range(9), "below"), (range(7), [0, 7], "not shown")])
def test_teacher_noise_reads_each_pair_with_mcnemar(first_right, second_right, verdict):
    """(c) against (b) on ten records: 8 discordant records all one side's give p 0.0078, so (c) beats (b) or is
    below it; 6 against 1 (p 0.125) is not shown either way."""
    first = {f"r{i}": i in first_right for i in range(10)}
    second = {f"r{i}": i in second_right for i in range(10)}
    assert teacher_noise.paired(first, second)["verdict"] == verdict
