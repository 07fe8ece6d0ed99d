"""Training throughput of the `cpu` profile against plain `swift sft` defaults, on the same data, in one run.

    .venv/bin/python benchmarks/train_speed.py [--steps 8] [--out benchmarks/results/train_speed.json]

Each variant is a real `swift sft` of the embedded SmolLM2 student. Its speed is taken from ms-swift's
logging.jsonl after the first logged step (model load and warm-up excluded): training tokens per second =
sequences per optimiser step x mean tokens per sequence / seconds per step. Every ratio is against the
plain-defaults run measured in the same invocation.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from toolkit.jsonl import write_json  # noqa: E402
from toolkit.models import resolve_model  # noqa: E402
from toolkit.pipeline import console  # noqa: E402
from toolkit.prepare import gold_records, run_prepare  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402
from toolkit.runner import run_logged  # noqa: E402
from toolkit.train import read_log, sft_argv, sft_env  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
# name: overrides of the cpu profile; None = plain `swift sft` defaults
SINGLE = ["train.nproc_per_node=1", "train.per_device_train_batch_size=4"]
VARIANTS = {
    "swift defaults": None,
    "cpu profile: DDP 2 procs x 1 thread, batch 2 each": [],
    "1 proc x 1 thread, batch 4": SINGLE,
    "1 proc x 2 threads, batch 4": SINGLE + ["train.omp_num_threads=2"],
    "1 proc x 1 thread, batch 4, gradient checkpointing": SINGLE + ["train.gradient_checkpointing=true"],
}


def seconds(text: str) -> float:
    """ms-swift's elapsed_time ('1m 4s', '26s', '1h 2m 3s') in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)([hms])", text))


def step_seconds(rows: list[dict]) -> tuple[float, int]:
    steps = [(int(r["global_step/max_steps"].split("/")[0]), seconds(r["elapsed_time"]))
             for r in rows if "loss" in r]
    (s0, t0), (s1, t1) = steps[0], steps[-1]
    return (t1 - t0) / (s1 - s0), s1 - s0


def defaults_argv(model, train_file: Path, out: Path, steps: int) -> list[str]:
    return ["swift", "sft", "--model", model.ref, "--model_type", model.model_type, "--template", model.template,
            "--dataset", str(train_file), "--tuner_type", "lora", "--max_steps", str(steps),
            "--output_dir", str(out), "--add_version", "false", "--logging_steps", "1", "--save_strategy", "no"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--only", action="append", help="run only these variants (by name)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_speed.json"))
    args = parser.parse_args()

    os.environ.pop("OMP_NUM_THREADS", None)  # the defaults run gets torch's default threads; profiles set theirs
    work = Path(tempfile.mkdtemp(prefix="xtk-train-speed-"))
    base = load_recipe(RECIPE, "cpu", [f"data.train_records={args.records}", "data.val_fraction=0"])
    model = resolve_model(base.student.model, base.student.model_type, base.student.template)
    stats = run_prepare(base, gold_records(base), work / "data", model.ref)
    mean_tokens = stats["tokens"]["mean"]
    results = {}
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        out = work / re.sub(r"\W+", "-", name)
        if overrides is None:  # ms-swift's own defaults: batch 1 x accumulation 16 = 16 sequences a step
            argv, env, per_step = defaults_argv(model, work / "data" / "train.jsonl", out, args.steps), {}, 16
        else:
            recipe = load_recipe(RECIPE, "cpu", [f"train.max_steps={args.steps}", "train.save_steps=100000",
                                                 "train.logging_steps=1", *overrides])
            argv = sft_argv(recipe, model, work / "data" / "train.jsonl", None, out)
            env = sft_env(recipe)
            t = recipe.train
            per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * t.nproc_per_node
        console.print(f"[bold]{name}[/]: {args.steps} steps of {per_step} sequences")
        start = time.perf_counter()
        try:
            run_logged(argv, out / "train.log", env=env, what=name)
        except Exception as exc:  # a variant that cannot run here is a result too
            results[name] = {"error": str(exc).splitlines()[0]}
            console.print(f"  failed: {results[name]['error']}")
            continue
        s_per_step, measured = step_seconds(read_log(out))
        results[name] = {"sequences_per_step": per_step, "seconds_per_step": round(s_per_step, 2),
                         "measured_steps": measured, "tokens_per_s": round(per_step * mean_tokens / s_per_step, 1),
                         "wall_s": round(time.perf_counter() - start, 1), "env": env}
        console.print(f"  {results[name]['tokens_per_s']} tokens/s ({s_per_step:.1f} s/step)")
    baseline = results.get("swift defaults", {}).get("tokens_per_s")
    for r in results.values():
        if baseline and "tokens_per_s" in r:
            r["ratio_vs_swift_defaults"] = round(r["tokens_per_s"] / baseline, 2)
    write_json(args.out, {"mean_tokens_per_sequence": mean_tokens, "records": stats["train"],
                          "steps": args.steps, "machine": "2 CPU cores", "results": results})
    for name, r in results.items():
        print(f"{name:48s} {r.get('tokens_per_s', r.get('error'))} tok/s  x{r.get('ratio_vs_swift_defaults', '-')}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
