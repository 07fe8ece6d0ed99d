"""The CPU distillation result: the `cpu` profile on the embedded SmolLM2 student, end to end (long: ~1 h+).

    .venv/bin/python benchmarks/distill_cpu.py [key=value ...]

Runs `xtk run recipes/logistics_zh.yaml --profile cpu` into runs/logistics_zh/distill_cpu (resumable: run it
again after an interruption), then saves benchmarks/results/distill_cpu.json with every evaluation's figures,
the stage timings, and the two goals checked: the fine-tuned student beats the rule baseline on
test_unseen.jsonl, and gains at least 50 points of exact match over its own base on test.jsonl. The report,
accuracy chart and loss chart are copied to benchmarks/results/distill_cpu/.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "runs" / "logistics_zh" / "distill_cpu"
OUT = ROOT / "benchmarks" / "results"


def exact(metrics: dict, name: str) -> float | None:
    m = metrics.get(name)
    return m["exact_match"]["value"] if m else None


def main() -> None:
    overrides = sys.argv[1:]
    subprocess.run([sys.executable, "-m", "toolkit", "run", str(ROOT / "recipes" / "logistics_zh.yaml"),
                    "--profile", "cpu", "--run-dir", str(RUN), *overrides], cwd=ROOT, check=True)
    metrics = {p.parent.name: json.loads(p.read_text()) for p in sorted((RUN / "eval").glob("*/metrics.json"))}
    manifest = json.loads((RUN / "manifest.json").read_text())

    def minutes(stage: dict) -> float | None:
        if "started" not in stage or "finished" not in stage:
            return None
        t0, t1 = (datetime.fromisoformat(stage[k]) for k in ("started", "finished"))
        return round((t1 - t0).total_seconds() / 60, 1)

    student_unseen, rules_unseen = exact(metrics, "student-test_unseen"), exact(metrics, "rules-test_unseen")
    student_test, base_test = exact(metrics, "student-test"), exact(metrics, "base-test")
    goals = {
        "student beats rules on test_unseen": None if None in (student_unseen, rules_unseen)
        else student_unseen > rules_unseen,
        "student gains >= 50 points over base on test": None if None in (student_test, base_test)
        else student_test - base_test >= 0.5,
    }
    weakest = {}
    for name in ("student-test", "student-test_unseen"):
        if name in metrics:
            fields = metrics[name]["fields"]
            weakest[name] = sorted(((f, round(v["value"], 4)) for f, v in fields.items()), key=lambda x: x[1])[:3]
    result = {
        "overrides": overrides,
        "train_records": manifest["stages"].get("prepare", {}).get("stats", {}).get("train"),
        "stage_minutes": {name: minutes(s) for name, s in manifest["stages"].items()},
        "fit": manifest["stages"].get("train", {}).get("diagnosis"),
        "exact_match": {name: round(m["exact_match"]["value"], 4) for name, m in metrics.items()},
        "exact_match_ci95": {name: m["exact_match"]["ci95"] for name, m in metrics.items()},
        "json_parse_rate": {name: round(m["json_parse_rate"]["value"], 4) for name, m in metrics.items()},
        "fields": {name: {f: round(v["value"], 4) for f, v in m["fields"].items()} for name, m in metrics.items()},
        "records_per_s": {name: m["records_per_s"] for name, m in metrics.items()},
        "goals": goals,
        "weakest_fields": weakest,
        "versions": manifest.get("versions"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "distill_cpu.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    copies = OUT / "distill_cpu"
    copies.mkdir(exist_ok=True)
    for name in ("report.md", "accuracy.png", "loss.png"):
        if (RUN / name).is_file():
            shutil.copy(RUN / name, copies / name)
    print(json.dumps({k: result[k] for k in ("train_records", "exact_match", "goals", "stage_minutes")},
                     ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
