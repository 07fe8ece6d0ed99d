"""The CPU distillation result: logistics_zh's `cpu` profile (the embedded Gemma 3 270M student), end to end (long).

    .venv/bin/python benchmarks/distill_cpu.py [key=value ...]

Runs `xtk run recipes/logistics_zh.yaml --profile cpu` into runs/logistics_zh/distill_cpu (resumable: run it
again after an interruption) and writes benchmarks/results/distill_cpu.json whole, as benchmarks/recipe_cpu.py
does for any recipe (provenance, figures with intervals, stage minutes), with the tutorial's goals checked:
the fine-tuned student reaches 90% whole-record exact match on test.jsonl and 80% on test_unseen.jsonl, and
beats the rule baseline on test_unseen.jsonl.
"""

from __future__ import annotations

import sys

from recipe_cpu import ROOT, run, save

GOALS = {"test": 0.9, "test_unseen": 0.8}


def main() -> None:
    run_dir = ROOT / "runs" / "logistics_zh" / "distill_cpu"
    result = run("logistics_zh", sys.argv[1:], run_dir)
    exact = {name: m["exact_match"] for name, m in result["evaluations"].items()}
    for test, goal in GOALS.items():
        got = exact.get(f"student-{test}")
        result["goals"][f"student >= {goal:.0%} exact match on {test}"] = None if got is None else got >= goal
    save("distill_cpu", result, run_dir)


if __name__ == "__main__":
    main()
