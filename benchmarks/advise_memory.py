"""`xtk advise`'s LoRA-training memory estimate against the peak memory of a real `swift sft` (logistics_zh, cpu).

    nice -n 19 .venv/bin/python benchmarks/advise_memory.py [--steps 8] [--out benchmarks/results/advise_memory.json]

The estimate is advise's for the cpu profile's student (the embedded Gemma 3 270M as shipped) under that profile,
computed by `xtk advise`'s own code: every sequence train.max_length long. The measurement is a real `swift sft` of
that profile as it is (its processes, threads, batch, max_length, dtype and LoRA settings; only max_steps cut short)
on the recipe's longest records, so that every batch is near the longest the data makes (train.max_length may be
longer: settings.record_tokens says how long they are). Peak memory: the sum over the command's processes (the
`swift` launcher, torchrun and each worker) of each one's own peak resident set (VmHWM, what `/usr/bin/time -v`
reports per process), read from /proc four times a second; the peak of their summed RSS at any one moment is
recorded beside it. The framework's fixed memory, which the estimate takes as constants, is measured again here (a
Python importing what each process imports, its VmHWM), so that a change of torch or ms-swift shows.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import ROOT, provenance  # noqa: E402

sys.path.insert(0, str(ROOT))
from toolkit.choose import advise  # noqa: E402
from toolkit.io.jsonl import read_jsonl, write_json, write_jsonl  # noqa: E402
from toolkit.model.models import resolve_model  # noqa: E402
from toolkit.data.prepare import gold_records, run_prepare, token_lengths  # noqa: E402
from toolkit.io.progress import Bar  # noqa: E402
from toolkit.task.recipe import load_recipe  # noqa: E402
from toolkit.io.runner import run_logged  # noqa: E402
from toolkit.train.swift import read_log, sft_argv, sft_env, stale_trainers  # noqa: E402

RECIPE = ROOT / "recipes" / "logistics_zh.yaml"
GIB = 1024 ** 3
# What each process of `swift sft` imports before it does anything of its own (swift/cli/main.py, torchrun,
# swift/cli/sft.py), against the constant advise uses for it.
IMPORTS = {
    "swift launcher": ("import swift.cli.main", advise.SWIFT_LAUNCHER_GIB),
    "torchrun": ("import torch.distributed.run", advise.TORCHRUN_GIB),
    "training worker": ("from swift.pipelines import sft_main", advise.WORKER_FIXED_GIB),
}


def status_kib(pid: int, *keys: str) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])
    return out


def import_peak_gib(code: str) -> float:
    """Peak RSS of a fresh Python that runs `code` (the venv's, as `swift` runs)."""
    probe = f"{code}\nprint(open('/proc/self/status').read())"
    text = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return round(int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024 ** 2, 3)


class TreeSampler(threading.Thread):
    """Every process training into output_dir, sampled from /proc: each one's peak RSS (VmHWM) and role, and the
    summed RSS at every sample."""

    def __init__(self, output_dir: Path, every_s: float = 0.25):
        super().__init__(daemon=True)
        self.output_dir, self.every_s = output_dir, every_s
        self.procs: dict[int, dict] = {}
        self.sums: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            total = 0
            for pid in stale_trainers(self.output_dir):
                try:
                    s = status_kib(pid, "VmHWM", "VmRSS", "PPid")
                    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except (OSError, ValueError):  # gone meanwhile
                    continue
                p = self.procs.setdefault(pid, {"ppid": s["PPid"], "args": args, "hwm_kib": 0})
                p["hwm_kib"] = max(p["hwm_kib"], s["VmHWM"])
                total += s["VmRSS"]
            self.sums.append(total / 1024 ** 2)
            time.sleep(self.every_s)

    def roles(self) -> list[dict]:
        """Each process's role and peak; a fork (same command line as its parent: a helper a worker started) is
        kept apart, as its pages are its parent's until written."""
        out = []
        for pid, p in sorted(self.procs.items()):
            text = b" ".join(p["args"]).decode(errors="replace")
            parent = self.procs.get(p["ppid"])
            if parent is not None and parent["args"] == p["args"]:
                role = "fork of a worker"
            elif "torch.distributed.run" in text:
                role = "torchrun"
            elif text.split()[1:2] and text.split()[1].endswith("/swift"):
                role = "swift launcher"
            else:
                role = "training worker"
            out.append({"pid": pid, "role": role, "peak_rss_gib": round(p["hwm_kib"] / 1024 ** 2, 3)})
        return out


def longest_rows(recipe, model, work: Path, n: int) -> tuple[Path, list[int]]:
    """The recipe's n longest training rows (by the student's tokens), prepared as `xtk prepare` writes them."""
    run_prepare(recipe, gold_records(recipe), work / "data", model.ref)
    rows = list(read_jsonl(work / "data" / "train.jsonl"))
    lengths = token_lengths(recipe, model.ref, rows)
    order = sorted(range(len(rows)), key=lambda i: -lengths[i])[:n]
    path = work / "longest.jsonl"
    write_jsonl(path, [rows[i] for i in order])
    return path, [lengths[i] for i in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "advise_memory.json"))
    args = parser.parse_args()

    recipe = load_recipe(RECIPE, "cpu", [f"train.max_steps={args.steps}", "train.save_steps=100000"])
    t = recipe.train
    model = resolve_model(recipe.student.model, recipe.student.model_type, recipe.student.template)
    # advise's own figure, as `xtk advise` computes it for this student on this machine (the bf16 output layer's
    # copy included where the CPU makes one)
    sample, _ = advise.sample_rows(recipe)
    candidate = advise.assess(recipe.student.model, recipe, advise.labelled_rows(recipe), 1e6, None, sample)
    estimate = candidate.training

    imports = {}
    with Bar("framework imports", total=len(IMPORTS)) as bar:
        for role, (code, constant) in IMPORTS.items():
            imports[role] = {"code": code, "peak_rss_gib": import_peak_gib(code), "advise_constant_gib": constant}
            bar.update(advance=1, note=role)

    rows_needed = args.steps * t.per_device_train_batch_size * t.nproc_per_node * t.gradient_accumulation_steps
    with tempfile.TemporaryDirectory(prefix="xtk-advise-memory-") as tmp:
        work = Path(tmp)
        data = load_recipe(RECIPE, "cpu", ["data.train_records=400", "data.val_fraction=0"])
        train_file, lengths = longest_rows(data, model, work, rows_needed)
        out = work / "out"
        sampler = TreeSampler(out)
        sampler.start()
        start = time.perf_counter()
        try:
            with Bar("swift sft", total=args.steps) as bar:
                run_logged(sft_argv(recipe, model, train_file, None, out), out / "train.log", env=sft_env(recipe),
                           poll=lambda: bar.update(sum("loss" in r for r in read_log(out))))
        finally:
            sampler.done.set()
            sampler.join()
        wall = time.perf_counter() - start
        steps = sum("loss" in r for r in read_log(out))

    procs = sampler.roles()
    measured = round(sum(p["peak_rss_gib"] for p in procs if p["role"] != "fork of a worker"), 2)
    ratio = round(estimate.total / measured, 3)
    result = {
        **provenance(one_run=True),
        "what": f"xtk advise's LoRA-training memory for {recipe.student.model} under logistics_zh's cpu profile, "
                "against the peak RSS of a real swift sft of that profile (sum over its processes of each one's VmHWM)",
        "settings": {"nproc_per_node": t.nproc_per_node, "omp_num_threads": t.omp_num_threads,
                     "per_device_train_batch_size": t.per_device_train_batch_size, "max_length": t.max_length,
                     "torch_dtype": t.torch_dtype, "lora_rank": t.lora_rank, "gradient_checkpointing":
                     t.gradient_checkpointing, "steps": steps, "records": len(lengths),
                     "record_tokens": {"max": max(lengths), "min": min(lengths)}, "wall_s": round(wall, 1)},
        "estimate_gib": estimate.total,
        "estimate_sequence_tokens": t.max_length,
        "estimate": asdict(estimate),
        "measured_peak_gib": measured,
        "measured_peak_of_summed_rss_gib": round(max(sampler.sums), 2),
        "processes": procs,
        "ratio_estimate_to_measured": ratio,
        "within_30_percent": abs(ratio - 1) <= 0.30,
        "framework_imports": imports,
    }
    write_json(args.out, result)
    print(f"estimate {estimate.total} GiB, measured peak {measured} GiB (sum of the processes' peaks; summed RSS "
          f"peaked at {result['measured_peak_of_summed_rss_gib']}), ratio {ratio}: "
          f"{'within' if result['within_30_percent'] else 'NOT within'} 30%")


if __name__ == "__main__":
    main()
