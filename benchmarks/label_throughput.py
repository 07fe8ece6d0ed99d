"""Labelling throughput of `xtk label` against the local test teacher with 100 ms latency.

    .venv/bin/python benchmarks/label_throughput.py [--latency 0.1]

Records per second at concurrency 1, 8, 32 and 64, each against the ideal concurrency / latency measured
in the same run. Goal: at least 80% of ideal at 32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from provenance import provenance  # noqa: E402
from toolkit.io.jsonl import read_jsonl, write_json, write_jsonl  # noqa: E402
from toolkit.data.label import run_label  # noqa: E402
from toolkit.task.recipe import load_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "label_throughput.json"))
    args = parser.parse_args()
    os.environ["DASHSCOPE_API_KEY"] = "benchmark-key"
    recipe0 = load_recipe(ROOT / "recipes" / "logistics_zh.yaml")
    texts = read_jsonl(recipe0.path(recipe0.data.pool))
    results = {}
    # The server runs in a process of its own, as a real endpoint would: no GIL shared with the client.
    server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "teacher_server.py"), "--latency",
                               str(args.latency)], stdout=subprocess.PIPE, text=True)
    base_url = server.stdout.readline().strip()
    try:
        for concurrency in (1, 8, 32, 64):
            n = min(len(texts), max(100, concurrency * 40))  # seconds of steady state, not start-up
            recipe = load_recipe(ROOT / "recipes" / "logistics_zh.yaml", None, [f"teacher.concurrency={concurrency}"])
            with tempfile.TemporaryDirectory() as tmp:
                raw = write_jsonl(Path(tmp) / "raw.jsonl", texts[:n])
                # yes: 2,560 records' list-price estimate passes teacher.confirm_above; the teacher is local
                summary = run_label(recipe, raw, Path(tmp) / "out", base_url=base_url, yes=True)
            ideal = concurrency / args.latency
            results[str(concurrency)] = {"records": n, "records_per_s": summary["records_per_s"],
                                         "ideal_records_per_s": ideal,
                                         "fraction_of_ideal": round(summary["records_per_s"] / ideal, 3)}
            print(concurrency, results[str(concurrency)], flush=True)
    finally:
        server.terminate()
    write_json(args.out, {"benchmark": "label_throughput", **provenance(one_run=True), "latency_s": args.latency, "results": results})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
