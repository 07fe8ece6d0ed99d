"""xtk predict on one machine, single-process and on a local Ray cluster, on the same records in one run: records/s
of each and whether the outputs are identical.

    .venv/bin/python benchmarks/predict_cpu.py [--model student|PATH] [--records 400] [KEY=VALUE ...]

--model student is the cpu profile run's merged student; recipe overrides follow as key=value. Each job runs
as the `xtk predict` command a user types. The single-process figure excludes loading the model (done before
the job starts); the Ray figure includes starting the local cluster and loading the model in its actor, which
is what a user waits for; both wall times are reported too. Writes benchmarks/results/predict_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

sys.path.insert(0, str(ROOT))

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
TEST = ROOT / "datasets" / "logistics_zh" / "test.jsonl"


def job(argv: list[str]) -> tuple[dict, float]:
    """The summary `xtk predict` prints, and the command's wall seconds."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "toolkit", "predict", *argv], cwd=ROOT, capture_output=True,
                         text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"xtk predict {' '.join(argv)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout[res.stdout.index("{\n"):]), wall


def arguments(doc: str, records: int) -> argparse.ArgumentParser:
    """--model, --records, --profile; parse_known_args() gives the recipe overrides (key=value) after them."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--model", default="student")
    parser.add_argument("--records", type=int, default=records)
    parser.add_argument("--profile", default="cpu")
    return parser


def main() -> None:
    args, overrides = arguments(__doc__, 400).parse_known_args()

    from toolkit.io.jsonl import read_jsonl, write_jsonl
    from toolkit.task.recipe import load_recipe

    recipe = load_recipe(RECIPE, args.profile, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jsonl(tmp / "texts.jsonl", [{"id": r["id"], "text": r["text"]} for r in read_jsonl(TEST)[:args.records]])
        common = [str(RECIPE), "--profile", args.profile, "--model", args.model, "--input", str(tmp / "texts.jsonl"),
                  *overrides]
        local, local_wall = job([*common, "--out", str(tmp / "local.jsonl")])
        ray, ray_wall = job([*common, "--out", str(tmp / "ray.jsonl"), "--engine", "ray"])
        a, b = read_jsonl(tmp / "local.jsonl"), read_jsonl(tmp / "ray.jsonl")
    out = {**provenance(one_run=True), "recipe": recipe.name, "profile": args.profile, "model": args.model,
           "overrides": overrides, "records": len(a), "batch_size": recipe.eval.batch_size,
           "max_new_tokens": recipe.eval.max_new_tokens, "guided_json": recipe.eval.guided_json,
           "single_process": {"records_per_s": local["records_per_s"], "seconds": local["seconds"],
                              "wall_seconds": round(local_wall, 1), "valid_pct": local["valid_pct"]},
           "ray_local": {"records_per_s": ray["records_per_s"], "seconds": ray["seconds"],
                         "wall_seconds": round(ray_wall, 1), "valid_pct": ray["valid_pct"]},
           "identical_rows": sum(x == y for x, y in zip(a, b)), "outputs_identical": a == b}
    path = ROOT / "benchmarks" / "results" / "predict_cpu.json"
    path.write_text(json.dumps(out, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
