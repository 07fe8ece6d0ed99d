"""A knowledge table declared `written` (toolkit/task/written.py), measured on a trained student without retraining
it: logistics_zh's cpu student scored twice in this one run on each test file, as `xtk eval` runs it (vLLM, guided),
under the whole MCA table (the recipe's `tables` entry without its aliases and `written`: one schema for every
text, as the recipe had it before) and under the table as shipped (each text's own schema: only the places it
writes, "" where it writes none), paired on the same records: McNemar's exact test on whole records.

    .venv/bin/python benchmarks/written_table.py [--model FOLDER]

FOLDER: the merged student (default runs/logistics_zh/distill_cpu/merged, which benchmarks/distill_cpu.py leaves in
its checkout); the training that made it is recorded. Both arms are evaluated afresh into a temporary run folder.
Writes benchmarks/results/written_table.json whole.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, trained_model  # noqa: E402
from recipe_cpu import versus  # noqa: E402

sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
OUT = ROOT / "benchmarks" / "results" / "written_table.json"
# The shipped entry less its aliases and `written`: the whole table, one schema for every text.
WHOLE = "tables=[{file: datasets/logistics_zh/admin.csv, fields: [province, city, district], may_be_empty: [district]}]"
ARMS = {"whole": [WHOLE], "written": []}


def score(run_dir: Path, name: str, test: str) -> dict:
    metrics = json.loads((run_dir / "eval" / f"{name}-{test}" / "metrics.json").read_text(encoding="utf-8"))
    return {"exact_match": round(metrics["exact_match"]["value"], 4), "ci95": metrics["exact_match"]["ci95"],
            "fields": {f: round(v["value"], 4) for f, v in metrics["fields"].items()},
            "records_per_s": metrics.get("records_per_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "runs" / "logistics_zh" / "distill_cpu" / "merged")
    args = ap.parse_args()
    from toolkit.task.recipe import load_recipe

    recipe = load_recipe(RECIPE, "cpu")
    tests = [Path(t).stem for t in recipe.data.test]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # as sft.sh sets it on CPU
    with tempfile.TemporaryDirectory(prefix="written_table-") as tmp:
        run_dir = Path(tmp)
        for name, overrides in ARMS.items():
            subprocess.run([sys.executable, "-m", "toolkit", "eval", str(RECIPE), "--profile", "cpu", "--run",
                            str(run_dir), "--model", str(args.model), "--name", name, *overrides], check=True, env=env)
        result = {
            **provenance(one_run=True), "recipe": "logistics_zh", "profile": "cpu",
            "models_scored": {"student": trained_model(args.model)},
            "arms": {"whole": "the whole MCA table, one schema for every text",
                     "written": "the table as shipped: each text's own schema (aliases, written: true)"},
            "tests": {test: {**{name: score(run_dir, name, test) for name in ARMS},
                             "written_vs_whole": versus(recipe, run_dir, "written", "whole", test)}
                      for test in tests},
        }
    OUT.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(OUT)


if __name__ == "__main__":
    main()
