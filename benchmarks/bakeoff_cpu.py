"""Both embedded students on logistics_zh, msra_ner and review_sentiment_zh (`bakeoffs/cpu.yaml`, each recipe's
cpu profile at the sizes the spec explains), ranked, as one results file (long: under 2 h on 2 cores).

    .venv/bin/python benchmarks/bakeoff_cpu.py

Runs `xtk bakeoff bakeoffs/cpu.yaml` into runs/bakeoff/bench_cpu (resumable: run it again after an interruption;
finished pairs are reused, nothing is trained twice), then writes benchmarks/results/bakeoff_cpu.json whole: the
bake-off's own bakeoff.json (per-task scores and ranks, mean ranks with 95% intervals, the student against the
teacher where one was evaluated), minutes per stage of every pair, the goal "the whole bake-off in under 2 hours",
and where the figures come from. bakeoff.md and bakeoff.png are copied to benchmarks/results/bakeoff_cpu/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402
from recipe_cpu import made_by, minutes  # noqa: E402

OUT = ROOT / "benchmarks" / "results"
SPEC = ROOT / "bakeoffs" / "cpu.yaml"
BAKEOFF = ROOT / "runs" / "bakeoff" / "bench_cpu"
GOAL_MINUTES = 120


def pair_minutes(run_dir: Path) -> dict:
    """Minutes per recorded stage of one pair (its guided base evaluation included), and their sum."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = {name: minutes(s) for name, s in manifest["stages"].items()}
    return {"stages": stages, "total": round(sum(m for m in stages.values() if m), 1),
            "train_rows": manifest["stages"].get("prepare", {}).get("stats", {}).get("train"),
            "fit": manifest["stages"].get("train", {}).get("diagnosis"), "versions": manifest.get("versions")}


def main() -> None:
    start, began = time.monotonic(), datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    # paths relative to the checkout, so that the results name no folder of this machine
    subprocess.run([sys.executable, "-m", "toolkit", "bakeoff", str(SPEC.relative_to(ROOT)), "--out",
                    str(BAKEOFF.relative_to(ROOT))], cwd=ROOT, check=True)
    wall = round((time.monotonic() - start) / 60, 1)
    bakeoff = json.loads((BAKEOFF / "bakeoff.json").read_text())
    pairs = {task: {student: pair_minutes(BAKEOFF / run) for student, run in by_student.items()}
             for task, by_student in bakeoff["runs"].items()}
    total = round(sum(p["total"] for by_student in pairs.values() for p in by_student.values()), 1)
    # one run only when this invocation made every stage of every pair (recipe_cpu.py's rule, pair by pair)
    made = [made_by(json.loads((BAKEOFF / run / "manifest.json").read_text())["stages"], began)
            for by_student in bakeoff["runs"].values() for run in by_student.values()]
    result = {
        **provenance(all(m["one_run"] for m in made)),
        "spec": str(SPEC.relative_to(ROOT)),
        # the stages' own minutes, every pair, whichever invocation ran them (process start-ups not counted)
        "total_minutes": total,
        # `xtk bakeoff` as this invocation timed it; after an interruption, only what it re-ran
        "wall_minutes_this_invocation": wall,
        "goals": {f"the whole bake-off in under {GOAL_MINUTES // 60} hours": total < GOAL_MINUTES},
        "pairs": pairs,
        "bakeoff": bakeoff,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bakeoff_cpu.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    copies = OUT / "bakeoff_cpu"
    copies.mkdir(exist_ok=True)
    for name in ("bakeoff.md", "bakeoff.png"):
        shutil.copy(BAKEOFF / name, copies / name)
    print(json.dumps({"mean_rank": bakeoff["mean_rank"], "total_minutes": total, "goals": result["goals"]},
                     ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
