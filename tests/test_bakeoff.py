"""xtk bakeoff: rank and interval arithmetic against hand-worked figures, McNemar against a known table, the task
metric of each field type, spec errors, and (slow) a real one-pair bake-off that resumes without re-training."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from toolkit.choose.bakeoff_scores import base, fine_tuned, task_metric, tunability
from toolkit.choose.bakeoff_spec import load_spec
from toolkit.cli import main
from toolkit.maths.ranking import Evaluation, mcnemar, mean_rank, paired_difference, ranks
from toolkit.task.recipe import load_recipe


def mean(xs):
    return sum(xs) / len(xs)


def exact(*units, draw="tested"):
    """An evaluation scored by exact match: one 0/1 per record."""
    return Evaluation(list(units), mean, draw)


# --- ranks -------------------------------------------------------------------------------------------------------

def test_ranks_put_the_highest_first_and_share_ties():
    assert ranks({"a": 0.9, "b": 0.5, "c": 0.9, "d": 0.1}) == {"a": 1.5, "c": 1.5, "b": 3.0, "d": 4.0}
    assert ranks({"a": 0.2, "b": 0.2, "c": 0.2}) == {"a": 2.0, "b": 2.0, "c": 2.0}
    assert ranks({"a": 0.1, "b": 0.3, "c": 0.3, "d": 0.3, "e": 0.0}) == {"b": 2.0, "c": 2.0, "d": 2.0, "a": 4.0,
                                                                         "e": 5.0}
    assert ranks({}) == {}


def test_rankings_read_fine_tuned_base_as_the_better_of_free_and_guided_and_tunability():
    e = {"student": exact(1, 1, 1, 0), "base": exact(0, 0, draw="base"), "base-guided": exact(1, 0, draw="base")}
    assert fine_tuned(e, {}) == 0.75 and base(e, {}) == 0.5 and tunability(e, {}) == 0.25
    # the draw of each evaluation's own records: record 3 four times, record 0 twice
    draws = {"tested": [3, 3, 3, 3], "base": [0, 0]}
    assert fine_tuned(e, draws) == 0.0 and base(e, draws) == 1.0 and tunability(e, draws) == -1.0
    assert base({"student": exact(1)}, {}) is None and tunability({"student": exact(1)}, {}) is None


# --- mean rank and its interval ------------------------------------------------------------------------------------

def test_mean_rank_interval_collapses_when_no_resample_can_change_the_order():
    """A is right on every record of both tasks, B on none: every resample of tasks and records ranks them the
    same, so each interval is its point."""
    tasks = [{"A": {"student": exact(1, 1, 1)}, "B": {"student": exact(0, 0, 0)}},
             {"A": {"student": exact(1, 1)}, "B": {"student": exact(0, 0)}}]
    got = mean_rank(tasks, fine_tuned, bootstrap=200)
    assert got == {"A": {"value": 1.0, "ci95": [1.0, 1.0]}, "B": {"value": 2.0, "ci95": [2.0, 2.0]}}


def test_mean_rank_interval_over_tasks_has_the_hand_worked_bounds():
    """A wins task 1, B wins task 2, every record alike: the mean rank is 1.5; a resample of the two tasks holds
    task 1 twice (A's mean 1) with probability 1/4, task 2 twice (A's mean 2) with 1/4, one of each (1.5) with 1/2.
    So ~250 of 1000 samples sit at each end, beyond the 2.5% tails: the interval is [1, 2]."""
    tasks = [{"A": {"student": exact(1, 1)}, "B": {"student": exact(0, 0)}},
             {"A": {"student": exact(0, 0)}, "B": {"student": exact(1, 1)}}]
    got = mean_rank(tasks, fine_tuned, bootstrap=1000)
    assert got == {"A": {"value": 1.5, "ci95": [1.0, 2.0]}, "B": {"value": 1.5, "ci95": [1.0, 2.0]}}


def test_records_are_resampled_paired_across_students():
    """One task, two records. A and B answered alike (right, wrong): drawn together, every resample ties them, so
    both stay at 1.5 exactly. A (right, wrong) against C (wrong, right): record 0 twice ranks A 1 (p 1/4), record
    1 twice ranks A 2 (p 1/4), one of each ties them (1/2): [1, 2]. Drawn apart, the first pair would not always tie."""
    same = mean_rank([{"A": {"student": exact(1, 0)}, "B": {"student": exact(1, 0)}}], fine_tuned, bootstrap=500)
    assert same == {"A": {"value": 1.5, "ci95": [1.5, 1.5]}, "B": {"value": 1.5, "ci95": [1.5, 1.5]}}
    crossed = mean_rank([{"A": {"student": exact(1, 0)}, "C": {"student": exact(0, 1)}}], fine_tuned, bootstrap=1000)
    assert crossed["A"] == {"value": 1.5, "ci95": [1.0, 2.0]}


def test_a_student_missing_a_task_is_ranked_on_the_tasks_it_has():
    tasks = [{"A": {"student": exact(1)}, "B": {"student": exact(0)}}, {"B": {"student": exact(0)}}]
    got = mean_rank(tasks, fine_tuned, bootstrap=100)
    assert got["A"]["value"] == 1.0 and got["B"]["value"] == 1.5  # B: rank 2 on task 1, alone (1) on task 2


# --- student against teacher -------------------------------------------------------------------------------------

def test_mcnemar_exact_against_known_tables():
    # b = 10, c = 2: two-sided exact p = 2 * (C(12,0) + C(12,1) + C(12,2)) / 2^12 = 2 * 79 / 4096 = 0.03857
    assert mcnemar(10, 2) == pytest.approx(0.038574, abs=1e-6) and mcnemar(2, 10) == mcnemar(10, 2)
    assert mcnemar(6, 0) == pytest.approx(2 / 64)  # 0.03125: six discordant records, all one way
    assert mcnemar(5, 5) == 1.0 and mcnemar(0, 0) == 1.0
    # b = 1, c = 4: 2 * (1 + 5) / 32 = 0.375
    assert mcnemar(1, 4) == pytest.approx(0.375)


def test_paired_difference_of_identical_answers_is_exactly_zero():
    a = exact(1, 0, 1, 1, 0)
    assert paired_difference(a, exact(1, 0, 1, 1, 0), bootstrap=300) == {"value": 0.0, "ci95": [0.0, 0.0]}
    d = paired_difference(exact(1, 1, 1, 1), exact(0, 0, 0, 0), bootstrap=300)
    assert d == {"value": 1.0, "ci95": [1.0, 1.0]}
    with pytest.raises(ValueError):
        paired_difference(exact(1), exact(1, 0))


# --- the task metric of each recipe ------------------------------------------------------------------------------

def row(parsed, gold, exact_=False):
    return {"parsed": parsed, "gold": gold, "exact": exact_}


def test_task_metric_by_field_type_against_hand_worked_figures():
    ner = task_metric(load_recipe(ROOT / "recipes" / "msra_ner.yaml"))
    gold = {"persons": ["张三"], "locations": ["北京"], "organizations": []}
    # persons right (tp 1), 北京 missed (fn 1), an organisation made up (fp 1): F1 = 2 / (2 + 1 + 1) = 0.5
    units = [ner.unit(row({"persons": ["张三"], "locations": [], "organizations": ["上海"]}, gold))]
    assert ner.name.startswith("entity F1") and ner.statistic(units) == 0.5

    sentiment = task_metric(load_recipe(ROOT / "recipes" / "review_sentiment_zh.yaml"))
    rows = [row({"sentiment": "positive"}, {"sentiment": "positive"}),
            row({"sentiment": "positive"}, {"sentiment": "negative"}),
            row(None, {"sentiment": "negative"})]
    # positive: tp 1, fp 1, fn 0 -> F1 2/3; negative: tp 0, fn 2 -> 0; macro-F1 = 1/3
    assert sentiment.name == "macro-F1 of sentiment"
    assert sentiment.statistic([sentiment.unit(r) for r in rows]) == pytest.approx(1 / 3)

    logistics = task_metric(load_recipe(ROOT / "recipes" / "logistics_zh.yaml"))
    assert logistics.name == "whole-record exact match"
    assert logistics.statistic([logistics.unit(row({}, {}, e)) for e in (True, False, False, True)]) == 0.5


# --- the spec ------------------------------------------------------------------------------------------------------

def write_spec(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


RECIPE = ROOT / "recipes" / "msra_ner.yaml"


def test_the_shipped_spec_loads_every_pair_with_the_students_own_type_and_template():
    b = load_spec(ROOT / "bakeoffs" / "cpu.yaml")
    assert b.out.as_posix() == "runs/bakeoff/cpu" and len(b.pairs) == 6
    assert b.tasks == ["logistics_zh", "msra_ner", "review_sentiment_zh"]
    # the cpu profiles name Gemma (gemma3_text): a pair of another student must not inherit the profile's type
    # and template
    gemma = b.pair("review_sentiment_zh", "gemma3-270m").recipe.student
    smollm2 = b.pair("logistics_zh", "smollm2-135m-instruct").recipe.student
    assert (gemma.model, gemma.model_type, gemma.template) == ("gemma3-270m", "gemma3_text", "gemma3_text")
    assert (smollm2.model, smollm2.model_type, smollm2.template) == ("smollm2-135m-instruct", "llama", "chatml")
    assert b.pair("msra_ner", "gemma3-270m").run_dir.as_posix() == "runs/bakeoff/cpu/runs/msra_ner/gemma3-270m"
    assert b.pair("review_sentiment_zh", "smollm2-135m-instruct").recipe.classification_head is False
    # logistics_zh's cpu profile decodes guided; in a bake-off `base` is the free answer beside `base-guided`
    assert not any(p.recipe.eval.guided_json for p in b.pairs)


def test_a_hub_student_keeps_the_recipes_own_template_only_when_it_is_the_recipes_student(tmp_path):
    spec = write_spec(tmp_path, f"students: [Qwen/Qwen3-0.6B, {{model: org/other, template: chatml}}]\n"
                                f"recipes: [{{recipe: {RECIPE}, profile: gpu}}]\n")
    b = load_spec(spec)
    own, other = (b.pair("msra_ner", s).recipe.student for s in ("Qwen/Qwen3-0.6B", "org/other"))
    assert (own.model_type, own.template) == ("qwen3", "qwen3")
    assert (other.model_type, other.template) == (None, "chatml")
    assert b.pair("msra_ner", "Qwen/Qwen3-0.6B").run_dir.name == "Qwen--Qwen3-0.6B"


@pytest.mark.parametrize("text, expected", [
    ("students: [smollm2-135m-instruct]\n", r"spec\.yaml: key 'recipes': required key is missing"),
    ("students: [smollm2-135m-instruct]\nrecipes:\n  - {recipe: recipes/nope.yaml}\n",
     r"spec\.yaml:3: key 'recipes\.0\.recipe': .*nope\.yaml: no such recipe file"),
    ("students: [smollm2-135m-instruct]\nrecipes:\n  - {recipe: RECIPE, profil: cpu}\n",
     r"spec\.yaml:3: key 'recipes\.0\.profil': unknown key"),
    ("students: [smollm2-135m-instruct]\nrecipes:\n  - {recipe: RECIPE, profile: tpu}\n",
     r"spec\.yaml:3: key 'recipes\.0'.*no profile 'tpu'"),
    ("students: [smollm2-135m-instruct]\nrecipes:\n  - {recipe: RECIPE, overrides: [train.lora_rank=eight]}\n",
     r"spec\.yaml:3: key 'recipes\.0'.*train\.lora_rank"),
    ("students:\n  - smollm2-135m-instruct\n  - nosuchmodel\nrecipes: [{recipe: RECIPE}]\n",
     r"spec\.yaml:3: key 'students\.1\.model': 'nosuchmodel' is neither an embedded model"),
    ("students: [smollm2-135m-instruct, smollm2-135m-instruct]\nrecipes: [{recipe: RECIPE}]\n",
     r"spec\.yaml:1: key 'students\.1': students 0 and 1 are both 'smollm2-135m-instruct'"),
    ("students: [smollm2-135m-instruct]\nrecipes: [{recipe: RECIPE}]\nbootstrap: 0\n",
     r"spec\.yaml:3: key 'bootstrap': expected greater than 0"),
])
def test_spec_errors_name_the_file_the_key_and_its_line_and_exit_2(tmp_path, capsys, text, expected):
    spec = write_spec(tmp_path, text.replace("RECIPE", str(RECIPE)))
    assert main(["bakeoff", str(spec), "--out", str(tmp_path / "out")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert re.search(expected, err), err
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


# --- from run folders to the tables ------------------------------------------------------------------------------

def write_evaluation(pair, name, predicted, gold):
    """eval/<name>-test/ as `xtk eval` leaves it, written by hand: a teacher and students whose answers give
    hand-worked tables (the real parts cannot be made to answer these exact records)."""
    from toolkit.io.jsonl import write_json, write_jsonl
    from toolkit.run.manifest import Manifest
    from toolkit.flow.pipeline import Context, identity, role

    ctx = Context(pair.recipe, pair.run_dir, Manifest(pair.run_dir))
    rows = [{"id": f"r{i}", "parsed": None if p is None else {"sentiment": p}, "gold": {"sentiment": g},
             "exact": p == g} for i, (p, g) in enumerate(zip(predicted, gold))]
    folder = pair.run_dir / "eval" / f"{name}-test"
    write_jsonl(folder / "predictions.jsonl", rows)
    write_json(folder / "metrics.json", {"identity": identity(ctx, role(ctx, name))})


def test_tables_from_run_folders_against_hand_worked_ranks_and_mcnemar(tmp_path):
    from toolkit.choose.bakeoff_report import write_outputs
    from toolkit.choose.bakeoff_scores import collect

    sentiment = ROOT / "recipes" / "review_sentiment_zh.yaml"
    spec = write_spec(tmp_path, "students: [smollm2-135m-instruct, gemma3-270m]\n"
                                f"recipes: [{{recipe: {sentiment}, profile: cpu}}]\nbootstrap: 200\n")
    b = load_spec(spec, tmp_path / "out")
    gold = ["positive", "positive", "negative", "negative"]
    a, g = b.pair("review_sentiment_zh", "smollm2-135m-instruct"), b.pair("review_sentiment_zh", "gemma3-270m")
    # A: right on 3 of 4; macro-F1: positive 2*2/(4+1) = 0.8, negative 2*1/(2+1) = 2/3 -> 0.7333
    write_evaluation(a, "student", ["positive", "positive", "negative", "positive"], gold)
    write_evaluation(a, "base", [None] * 4, gold)  # no JSON at all: 0
    # G: every answer wrong: 0; its guided base says positive four times: positive 2/3, negative 0 -> 1/3
    write_evaluation(g, "student", ["negative", "negative", "positive", "positive"], gold)
    write_evaluation(g, "base", [None] * 4, gold)
    write_evaluation(g, "base-guided", ["positive"] * 4, gold)
    for pair in (a, g):  # the teacher: right on records 0, 2 and 3
        write_evaluation(pair, "teacher", ["positive", "negative", "negative", "negative"], gold)

    md, js, png = write_outputs(b, collect(b))
    r = json.loads(js.read_text())
    s = r["scores"]["review_sentiment_zh"]
    assert s["smollm2-135m-instruct"] == {"fine_tuned": 0.7333, "base_plain": 0.0, "base_guided": None, "base": 0.0,
                                          "tunability": 0.7333, "teacher": 0.7333}
    assert s["gemma3-270m"] == {"fine_tuned": 0.0, "base_plain": 0.0, "base_guided": 0.3333, "base": 0.3333,
                                "tunability": -0.3333, "teacher": 0.7333}
    assert r["ranks"]["fine-tuned"]["review_sentiment_zh"] == {"smollm2-135m-instruct": 1.0, "gemma3-270m": 2.0}
    assert r["ranks"]["base"]["review_sentiment_zh"] == {"gemma3-270m": 1.0, "smollm2-135m-instruct": 2.0}
    assert r["ranks"]["tunability"]["review_sentiment_zh"] == {"smollm2-135m-instruct": 1.0, "gemma3-270m": 2.0}
    # A against the teacher: only A right on record 1 (b = 1), only the teacher on record 3 (c = 1): p = 1.
    # G: never right where the teacher was wrong (b = 0), wrong on the teacher's 3 (c = 3): p = 2 / 2^3 = 0.25.
    versus = {v["student"]: v for v in r["student_vs_teacher"]}
    assert [versus["smollm2-135m-instruct"][k] for k in ("n", "b_student_only", "c_teacher_only", "p_mcnemar")] == \
        [4, 1, 1, 1.0]
    assert [versus["gemma3-270m"][k] for k in ("b_student_only", "c_teacher_only", "p_mcnemar")] == [0, 3, 0.25]
    assert versus["smollm2-135m-instruct"]["metric_difference"]["value"] == 0.0
    assert versus["gemma3-270m"]["metric_difference"]["value"] == -0.7333
    # gap closed, (fine-tuned - base) / (teacher - base): A (0.7333 - 0) / (0.7333 - 0) = 1; G's better base is the
    # guided one: (0 - 1/3) / (0.7333 - 1/3) = -0.8333
    gaps = {s: (versus[s]["gap_closed"]["value"], versus[s]["gap_closed"]["base"]) for s in versus}
    assert gaps == {"smollm2-135m-instruct": (1.0, "base"), "gemma3-270m": (-0.8333, "base-guided")}
    assert r["missing"] == ["review_sentiment_zh x smollm2-135m-instruct: no base-guided-test"]
    # where each pair's run is, from the folder the results are in: it holds wherever that folder goes
    assert r["runs"]["review_sentiment_zh"] == {
        "smollm2-135m-instruct": "runs/review_sentiment_zh/smollm2-135m-instruct",
        "gemma3-270m": "runs/review_sentiment_zh/gemma3-270m"}
    text = md.read_text()
    assert "| 1.00 [" in text and "] deploy |" in text and "| -0.83 [" in text and "] rethink |" in text
    assert "macro-F1 of sentiment" in text and "| review_sentiment_zh | gemma3-270m | 0.0 (2) | 0.0 | 33.3 |" in text
    assert png.stat().st_size > 0


# --- interrupting -------------------------------------------------------------------------------------------------

def alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting for its parent to reap it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except FileNotFoundError:
        return False


def test_an_interrupted_pair_leaves_no_process_behind(tmp_path):
    """A pair's child whose own child ignores SIGINT and SIGTERM, as a vLLM engine still starting up did here (a
    stand-in: a real engine takes minutes to reach that state): stopping the pair ends both."""
    from toolkit.choose.bakeoff_pairs import _stop

    pid_file = tmp_path / "engine.pid"
    engine = ("import os, signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
              f"signal.signal(signal.SIGTERM, signal.SIG_IGN); open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
              "time.sleep(600)")
    pair = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {engine!r}]); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", pair], start_new_session=True)
    deadline = time.monotonic() + 600  # two Python start-ups: seconds on a loaded box; a bound for a stuck test only
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    engine_pid = int(pid_file.read_text())
    _stop(proc, grace=(1, 1, 1))
    assert proc.returncode is not None
    deadline = time.monotonic() + 60  # SIGKILL is delivered at once, but the process table may lag
    while alive(engine_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(engine_pid)


# --- a real bake-off ---------------------------------------------------------------------------------------------

TINY = ["data.train_records=16", "data.val_fraction=0.25", "train.max_steps=2", "train.save_steps=2",
        "train.eval_steps=2", "eval.backend=transformers", "eval.limit=8", "eval.base_limit=4",
        "eval.max_new_tokens=32", "eval.vllm.enforce_eager=true"]  # eager: the guided base evaluation's vLLM


def stages_ran(log_section: str) -> list[str]:
    return re.findall(r"^stage (\w+)$", log_section, re.M)


@pytest.mark.slow
def test_a_real_bakeoff_ranks_resumes_and_never_trains_a_finished_pair_again(tmp_path, smollm2):
    """One student x msra_ner, tiny: every artifact, the guided base evaluation, the only student ranked 1; then,
    with the pair half-finished (its merged model gone), a re-run merges and scores again but neither trains nor
    repeats the base evaluations."""
    spec = write_spec(tmp_path, f"students: [smollm2-135m-instruct]\n"
                                f"recipes:\n  - {{recipe: {RECIPE}, profile: cpu, overrides: {json.dumps(TINY)}}}\n"
                                "bootstrap: 200\n")
    out = tmp_path / "out"
    env = {**os.environ, "DASHSCOPE_API_KEY": ""}

    def bakeoff():
        res = subprocess.run([sys.executable, "-m", "toolkit", "bakeoff", str(spec), "--out", str(out)], cwd=ROOT,
                             capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr[-4000:]
        return res

    res = bakeoff()
    run = out / "runs" / "msra_ner" / "smollm2-135m-instruct"
    assert res.stdout.split() == [str(out / n) for n in ("bakeoff.md", "bakeoff.json", "bakeoff.png")]
    log = (run / "bakeoff.log").read_text()
    assert stages_ran(log) == ["teacher_gate", "data", "prepare", "eval_base", "eval_base_guided", "eval_likelihood",
                               "train", "merge", "eval_student", "train_head", "eval_head", "eval_rules",
                               "eval_teacher",
                               "report"]
    stages = json.loads((run / "manifest.json").read_text())["stages"]
    guided = json.loads((run / "eval" / "base-guided-test" / "metrics.json").read_text())
    assert guided["backend"] == "vllm" and guided["n"] == 4 and stages["eval_base_guided"]["status"] == "done"
    assert "base-guided-test" in (run / "report.md").read_text()  # the run's report takes it as current

    result = json.loads((out / "bakeoff.json").read_text())
    student = json.loads((run / "eval" / "student-test" / "metrics.json").read_text())
    scores = result["scores"]["msra_ner"]["smollm2-135m-instruct"]
    assert scores["fine_tuned"] == round(student["entities"]["overall"]["f1"]["value"], 4)
    assert result["tasks"][0]["records"] == {"tested": 8, "base": 4}
    for ranking in ("fine-tuned", "base", "tunability"):
        assert result["ranks"][ranking]["msra_ner"] == {"smollm2-135m-instruct": 1.0}
        assert result["mean_rank"][ranking] == {"smollm2-135m-instruct": {"value": 1.0, "ci95": [1.0, 1.0]}}
    assert result["student_vs_teacher"] == [] and result["missing"] == []
    md = (out / "bakeoff.md").read_text()
    assert "entity F1" in md and "No teacher was evaluated (no key in $DASHSCOPE_API_KEY)" in md
    assert (out / "bakeoff.png").stat().st_size > 0

    checkpoint = Path(stages["train"]["checkpoint"])
    before = {p: p.stat().st_mtime_ns for p in [checkpoint / "adapter_model.safetensors",
                                                 run / "eval" / "base-test" / "predictions.jsonl",
                                                 run / "eval" / "base-guided-test" / "predictions.jsonl"]}
    shutil.rmtree(run / "merged")  # as if interrupted after training
    (out / "bakeoff.json").unlink()
    bakeoff()
    second = (run / "bakeoff.log").read_text()[len(log):]
    assert stages_ran(second) == ["merge", "eval_student", "report"]
    assert "eval base-guided-test" not in second and second.count("complete, skipped") == 11
    assert {p: p.stat().st_mtime_ns for p in before} == before
    again = json.loads((run / "manifest.json").read_text())["stages"]
    assert again["train"]["finished"] == stages["train"]["finished"]
    assert again["eval_base_guided"]["finished"] == stages["eval_base_guided"]["finished"]
    assert json.loads((out / "bakeoff.json").read_text())["ranks"] == result["ranks"]
