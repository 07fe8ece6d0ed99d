"""The exported student against the merged one: logistics_zh's cpu-profile student exported to GGUF f16, q8_0 and
q4_k_m (`xtk export`), each scored by llama.cpp on the recipe's test files (400 + 400 records) beside the merged
student scored as `xtk eval` scores it, record by record (long: training the student takes ~1 h here when its run
folder does not hold it yet; each GGUF's scoring, tens of minutes).

    .venv/bin/python benchmarks/export_parity.py [--limit N] [--quants f16,q8_0,q4_k_m] [key=value ...]

Uses (and resumes) runs/logistics_zh/bench_cpu, the folder benchmarks/recipe_cpu.py runs the profile in: `xtk
merge` there trains what is missing, then `xtk export --accept-drop --parity-full` once per quantisation (every
test record, not export's default sample; the student's own evaluation is reused by every export after the first). Writes benchmarks/results/export_parity.json whole, with
where its figures come from; a `--limit` run writes beside the run folder instead, never over the results file.
The goal: f16 and q8_0 within 1 point of the student's exact match (export.max_drop), q4_k_m as it comes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
RUN_DIR = ROOT / "runs" / "logistics_zh" / "bench_cpu"
OUT = ROOT / "benchmarks" / "results" / "export_parity.json"


def xtk(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=ROOT, check=True)


def speeds(run_dir: Path, folders: list[str]) -> dict:
    """Records/s of the evaluations in these eval/ folders."""
    out = {}
    for name in folders:
        m = json.loads((run_dir / "eval" / name / "metrics.json").read_text(encoding="utf-8"))
        out[name] = m["records_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, help="first N records of each test file (a trial: not the results file)")
    ap.add_argument("--quants", default="f16,q8_0,q4_k_m", help="comma-separated quantisations")
    ap.add_argument("--run-dir", type=Path, default=RUN_DIR)
    args, overrides = ap.parse_known_args()
    common = [str(RECIPE), "--profile", "cpu", "--run", str(args.run_dir), *overrides,
              *([f"eval.limit={args.limit}"] if args.limit else [])]
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as sft.sh sets it for the cpu profile
    xtk("merge", *common)
    exports = {}
    for quant in args.quants.split(","):
        xtk("export", *common, "--format", "gguf", "--quant", quant, "--accept-drop", "--parity-full")
        record = json.loads((args.run_dir / "export" / f"student-{quant}" / "export.json").read_text(encoding="utf-8"))
        parity = record["parity"]
        exports[quant] = {"gguf_bytes": record["gguf"]["bytes"], "gguf_sha256": record["gguf"]["sha256"],
                          "converter": record["gguf"]["converter"], "prompt_tokens": record.get("prompt_tokens"),
                          "verdict": parity["verdict"], "all": parity["all"], "tests": parity["tests"],
                          "records_per_s": speeds(args.run_dir, [f"gguf-student-{quant}-{stem}"
                                                                 for stem in parity["tests"]])}
    first = next(iter(exports.values()))
    # `xtk export` reuses an evaluation an earlier invocation made under the same settings: not known to be one run
    result = {
        **provenance(one_run=False),
        "recipe": "logistics_zh", "profile": "cpu", "overrides": overrides, "limit": args.limit,
        "run_dir": str(args.run_dir),
        "student": {"all": first["all"]["student"], "tests": {t: p["student"] for t, p in first["tests"].items()},
                    "records_per_s": speeds(args.run_dir, [f"student-{stem}" for stem in first["tests"]])},
        "exports": exports,
        "goals": {f"{q} within export.max_drop of the student": e["verdict"]["ok"]
                  for q, e in exports.items() if q in ("f16", "q8_0")},
    }
    out = OUT if not args.limit else args.run_dir / f"export_parity-limit{args.limit}.json"
    out.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(out)
    print(json.dumps({q: {"drop": e["verdict"]["drop"], "exported": e["all"]["exported"]["exact_match"]}
                      for q, e in exports.items()}, indent=2))


if __name__ == "__main__":
    main()
