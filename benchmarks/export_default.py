"""`xtk export --format gguf` as a user runs it after a flow, with the recipe's defaults (export.quant, a seeded
sample of export.parity_records test records scored by llama.cpp beside the merged student): how long it takes,
start to verdict, and the verdict.

    .venv/bin/python benchmarks/export_default.py --run runs/logistics_zh/cpu/gemma3-270m [--profile cpu]

The run folder (a finished flow: its merged student and that student's evaluations) is copied into a temporary
folder without its exports and their evaluations, so that nothing of an earlier export is reused; the merged
student's evaluation is reused, as export reuses it after a flow. Writes benchmarks/results/export_default.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance, trained_model  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished flow's run folder")
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(args.run, run, symlinks=True,
                        ignore=lambda folder, names: [n for n in names if n == "export" or n.startswith("gguf-")])
        # the recipe's overrides the flow ran with (its settings.json), so that its merged student is the recipe's
        overrides = json.loads((args.run / "settings.json").read_text(encoding="utf-8")).get("overrides", [])
        argv = [sys.executable, "-m", "toolkit", "export", str(RECIPE), "--profile", args.profile, "--run", str(run),
                "--format", "gguf", *overrides]
        t0 = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
        minutes = (time.perf_counter() - t0) / 60
        [record] = [json.loads(p.read_text(encoding="utf-8")) for p in (run / "export").glob("*/export.json")]
        student = trained_model(run / "merged")
    parity = record["parity"]
    out = {**provenance(one_run=True), "recipe": record["recipe"], "profile": args.profile, "run": str(args.run),
           "overrides": overrides, "student": student, "exit_code": done.returncode, "minutes": round(minutes, 1),
           "quant": record["gguf"]["quant"], "sample": parity["sample"],
           "exact_match": {"student": parity["all"]["student"]["exact_match"],
                           "exported": parity["all"]["exported"]["exact_match"]},
           "exact_match_difference": parity["all"]["exact_match_difference"],
           "mcnemar_p": parity["all"]["mcnemar_p"], "verdict": parity["verdict"]}
    path = ROOT / "benchmarks" / "results" / "export_default.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
