"""A recipe's `cpu` profile (its embedded student), end to end, as one results file (long: ~1 h).

    .venv/bin/python benchmarks/recipe_cpu.py RECIPE [key=value ...]

Runs `xtk run recipes/RECIPE.yaml --profile cpu` into runs/RECIPE/bench_cpu (resumable: run it again after an
interruption; finished stages are reused only under the same settings), then writes
benchmarks/results/RECIPE_cpu.json whole: every evaluation's figures by the recipe's field types (exact match,
per-field accuracy, entity P/R/F1, macro-F1, all with 95% intervals), records/s, minutes per stage, the goal
"the fine-tuned student beats the baseline on every test set" decided by a paired test on the same records
(`versus`), and where the figures come from. The report and its charts are copied to
benchmarks/results/RECIPE_cpu/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, git_state, provenance, trained_model  # noqa: E402

sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results"
ALPHA = 0.05  # a claim of "beats" is made at the 5% level
BOOTSTRAP, SEED = 1000, 0  # as a bake-off spec's defaults


def value(m: dict) -> float:
    return round(m["value"], 4)


def figures(m: dict) -> dict:
    """One evaluation's headline figures, each with its interval."""
    out = {"n": m["n"], "exact_match": value(m["exact_match"]), "exact_match_ci95": m["exact_match"]["ci95"],
           "json_parse_rate": value(m["json_parse_rate"]),
           "fields": {f: value(v) for f, v in m["fields"].items()}, "records_per_s": m.get("records_per_s")}
    if "entities" in m:
        out["entities"] = {f: {k: [value(s), s["ci95"]] for k, s in prf.items()} for f, prf in m["entities"].items()}
    if "enums" in m:
        out["macro_f1"] = {f: [value(e["macro_f1"]), e["macro_f1"]["ci95"]] for f, e in m["enums"].items()}
        out["confusion"] = {f: e["confusion"] for f, e in m["enums"].items()}
    return out


def headline(m: dict) -> float:
    """The figure a recipe is judged by: entity F1 for entity lists, else macro-F1 of one class field, else
    whole-record exact match."""
    if "entities" in m:
        return m["entities"]["overall"]["f1"][0]
    if len(m.get("macro_f1", {})) == 1:
        return next(iter(m["macro_f1"].values()))[0]
    return m["exact_match"]


def minutes(stage: dict) -> float | None:
    if "started" not in stage or "finished" not in stage:
        return None
    t0, t1 = (datetime.fromisoformat(stage[k]) for k in ("started", "finished"))
    return round((t1 - t0).total_seconds() / 60, 1)


def evaluated(recipe, run_dir: Path, model: Path, name: str) -> bool:
    """Whether `xtk eval --model MODEL --name NAME` has evaluated `model` into run_dir on every test file, and its
    evaluations are current (toolkit.run.identity.not_current): a retrained model (its training key, in its marker) or
    other evaluation settings are evaluated afresh."""
    from toolkit.run.context import Context
    from toolkit.run.manifest import Manifest
    from toolkit.run.identity import evaluations_current
    from toolkit.run.roles import named_model

    ctx = Context(recipe, run_dir, Manifest(run_dir))
    return evaluations_current(ctx, named_model(ctx, str(model), name=name), recipe.data.test) is None


def _predictions(run_dir: Path, names: tuple[str, str], test: str) -> dict[str, dict[str, dict]]:
    from toolkit.io.jsonl import read_jsonl

    return {name: {str(r["id"]): r for r in read_jsonl(run_dir / "eval" / f"{name}-{test}" / "predictions.jsonl")}
            for name in names}


def versus_field(run_dir: Path, first: str, second: str, test: str, field: str) -> dict:
    """`first` against `second` on one field (invoice_zh's line items: the list right when every item is, items
    aligned by similarity), on the records both were tested on: McNemar's exact test on the field right or wrong."""
    from toolkit.maths.ranking import discordant, mcnemar, verdict

    rows = _predictions(run_dir, (first, second), test)
    right = [{k: bool(r["correct"][field]) for k, r in rows[name].items()} for name in (first, second)]
    both, b, c = discordant(*right)
    p = mcnemar(b, c)
    return {"records": len(both), "field": field,
            **{name: round(sum(r[k] for k in both) / max(len(both), 1), 4) for name, r in zip((first, second), right)},
            "exact_match": {f"{first}_only_right": b, f"{second}_only_right": c, "p_mcnemar": round(p, 4)},
            "decided_by": f"McNemar's exact test on {field} right or wrong", "verdict": verdict(
                p < ALPHA and b > c, p < ALPHA and c > b)}


def versus(recipe, run_dir: Path, first: str, second: str, test: str) -> dict:
    """`first` against `second` (evaluation names: eval/<name>-<test>/predictions.jsonl) on the records both were
    tested on, paired, with the bake-off's tests (toolkit/maths/ranking.py): McNemar's exact test on record exact match
    and a paired bootstrap of the difference in the task's headline metric. The verdict is "beats" only where the
    headline's own paired test shows `first` ahead at the 5% level (exact match: McNemar; any other headline: the
    bootstrap interval of the difference above 0), "below" where it shows `first` behind, else "not shown"."""
    from toolkit.choose.bakeoff_scores import task_metric
    from toolkit.task.scoring import EXACT_MATCH
    from toolkit.maths.ranking import Evaluation, discordant, mcnemar, paired_difference, verdict

    rows = _predictions(run_dir, (first, second), test)
    both, b, c = discordant(*({k: bool(r["exact"]) for k, r in rows[name].items()} for name in (first, second)))
    metric = task_metric(recipe)
    a, z = (Evaluation([metric.unit(rows[name][k]) for k in both], metric.statistic) for name in (first, second))
    difference, p = paired_difference(a, z, BOOTSTRAP, SEED), mcnemar(b, c)
    if metric is EXACT_MATCH:
        decided_by = "McNemar's exact test on record exact match"
        ahead, behind = p < ALPHA and b > c, p < ALPHA and c > b
    else:
        decided_by = f"paired bootstrap of the {metric.name} difference"
        ahead, behind = difference["ci95"][0] > 0, difference["ci95"][1] < 0
    return {"records": len(both), "metric": metric.name, first: round(a.score(), 4), second: round(z.score(), 4),
            "difference": difference, "bootstrap": BOOTSTRAP,
            "exact_match": {f"{first}_only_right": b, f"{second}_only_right": c, "p_mcnemar": round(p, 4)},
            "decided_by": decided_by, "verdict": verdict(ahead, behind)}


def made_by(stages: dict, began: str) -> dict:
    """Which invocation and commit made each stage's figures: "one_run" only when every stage that ran (not
    skipped) finished during this invocation, at the commit this results file names."""
    here = git_state()["commit"]
    made = {name: {"commit": s.get("commit"), "finished": s.get("finished"),
                   "this_invocation": s.get("finished", "") >= began}
            for name, s in stages.items() if s.get("status") == "done" and not s.get("skipped")}
    # a stage's commit is short, "-dirty" when the tree had changes: then it is not the code this file names
    one = all(m["this_invocation"] and bool(m["commit"]) and here.startswith(m["commit"]) for m in made.values())
    return {"made_by": made, "one_run": one}


def run(recipe: str, overrides: list[str], run_dir: Path, profile: str = "cpu") -> dict:
    """Run (or resume) one of the recipe's profiles and gather its figures."""
    from toolkit.task.nested import is_nested
    from toolkit.task.recipe import load_recipe

    start, began = time.monotonic(), datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    if profile == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # as sft.sh sets it for the cpu profile (and what runs after)
    path = ROOT / "recipes" / f"{recipe}.yaml"
    subprocess.run([sys.executable, "-m", "toolkit", "run", str(path), "--profile", profile, "--run", str(run_dir),
                    *overrides], cwd=ROOT, check=True)
    wall = round((time.monotonic() - start) / 60, 1)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    metrics = {p.parent.name: figures(json.loads(p.read_text()))
               for p in sorted((run_dir / "eval").glob("*/metrics.json"))}
    stages = manifest["stages"]
    tests = sorted({name.split("-", 1)[1] for name in metrics})
    loaded = load_recipe(path, profile, overrides)
    paired = {test: versus(loaded, run_dir, "student", "rules", test) for test in tests
              if f"student-{test}" in metrics and f"rules-{test}" in metrics}
    goals = {f"student beats the baseline on {test}": None if test not in paired
             else paired[test]["verdict"] == "beats" for test in tests if f"rules-{test}" in metrics}
    # a list of objects (line items) is judged on its own too: whole records hide which part the student gets
    lists = [f.name for f in loaded.fields if is_nested(f) and f.type == "list"]
    by_field = {test: {f: versus_field(run_dir, "student", "rules", test, f) for f in lists} for test in paired}
    goals |= {f"student beats the baseline on {f} on {test}": by_field[test][f]["verdict"] == "beats"
              for test in by_field for f in lists}
    made = made_by(stages, began)
    return {
        **provenance(made["one_run"]),
        "made_by": made["made_by"],
        # the training behind the student it scores (its settings' digest and commit)
        "models_scored": {"student": trained_model(run_dir / "merged")} if (run_dir / "merged").is_dir() else {},
        "recipe": recipe,
        "profile": profile,
        "overrides": overrides,
        "train_records": stages.get("prepare", {}).get("stats", {}).get("train"),
        "stage_minutes": {name: minutes(s) for name, s in stages.items()},
        "total_minutes": round(sum(m for m in (minutes(s) for s in stages.values()) if m), 1),
        # `xtk run` as this invocation timed it, start-up included; after an interruption, only what it re-ran
        "wall_minutes_this_invocation": wall,
        "skipped": {name: s["skipped"] for name, s in stages.items() if s.get("skipped")},
        "fit": stages.get("train", {}).get("diagnosis"),
        "fit_head": stages.get("train_head", {}).get("diagnosis"),
        "headline": {name: headline(m) for name, m in metrics.items()},
        "evaluations": metrics,
        "goals": goals,
        "student_vs_baseline": paired,
        **({"student_vs_baseline_by_field": by_field} if lists else {}),
        "versions": manifest.get("versions"),
    }


def save(name: str, result: dict, run_dir: Path) -> None:
    """The results file, written whole, and copies of the report and its charts."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    copies = OUT / name
    copies.mkdir(exist_ok=True)
    for chart in [run_dir / "report.md", *run_dir.glob("*.png")]:
        if chart.is_file():
            shutil.copy(chart, copies / chart.name)
    print(json.dumps({k: result[k] for k in ("recipe", "train_records", "headline", "goals", "total_minutes")},
                     ensure_ascii=False, indent=2))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    recipe, overrides = sys.argv[1], sys.argv[2:]
    run_dir = ROOT / "runs" / recipe / "bench_cpu"
    save(f"{recipe}_cpu", run(recipe, overrides, run_dir), run_dir)


if __name__ == "__main__":
    main()
