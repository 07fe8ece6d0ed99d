"""What moves the CPU student, one lever at a time: logistics_zh's `cpu` profile trained on the same small number
of rows, each variant changing one setting against the profile as shipped when they were measured (`BEFORE`: it
has since taken the 5-token prompt and guided decoding) (long: ~2 h).

    .venv/bin/python benchmarks/levers_cpu.py [--rows 800] [--limit 200]

Every variant is a run folder runs/logistics_zh/levers/<variant> holding the stages data, prepare, train, merge
and eval_student of `xtk run` (resumable: run the script again after an interruption; a finished stage is reused
under the same settings), scored on the first --limit records of test.jsonl and test_unseen.jsonl. Two variants
train nothing: the shipped variant's student, and the full flow's student (benchmarks/distill_cpu.py's run,
when it is there), evaluated again with JSON-schema guided decoding (the recipe's closed sets as enums where
they are small enough). benchmarks/results/levers_cpu.json is written whole after each variant: provenance,
each variant's overrides, training minutes and seconds a row, exact match with intervals, per-field accuracy,
and the exact match on strings that name their county alone (what the student must have memorised); for guided
decoding, the records it fixed and broke; and under `rows`, the shipped variant against the full flow's student
on the same records: two whole trainings, and what their log-linear fit says each goal would take.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_cpu import GOALS, by_what_the_text_names, log_fit  # noqa: E402
from recipe_cpu import ROOT, evaluated, figures, minutes  # noqa: E402
from provenance import provenance  # noqa: E402

from toolkit.io.jsonl import read_jsonl  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
TESTS = tuple(GOALS)
STAGES = ("data", "prepare", "train", "merge", "eval_student")
FLOW = ROOT / "runs" / "logistics_zh" / "distill_cpu"  # benchmarks/distill_cpu.py's run, its student merged
FLOW_OVERRIDES = ["train.save_total_limit=100"]  # as distill_cpu.py runs it
# The profile every trained variant changes one setting of: the cpu profile as these levers measured it (at
# 69d2dd4), before it took the two that helped (the 5-token prompt, guided decoding). The flow's student is
# evaluated with the profile it was trained with.
BEFORE = ["prompts.student=prompts/logistics_zh/short.md", "eval.guided_json=false"]
# name: (what changes, overrides, the trained variant whose student it evaluates again with guided decoding)
VARIANTS: dict[str, tuple[str, list[str], str | None]] = {
    "shipped": ("the cpu profile as shipped at 69d2dd4 (short.md, free decoding)", [], None),
    "shipped, guided": ("the shipped variant's student, JSON-schema guided decoding", ["eval.guided_json=true"],
                        "shipped"),
    "flow, guided": ("the full flow's student (distill_cpu.py, every training row), guided decoding",
                     ["eval.guided_json=true"], "flow"),
    "minimal prompt": ("the student prompt cut to 5 tokens (short.md: 57): shorter rows, nothing to read",
                       ["prompts.student=prompts/logistics_zh/minimal.md"], None),
    "LoRA rank 32": ("LoRA rank 8 -> 32, alpha 32 -> 128 (the same scale alpha/rank)",
                     ["train.lora_rank=32", "train.lora_alpha=128"], None),
    "2 epochs": ("every training row seen twice", ["train.num_train_epochs=2"], None),
}


def folder(name: str) -> Path:
    return ROOT / "runs" / "logistics_zh" / "levers" / name.replace(", ", "-").replace(" ", "-")


def train_variant(run_dir: Path, overrides: list[str]) -> None:
    """The variant's stages, in this process: each one run unless finished under the same settings."""
    from toolkit.flow.pipeline import STAGES as ALL, is_stale, open_run, run_stage
    from toolkit.task.recipe import load_recipe

    with open_run(load_recipe(RECIPE, "cpu", overrides), run_dir) as ctx:
        ran: list[str] = []
        for stage in (s for s in ALL if s.name in STAGES):
            if is_stale(ctx, stage, ran):
                run_stage(ctx, stage.name, ran)
                ran.append(stage.name)


def eval_again(run_dir: Path, source: Path, overrides: list[str]) -> None:
    """Another evaluation of a merged student, named `student` in its own run folder; a finished one is reused
    only while it is current for both the student (its training key, in its marker) and the evaluation settings,
    so a retrained student or another --limit is never reported from older answers."""
    from toolkit.task.recipe import load_recipe

    if evaluated(load_recipe(RECIPE, "cpu", overrides), run_dir, source / "merged", "student"):
        return
    subprocess.run([sys.executable, "-m", "toolkit", "eval", str(RECIPE), "--profile", "cpu", "--run",
                    str(run_dir), "--model", str(source / "merged"), "--name", "student", *overrides], cwd=ROOT,
                   check=True)


def scores(run_dir: Path, train_dir: Path) -> dict:
    out = {}
    for test in TESTS:
        m = figures(json.loads((run_dir / "eval" / f"student-{test}" / "metrics.json").read_text()))
        alone = by_what_the_text_names(run_dir, test, train_dir=train_dir).get("county alone")
        out[test] = {k: m[k] for k in ("n", "exact_match", "exact_match_ci95", "fields", "records_per_s")} | {
            "county_alone": alone}
    return out


def exact(run_dir: Path, test: str) -> dict[str, bool]:
    """Whole-record correctness of a run's student by record id."""
    rows = read_jsonl(run_dir / "eval" / f"student-{test}" / "predictions.jsonl")
    return {r["id"]: all(r["correct"].values()) for r in rows}


def paired(before: Path, after: Path, test: str) -> dict:
    """The same student without and with guided decoding, record by record on the records both scored."""
    was, now = exact(before, test), exact(after, test)
    was = {i: was[i] for i in now}
    return {"n": len(now), "unguided_exact_match": round(sum(was.values()) / len(now), 4),
            "guided_exact_match": round(sum(now.values()) / len(now), 4),
            "right_only_guided": sum(now[i] and not was[i] for i in now),
            "right_only_unguided": sum(was[i] and not now[i] for i in now)}


def whole_runs(small: Path) -> dict:
    """Two whole trainings of the profile as shipped, on the same records: the shipped variant's few rows and the
    full flow's student (its answers as the flow scored them: guided since the profile took it, so a re-run
    mixes two levers); a log-linear fit through the two, per goal. Unlike
    distill_cpu.py's curve (checkpoints taken mid-schedule), both points are finished runs."""
    def rows_and_pace(run_dir: Path) -> tuple[int, float]:
        stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
        rows = stages["prepare"]["stats"]["train"]
        return rows, 60 * minutes(stages["train"]) / rows

    (few, _), (many, pace) = rows_and_pace(small), rows_and_pace(FLOW)
    out = {"what": "exact match of two whole trainings of the cpu profile on the same test records, and the "
                   "log-linear fit through them (rows, and training minutes at the full flow's pace)"}
    for test, goal in GOALS.items():
        a = exact(small, test)
        b = {i: ok for i, ok in exact(FLOW, test).items() if i in a}
        points = [(few, sum(a.values()) / len(a)), (many, sum(b.values()) / len(b))]
        out[test] = {"n": len(a), "points": [{"rows": r, "exact_match": round(e, 4)} for r, e in points],
                     "fit": log_fit(points, goal, pace)}
    return out


def save(result: dict) -> None:
    (ROOT / "benchmarks" / "results" / "levers_cpu.json").write_text(
        json.dumps(result, ensure_ascii=False, indent=2) + "\n")


def measure(name: str, args: argparse.Namespace, common: list[str]) -> dict:
    """One variant: trained in a child process (or its trained variant's student evaluated again), then scored."""
    what, overrides, of = VARIANTS[name]
    run_dir, start = folder(name), time.monotonic()
    if of == "flow" and not (FLOW / "merged" / "config.json").is_file():
        return {"what": what, "skipped": f"no merged student in {FLOW}: run distill_cpu.py"}
    if of is None:
        # a child process a variant: the trainer's and vLLM's memory go back before the next one
        subprocess.run([sys.executable, __file__, "--one", name, "--rows", str(args.rows), "--limit",
                        str(args.limit)], cwd=ROOT, check=True)
        source = run_dir
    else:
        source = FLOW if of == "flow" else folder(of)
        extra = FLOW_OVERRIDES if of == "flow" else [*BEFORE, *VARIANTS[of][1]]
        eval_again(run_dir, source, [*common, *extra, *overrides])
    stages = json.loads((source / "manifest.json").read_text())["stages"]
    rows, train = stages["prepare"]["stats"]["train"], stages["train"]
    entry = {"what": what, "overrides": overrides, "minutes_this_invocation": round((time.monotonic() - start) / 60, 1),
             "trained_variant": of, "train_rows": rows, "train_minutes": minutes(train),
             "seconds_per_training_row": round(60 * minutes(train) / rows, 2), "fit": train.get("diagnosis"),
             "scores": scores(run_dir, source)}
    if of:
        entry["against_unguided"] = {t: paired(source, run_dir, t) for t in TESTS}
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=800, help="data.train_records of every trained variant")
    ap.add_argument("--limit", type=int, default=200, help="records scored of each test file")
    ap.add_argument("--only", action="append", choices=list(VARIANTS), help="these variants (default: all)")
    ap.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # a child's variant
    args = ap.parse_args()
    common = [f"data.train_records={args.rows}", f"eval.limit={args.limit}"]
    if args.one:
        return train_variant(folder(args.one), [*BEFORE, *common, *VARIANTS[args.one][1]])
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as sft.sh sets it for the cpu profile
    # resumable, and which invocation made each variant's stages is not recorded: not known to be one run
    result = {**provenance(one_run=False), "what": __doc__.split("\n\n")[0].replace("\n", " "), "recipe": "logistics_zh",
              "profile": "cpu", "common_overrides": common, "variants": {}}
    for name in args.only or VARIANTS:
        entry = result["variants"][name] = measure(name, args, common)
        if name == "shipped" and (FLOW / "merged" / "config.json").is_file():
            result["rows"] = whole_runs(folder(name))
        save(result)
        if "scores" in entry:
            print(json.dumps({name: {t: s["exact_match"] for t, s in entry["scores"].items()}}, ensure_ascii=False))


if __name__ == "__main__":
    main()
