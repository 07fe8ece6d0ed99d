"""The CPU distillation result: logistics_zh's `cpu` profile (the embedded Gemma 3 270M student), end to end (long).

    .venv/bin/python benchmarks/distill_cpu.py [key=value ...]

Runs `xtk run recipes/logistics_zh.yaml --profile cpu` into runs/logistics_zh/distill_cpu (resumable: run it
again after an interruption) and writes benchmarks/results/distill_cpu.json whole, as benchmarks/recipe_cpu.py
does for any recipe (provenance, figures with intervals, stage minutes), with the tutorial's goals checked:
the fine-tuned student reaches 95% whole-record exact match on test.jsonl and 93% on test_unseen.jsonl, and
beats the rule baseline on each test file by a paired test on the same records (recipe_cpu.py's `versus`).

The student's answers are also split by what each test string names (its province's and its city's short
names, or neither: the county alone) and by whether the training rows named its county: what the student reads
off the text against what it must have memorised, and whether seeing a county once was enough.

Then the learning curve of the same training: earlier checkpoints (after about 1/4 and 1/2 of the rows)
are merged and scored on the same test files (`xtk eval`, eval/curve-<rows>rows-<test>/), and a log-linear fit
of exact match against rows says how many rows, and how many minutes of training here, each goal would take.
The run keeps every checkpoint for this (`train.save_total_limit`, a setting that does not change the
training). An earlier checkpoint was taken mid-schedule (its learning rate not yet decayed), so it is not the
same as a whole run on that many rows; the curve's minutes are not part of the flow's.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from recipe_cpu import ROOT, evaluated, figures, run, save

sys.path.insert(0, str(ROOT))
from toolkit.io.jsonl import read_jsonl  # noqa: E402
from toolkit.io.markers import mark_trained, read_marker, trained_key  # noqa: E402
from toolkit.task.recipe import load_recipe  # noqa: E402
from toolkit.maths.stats import proportion  # noqa: E402
from toolkit.tasks.logistics_zh.generate import places  # noqa: E402
from toolkit.train.swift import checkpoints, run_merge  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
GOALS = {"test": 0.95, "test_unseen": 0.93}
KEEP_CHECKPOINTS = ["train.save_total_limit=100"]
CURVE_FRACTIONS = (1 / 4, 1 / 2)  # each point costs ~7 min here (a merge, a vLLM start, 800 records)


def step(ckpt) -> int:
    return int(Path(ckpt).name.split("-")[1])


def curve_checkpoints(train_dir, merged_step: int) -> list:
    """The checkpoints nearest each fraction of the merged one's step, earliest first."""
    found = [c for c in checkpoints(train_dir) if step(c) < merged_step]
    picked = {min(found, key=lambda c: abs(step(c) - f * merged_step)) for f in CURVE_FRACTIONS} if found else set()
    return sorted(picked, key=step)


def score_checkpoint(ckpt, rows: int, run_dir, overrides: list[str], recipe) -> str:
    """Merge one checkpoint and score it on every test file; returns its evaluation name. A re-run reuses the
    merge only while it comes from this training (its key, in the merged student's marker), and the scores only
    while they are current for that merge and these evaluation settings: a retrained run's checkpoint of the
    same name is merged and scored afresh."""
    name, student, merged = f"curve-{rows}rows", recipe.student, run_dir / "curve" / ckpt.name
    key = trained_key(run_dir / "merged")
    if trained_key(merged) != key:
        shutil.rmtree(merged, ignore_errors=True)
        run_merge(ckpt, merged, run_dir / "curve" / f"{ckpt.name}-merge.log")
        mark_trained(merged, f"logistics_zh student at {ckpt.name}", student.model, ckpt, key, student.model_type,
                     student.template)
    if evaluated(recipe, run_dir, merged, name):
        return name
    subprocess.run([sys.executable, "-m", "toolkit", "eval", str(RECIPE), "--profile", "cpu", "--run",
                    str(run_dir), "--model", str(merged), "--name", name, *overrides], cwd=ROOT, check=True)
    return name


def by_what_the_text_names(run_dir: Path, test: str, name: str = "student", train_dir: Path | None = None) -> dict:
    """An evaluation's exact match on one test file (eval/<name>-<test>), split by the admin levels the string
    names and by whether the training rows (train.jsonl of train_dir's run, this one's by default; validation
    rows apart) named its county."""
    admin = ("province", "city", "district")
    city = {(p.province, p.city): p for p in places()}  # short names by city: a label may leave the county out
    trained = {tuple(json.loads(r["messages"][2]["content"])[f] for f in admin)
               for r in read_jsonl((train_dir or run_dir) / "data" / "train.jsonl")}
    groups: dict[str, list[bool]] = {}
    for r in read_jsonl(run_dir / "eval" / f"{name}-{test}" / "predictions.jsonl"):
        key = tuple(r["gold"][f] for f in admin)
        p = city[key[:2]]
        named = (p.province_short in r["input"], p.city_short in r["input"])
        names = {(True, True): "province and city", (False, True): "city, no province",
                 (True, False): "province, no city", (False, False): "county alone"}[named]
        exact = all(r["correct"].values())
        for group in (names, f"{names}, county {'in' if key in trained else 'not in'} training"):
            groups.setdefault(group, []).append(exact)
    return {g: proportion(sum(v), len(v)) for g, v in sorted(groups.items())}


def log_fit(points: list[tuple[int, float]], goal: float, seconds_per_row: float) -> dict:
    """Least squares of exact match on ln(rows); the rows (and training minutes here) where it reaches `goal`."""
    xs, ys = [math.log(r) for r, _ in points], [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    fit = {"per_doubling": round(slope * math.log(2), 4), "goal": goal}
    if slope > 0:
        rows = math.exp(mx + (goal - my) / slope)
        fit |= {"rows_for_goal": round(rows), "train_minutes_for_goal": round(rows * seconds_per_row / 60)}
    return fit


def main() -> None:
    overrides = [*sys.argv[1:], *KEEP_CHECKPOINTS]
    run_dir = ROOT / "runs" / "logistics_zh" / "distill_cpu"
    result = run("logistics_zh", overrides, run_dir)
    for name in [n for n in result["evaluations"] if n.startswith("curve-")]:  # a re-run finds the curve's own
        del result["evaluations"][name], result["headline"][name]
    exact = {name: m["exact_match"] for name, m in result["evaluations"].items()}
    for test, goal in GOALS.items():
        got = exact.get(f"student-{test}")
        result["goals"][f"student >= {goal:.0%} exact match on {test}"] = None if got is None else got >= goal
    result["by_what_the_text_names"] = {
        "what": "student exact match by the admin levels a test string names (whether the short names of its "
                "province and of its city occur in it) and by whether a training row named the "
                "same (province, city, district)",
        **{test: by_what_the_text_names(run_dir, test) for test in GOALS}}
    save("distill_cpu", result, run_dir)  # the flow's figures stand even if the curve is interrupted

    start = time.monotonic()
    recipe = load_recipe(RECIPE, "cpu", overrides)
    t = recipe.train
    per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * t.nproc_per_node
    merged = read_marker(run_dir / "merged")["checkpoint"]
    rows_final = result["train_records"]
    rows_merged = min(rows_final, step(merged) * per_step)
    points = {}
    for ckpt in curve_checkpoints(run_dir / "train", step(merged)):
        rows = min(rows_final, step(ckpt) * per_step)
        points[rows] = (ckpt.name, score_checkpoint(ckpt, rows, run_dir, overrides, recipe))
    trained = min(rows_final, max(step(c) for c in checkpoints(run_dir / "train")) * per_step)
    seconds_per_row = 60 * result["stage_minutes"]["train"] / trained
    curve = {"what": "exact match of earlier checkpoints of this training (rows seen so far), then the merged "
                     "student's; an earlier checkpoint is mid-schedule, not a whole run on that many rows",
             "merged_checkpoint": Path(merged).name, "points": {}, "fit": {},
             "seconds_per_training_row": round(seconds_per_row, 2)}
    for test, goal in GOALS.items():
        row = []
        for rows, (ckpt, name) in sorted(points.items()):
            m = figures(json.loads((run_dir / "eval" / f"{name}-{test}" / "metrics.json").read_text()))
            row.append({"rows": rows, "checkpoint": ckpt, "exact_match": m["exact_match"],
                        "exact_match_ci95": m["exact_match_ci95"], "fields": m["fields"]})
        student = result["evaluations"][f"student-{test}"]
        row.append({"rows": rows_merged, "checkpoint": f"{Path(merged).name} (merged)",
                    "exact_match": student["exact_match"], "exact_match_ci95": student["exact_match_ci95"],
                    "fields": student["fields"]})
        curve["points"][test] = row
        if len(row) >= 2:
            curve["fit"][test] = log_fit([(p["rows"], p["exact_match"]) for p in row], goal, seconds_per_row)
    curve["minutes"] = round((time.monotonic() - start) / 60, 1)
    result["curve"] = curve
    save("distill_cpu", result, run_dir)


if __name__ == "__main__":
    main()
