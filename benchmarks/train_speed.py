"""Training throughput of the `cpu` profile against plain `swift sft` defaults and each of its levers alone, on the
same data, in one run, and as a fraction of this CPU's own best sustained matmul throughput (its ceiling,
fp32 and bf16) measured by the same run.

    .venv/bin/python benchmarks/train_speed.py [--sequences 64] [--only NAME ...] [--out FILE]

Each variant is a real `swift sft` of the profile's student (Gemma 3 270M) on the same prepared records; every ratio is
against the plain-defaults run of the same invocation. Speed comes from ms-swift's logging.jsonl, the first
optimiser step (model load, warm-up) left out: tokens are the real tokens the trainer fed the model (its
`num_input_tokens_seen`, counting non-padding tokens, summed over DDP processes), time is the trainer's own
clock (`train_speed(s/it)` x steps).

LoRA training does about 4 x parameters FLOP per token (forward 2, input gradients 2; the frozen weights get no
weight gradient); the parameters counted are the weights of every nn.Linear, the tied embedding/lm_head matrix once
as the lm_head (the embedding lookup is no matmul). Attention's own products and LoRA's small matrices are left out.
That rule ("GFLOP/s by the rule") counts the lm_head on every real token. ms-swift computes it only from the first
answer token on (`use_logits_to_keep`), and every other matmul on the padded tokens too, so each variant also gets
the matmuls it executed: 4 x (matmul parameters - lm_head) x padded tokens + 4 x lm_head x output-layer rows,
counted by benchmarks/token_count_plugin.py.

The ceiling: torch matmuls at the student's layer shapes (every nn.Linear, the tied lm_head once), forward
(x @ W.T) and input gradient (dy @ W) each, weighted by how often the model has each shape, at every launch shape
(1 thread; one process on every core; one 1-thread process per core) and at the profile's rows and 1024 rows: the
best aggregate of them all in float32, and in bfloat16 (one process per core, one process on every core). A
variant's fraction of it: its executed FLOP, the body's and the output layer's each at the ceiling of the dtype it
ran in (the profile's output layer is bfloat16 where the CPU multiplies it natively: toolkit/train/swift_plugin.py), as
seconds, over the seconds it took. Above 1 would mean the ceiling is not one; the results say whether any is.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

sys.path.insert(0, str(ROOT))
from toolkit.io.jsonl import write_json  # noqa: E402
from toolkit.model.models import resolve_model  # noqa: E402
from toolkit.flow.pipeline import console  # noqa: E402
from toolkit.data.prepare import gold_records, run_prepare  # noqa: E402
from toolkit.task.recipe import load_recipe  # noqa: E402
from toolkit.io.runner import run_logged  # noqa: E402
from toolkit.train.cpu import cpu_has_bf16  # noqa: E402
from toolkit.train.swift import read_log, sft_argv, sft_env  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
PROFILE = "cpu profile"


# name: overrides of the cpu profile; None = plain `swift sft` defaults. The profile's two processes are one DDP
# group (toolkit/train/swift.py passes `--use_cpu true` to every multi-process CPU launch). Few variants: the whole run
# must stay under 30 minutes here.
VARIANTS = {
    "swift defaults": None,
    # the profile's first lever alone: ms-swift recomputes the forward pass by default (gradient checkpointing)
    "swift defaults, gradient checkpointing off": None,
    PROFILE: [],
    "cpu profile without group_by_length": ["train.extra_args=[]"],
    "cpu profile, glibc's default malloc": [],
    # the profile's output layer as a float32 batched matmul over a strided slice, as ms-swift computes it
    "cpu profile, float32 output layer": ["train.bf16_output_layer=false"],
    "cpu profile, LoRA dropout 0.05": ["train.lora_dropout=0.05"],
    # ms-swift picks eager attention for Gemma 3; bf16 matmuls run ~2x fp32's where the CPU has avx512_bf16
    "cpu profile, sdpa attention": ['train.extra_args=[--group_by_length, "true", --attn_impl, sdpa]'],
    "cpu profile in bfloat16": ["train.torch_dtype=bfloat16"],
    "cpu profile, batch 4 per process": ["train.per_device_train_batch_size=4"],
    "1 proc x 2 threads, batch 4": ["train.nproc_per_node=1", "train.per_device_train_batch_size=4",
                                    "train.omp_num_threads=2"],
}
# Variants launched as the profile is, less one variable of the environment xtk gives `swift sft`.
WITHOUT_ENV = {"cpu profile, glibc's default malloc": "GLIBC_TUNABLES"}
# Instrumentation only: the trainer counts the real and the padded tokens it feeds the model.
COUNT_TOKENS = {"--external_plugins": str(ROOT / "benchmarks" / "token_count_plugin.py"),
                "--callbacks": "count_tokens"}


def counting_tokens(argv: list[str]) -> list[str]:
    """argv with the token counter added to the plugins and callbacks it already names: ms-swift keeps the last of
    a repeated flag, so a second --callbacks would drop the profile's own (toolkit/train/swift_plugin.py)."""
    argv = list(argv)
    for flag, value in COUNT_TOKENS.items():
        if flag in argv:
            argv.insert(argv.index(flag) + 2, value)
        else:
            argv += [flag, value]
    return argv


def step_rate(rows: list[dict]) -> dict:
    """Seconds per step, real tokens per second, and the padded tokens and output-layer rows fed, between the first
    and the last logged training step."""
    steps = [r for r in rows if "loss" in r and "num_input_tokens_seen" in r]
    if len(steps) < 2:
        raise ValueError(f"{len(steps)} logged training steps with a token count; need 2 or more")

    def at(r: dict) -> tuple[int, float, int, int, int]:  # step, seconds since training began, token counts
        step = int(r["global_step/max_steps"].split("/")[0])
        return (step, r["train_speed(s/it)"] * step, r["num_input_tokens_seen"], r["padded_tokens_seen"],
                r["logit_rows_seen"])

    (s0, t0, n0, p0, l0), (s1, t1, n1, p1, l1) = at(steps[0]), at(steps[-1])
    return {"measured_steps": s1 - s0, "seconds_per_step": round((t1 - t0) / (s1 - s0), 2),
            "real_tokens": n1 - n0, "padded_tokens": p1 - p0, "logit_rows": l1 - l0,
            "padding_share": round(1 - (n1 - n0) / (p1 - p0), 3), "logit_rows_share": round((l1 - l0) / (p1 - p0), 3),
            "use_logits_to_keep": steps[-1].get("use_logits_to_keep"), "measured_seconds": round(t1 - t0, 1),
            "tokens_per_s": round((n1 - n0) / (t1 - t0), 1)}


def defaults_argv(model, train_file: Path, out: Path, steps: int, checkpointing: bool = True) -> list[str]:
    return ["swift", "sft", "--model", model.ref, "--model_type", model.model_type, "--template", model.template,
            "--dataset", str(train_file), "--tuner_type", "lora", "--max_steps", str(steps),
            "--output_dir", str(out), "--add_version", "false", "--logging_steps", "1", "--save_strategy", "no",
            *([] if checkpointing else ["--gradient_checkpointing", "false"])]


def linear_shapes(model_ref: str) -> tuple[Counter, dict]:
    """(in_features, out_features) -> how many nn.Linear of that shape SmolLM2 has, and its parameter counts,
    read from the model itself (built on the meta device: no weights loaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_ref)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    shapes = Counter((m.in_features, m.out_features) for m in linears)
    head = model.get_output_embeddings().weight.numel()
    counts = {"all_unique": sum(p.numel() for p in model.parameters()),  # tied matrix once
              "matmul": sum(m.weight.numel() for m in linears), "lm_head": head,
              "tied_embedding": bool(getattr(config, "tie_word_embeddings", False))}
    return shapes, counts


def _matmul_worker(shapes: dict, rows: int, threads: int | None, reps: int, start, results, dtype: str) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    gen, dt = torch.Generator().manual_seed(0), getattr(torch, dtype)
    mats = [(torch.randn(rows, i, generator=gen).to(dt), torch.randn(o, i, generator=gen).to(dt),
             torch.randn(rows, o, generator=gen).to(dt), n) for (i, o), n in shapes.items()]
    for x, w, dy, _ in mats:  # warm-up: first-touch pages, oneDNN/MKL kernels chosen
        x @ w.T, dy @ w
    start.wait()
    flop = seconds = 0.0
    for _ in range(reps):
        for x, w, dy, n in mats:  # time each shape, weight it by how often the model has it
            t = time.perf_counter()
            x @ w.T
            dy @ w
            seconds += n * (time.perf_counter() - t)
            flop += n * 4 * rows * w.numel()
    results.put((flop, seconds, torch.get_num_threads()))


def matmul_limit(shapes: Counter, rows: int, procs: int, threads: int | None, reps: int = 3,
                 dtype: str = "float32") -> dict:
    """Matmul GFLOP/s at the model's shapes: `procs` concurrent processes of `threads` threads each (None:
    torch's default), their aggregate. Each in a fresh process, so no thread setting leaks."""
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(procs), ctx.Queue()
    env = os.environ.pop("OMP_NUM_THREADS", None)  # the worker sets its threads itself
    workers = [ctx.Process(target=_matmul_worker, args=(dict(shapes), rows, threads, reps, start, results, dtype))
               for _ in range(procs)]
    for w in workers:
        w.start()
    got = [results.get() for _ in workers]
    for w in workers:
        w.join()
    if env is not None:
        os.environ["OMP_NUM_THREADS"] = env
    # Each process's rate over its own time, summed: they ran side by side from the same barrier.
    return {"procs": procs, "threads_each": got[0][2], "rows": rows, "dtype": dtype,
            "gflop_per_s": round(sum(f / s for f, s, _ in got) / 1e9, 1)}


def ceiling(shapes: Counter, profile_rows: int, reps: int) -> dict:
    """This machine's best sustained matmul rate at the model's shapes: every launch shape at the profile's rows
    and at 1024 rows in float32, the best of them; bfloat16 beside it (fewer shapes: it is slow where the CPU has
    no bf16 instructions)."""
    cores = len(os.sched_getaffinity(0))
    launches = sorted({(1, 1), (1, cores), (cores, 1)})
    fp32 = [matmul_limit(shapes, rows, procs, threads, reps)
            for procs, threads in launches for rows in sorted({profile_rows, 1024})]
    bf16 = [matmul_limit(shapes, profile_rows, procs, threads, reps, "bfloat16")
            for procs, threads in sorted({(1, cores), (cores, 1)})]
    return {dtype: {"gflop_per_s": max(t["gflop_per_s"] for t in tried),
                    "at": max(tried, key=lambda t: t["gflop_per_s"]), "tried": tried}
            for dtype, tried in (("float32", fp32), ("bfloat16", bf16))}


def dtypes(overrides: list[str] | None) -> tuple[str, str]:
    """The dtypes a variant's matmuls ran in: (body, output layer). The output layer is bfloat16 where
    train.bf16_output_layer hands it to toolkit/train/swift_plugin.py and this CPU multiplies bfloat16 natively."""
    if overrides is None:  # plain swift sft: the model's float32 throughout
        return "float32", "float32"
    t = load_recipe(RECIPE, "cpu", overrides).train
    body = "bfloat16" if t.torch_dtype == "bfloat16" else "float32"
    return body, "bfloat16" if body == "bfloat16" or (t.bf16_output_layer and cpu_has_bf16()) else "float32"


def cpu_flags() -> list[str]:
    """The vector extensions that decide which matmuls are fast here."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return sorted(set(line.split(":", 1)[1].split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=64,
                        help="sequences each variant trains on after its first (warm-up) step")
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--only", action="append", help="run only these variants (by name)")
    parser.add_argument("--matmul-reps", type=int, default=3, help="timed passes over the shapes per limit")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_speed.json"))
    args = parser.parse_args()

    run_start = time.perf_counter()
    os.environ.pop("OMP_NUM_THREADS", None)  # the defaults run gets torch's default threads; profiles set theirs
    work = Path(tempfile.mkdtemp(prefix="xtk-train-speed-"))
    base = load_recipe(RECIPE, "cpu", [f"data.train_records={args.records}", "data.val_fraction=0"])
    model = resolve_model(base.student.model, base.student.model_type, base.student.template)
    stats = run_prepare(base, gold_records(base), work / "data", model.ref)
    mean_tokens = stats["tokens"]["mean"]
    shapes, params = linear_shapes(model.ref)
    flop_per_token = 4 * params["matmul"]

    runs = {}
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        out = work / re.sub(r"\W+", "-", name)
        if overrides is None:  # ms-swift's own defaults: batch 1 x accumulation 16 = 16 sequences a step
            per_step, procs, threads, batch = 16, 1, None, 1
            steps = 1 + math.ceil(args.sequences / per_step)
            argv = defaults_argv(model, work / "data" / "train.jsonl", out, steps, "checkpointing off" not in name)
            env = {}
        else:
            recipe = load_recipe(RECIPE, "cpu", overrides)
            t = recipe.train
            per_step = t.per_device_train_batch_size * t.gradient_accumulation_steps * t.nproc_per_node
            procs, threads, batch = t.nproc_per_node, t.omp_num_threads, t.per_device_train_batch_size
            steps = 1 + math.ceil(args.sequences / per_step)
            # Speed only: no validation split, so no early stopping (it needs one) and no checkpoints.
            recipe = load_recipe(RECIPE, "cpu", [*overrides, f"train.max_steps={steps}", "train.early_stop_evals=null",
                                                 "train.save_steps=100000", "train.logging_steps=1"])
            argv = sft_argv(recipe, model, work / "data" / "train.jsonl", None, out)
            env = sft_env(recipe)
            env.pop(WITHOUT_ENV.get(name), None)
        console.print(f"[bold]{name}[/]: {steps} steps of {per_step} sequences")
        start = time.perf_counter()
        try:
            run_logged(counting_tokens(argv), out / "train.log", env=env, what=name)
            rate = step_rate(read_log(out))
        except Exception as exc:  # a variant that cannot run here is a result too
            runs[name] = {"error": str(exc)[-2000:]}
            console.print(f"  failed: {exc}")
            continue
        runs[name] = {"sequences_per_step": per_step, **rate, "wall_s": round(time.perf_counter() - start, 1),
                      "overrides": overrides, "env": {k: v for k, v in env.items() if k != "MASTER_PORT"},
                      "launch": {"procs": procs, "threads_each": threads, "batch_per_proc": batch}}
        console.print(f"  {rate['tokens_per_s']} real tokens/s ({rate['seconds_per_step']} s/step)")

    # The ceiling, measured after the trainings (nothing else running). A variant's executed matmuls take at least
    # their FLOP at the ceiling of the dtype they ran in: that bound over its measured time is its fraction.
    profile = load_recipe(RECIPE, "cpu").train
    profile_rows = round(profile.per_device_train_batch_size * mean_tokens)
    console.print("matmul ceiling")
    top = ceiling(shapes, profile_rows, args.matmul_reps)
    baseline = runs.get("swift defaults", {}).get("tokens_per_s")
    body = params["matmul"] - params["lm_head"]
    for name, r in runs.items():
        if "tokens_per_s" not in r:
            continue
        body_dtype, head_dtype = dtypes(VARIANTS[name])
        flop = {"body": 4 * body * r["padded_tokens"], "lm_head": 4 * params["lm_head"] * r["logit_rows"]}
        bound_s = (flop["body"] / (top[body_dtype]["gflop_per_s"] * 1e9)
                   + flop["lm_head"] / (top[head_dtype]["gflop_per_s"] * 1e9))
        r["matmul_dtypes"] = {"body": body_dtype, "lm_head": head_dtype}
        r["train_gflop_per_s"] = round(r["tokens_per_s"] * flop_per_token / 1e9, 1)
        r["executed_gflop_per_s"] = round(sum(flop.values()) / r["measured_seconds"] / 1e9, 1)
        r["executed_fraction_of_ceiling"] = round(bound_s / r["measured_seconds"], 3)
        if baseline:
            r["ratio_vs_swift_defaults"] = round(r["tokens_per_s"] / baseline, 2)

    write_json(args.out, {
        **provenance(one_run=True),
        "what": f"swift sft LoRA training speed of {base.student.model} (the cpu profile's student) on logistics_zh "
                "records, each variant in this run; tokens = real (non-padding) tokens fed to the model",
        "cpu_flags": cpu_flags(),
        "records": stats["train"], "tokens_per_sequence": stats["tokens"],
        "sequences_measured_per_variant": args.sequences,
        "parameters": {**params, "counted": "matmul (every nn.Linear weight; the tied embedding/lm_head matrix "
                                            "once, as the lm_head matmul; the embedding lookup is no matmul)"},
        "flop_per_token": flop_per_token,
        "flop_per_token_rule": "4 x counted parameters (LoRA: forward 2, input gradients 2)",
        "executed_flop_rule": "4 x (counted parameters - lm_head) x padded tokens + 4 x lm_head x output-layer rows "
                              "(ms-swift's use_logits_to_keep computes logits only from the first answer token on)",
        "ceiling": top,
        "fraction_rule": "the variant's executed matmul FLOP, each part (body, lm_head) at the ceiling of the dtype it "
                         "ran in, as seconds, over the seconds it measured: 1 would be matmuls at the ceiling and "
                         "nothing else",
        "fractions_at_most_1": all(r["executed_fraction_of_ceiling"] <= 1 for r in runs.values() if "tokens_per_s" in r),
        "goals": {"ratio_vs_swift_defaults": 2.0, "fraction_of_ceiling": 0.5},
        "results": runs,
        "run_wall_s": round(time.perf_counter() - run_start, 1),
    })
    for name, r in runs.items():
        print(f"{name:42s} {r.get('tokens_per_s', r.get('error'))} tok/s  x{r.get('ratio_vs_swift_defaults', '-')}"
              f"  {r.get('executed_fraction_of_ceiling', '-')} of the ceiling")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
