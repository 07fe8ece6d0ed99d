"""The tutorial flow on one GPU: logistics_zh's `gpu` profile (Qwen3-0.6B), expected on paper and measured.

    .venv/bin/python benchmarks/gpu_flow.py [key=value ...]

Runs `xtk run recipes/logistics_zh.yaml --profile gpu` into runs/logistics_zh/gpu_flow (as recipe_cpu.py runs a
profile: resumable, finished stages reused only under the same settings) and writes
benchmarks/results/gpu_flow.json whole: what recipe_cpu.py records for a run (provenance, figures with
intervals, minutes per stage, the paired test of the student against the rules), the GPU as nvidia-smi names
it, and each stage's expected minutes (`expected_minutes`: docs/gpu.md's estimate, from the inputs in `INPUTS`;
`expected_range`: the least and most minutes their ranges allow) beside its measured minutes. The report and its charts are copied to benchmarks/results/gpu_flow/.

A machine without a GPU (no working `nvidia-smi`) exits 2 and writes nothing. Labelling is measured only where
$DASHSCOPE_API_KEY is set (the data stage then asks the teacher; without it the generator's gold labels are
used and the teacher is not evaluated): the results file says which.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

class Input(NamedTuple):
    """One input of docs/gpu.md's estimate: the value the expected minutes use, where it comes from, and the range
    the estimate's range is computed from (a figure read from this repository has no range: low = high = value)."""

    value: float
    source: str  # "repository": read from this repository's files; "cited": a published figure; "assumption": ours
    where: str  # the file, the link (docs/gpu.md quotes it), or why this value and this range
    low: float | None = None
    high: float | None = None

    @property
    def range(self) -> tuple[float, float]:
        return (self.value if self.low is None else self.low, self.value if self.high is None else self.high)


SOURCES = ("repository", "cited", "assumption")
# The inputs of docs/gpu.md's estimate. None is measured on a GPU yet, and no results file holds one: each is read
# from this repository, cited from a published benchmark (docs/gpu.md links it), or our assumption with its range.
INPUTS = {
    "pool_records": Input(4000, "repository", "datasets/logistics_zh/pool.jsonl: the teacher labels every record"),
    "test_records": Input(800, "repository", "test.jsonl + test_unseen.jsonl, 400 each"),
    "teacher_concurrency": Input(16, "repository", "recipes/logistics_zh.yaml, teacher.concurrency"),
    # no published latency of DashScope's qwen3-235b-a22b: bracketed by published first-token times and decode
    # speeds of self-hosted 235B-A22B deployments for ~380 tokens in and ~64 out (docs/gpu.md)
    "teacher_latency_s": Input(3.0, "assumption", "one non-thinking request of ~380 tokens in, ~64 out", 1.0, 6.0),
    "params": Input(595_984_384, "cited", "Qwen3-0.6B's model card: 28 layers x 15,728,640 + the 151,936 x 1,024 "
                    "output layer"),
    "tokens_per_epoch": Input(388_766, "repository", "the prepared 1,900 training rows counted with Qwen's "
                              "tokenizer (tests/qwen3_fixture.py), padded to batches of 20"),
    "epochs": Input(10, "repository", "recipes/logistics_zh.yaml, train.num_train_epochs"),
    "flop_per_param_token": Input(6, "cited", "LoRA: forward 2 + input gradients 2 + the checkpointed forward 2"),
    "peak_tflops": Input(989.4, "cited", "bf16 dense, H100 SXM and H200 alike (the same GH100 compute)"),
    "utilisation": Input(0.35, "assumption", "of the dense peak, for a 0.6B model's small matrix products", 0.10,
                         0.40),
    "train_overhead_s": Input(60, "assumption", "swift sft's start, model load, tokenising, 3 evaluations, saves",
                              30, 180),
    "merge_s": Input(30, "assumption", "swift export's merge of a 0.6B LoRA", 15, 90),
    "vllm_start_s": Input(60, "cited", "vllm-project/vllm#20264: engine up in 34 s (compile cache), first answer "
                          "~59 s; 90 s assumed for a first start that compiles", 34, 90),
    "vllm_output_tokens_per_s": Input(12_148, "cited", "kvcached#331: Qwen3-0.6B, one H100, 94.91 req/s x 128 "
                                      "tokens; nano-vllm-triton#1: 8,588 on an A800, the floor", 8_588, 12_148),
    "student_answer_tokens": Input(64, "repository", "the 800 test records' gold answers, Qwen's tokenizer"),
    "base_answer_tokens": Input(256, "assumption", "eval.max_new_tokens; a base model that stops after the JSON "
                                "writes ~64", 64, 256),
}
PAPER = {name: i.value for name, i in INPUTS.items()}
TEACHER_STAGES = ("data", "eval_teacher")  # on paper at the teacher's pace; measured only with a teacher


def stage_seconds(p: dict) -> dict[str, float]:
    """Each stage's seconds on one H100 or one H200 (the same bf16 peak, so the same estimate)."""
    return {
        "data": p["pool_records"] * p["teacher_latency_s"] / p["teacher_concurrency"],
        "eval_base": p["vllm_start_s"] + p["test_records"] * p["base_answer_tokens"] / p["vllm_output_tokens_per_s"],
        "train": p["flop_per_param_token"] * p["params"] * p["tokens_per_epoch"] * p["epochs"]
        / (p["peak_tflops"] * 1e12 * p["utilisation"]) + p["train_overhead_s"],
        "merge": p["merge_s"],
        "eval_student": p["vllm_start_s"]
        + p["test_records"] * p["student_answer_tokens"] / p["vllm_output_tokens_per_s"],
        "eval_teacher": p["test_records"] * p["teacher_latency_s"] / p["teacher_concurrency"],
    }


def totals(seconds: dict[str, float]) -> dict[str, float]:
    """The flow's minutes with a teacher and without one (gold labels, no teacher evaluation)."""
    return {"with_teacher": round(sum(seconds.values()) / 60, 1),
            "without_teacher": round(sum(v for k, v in seconds.items() if k not in TEACHER_STAGES) / 60, 1)}


def expected_minutes(p: dict = PAPER) -> dict:
    """Each stage's expected minutes, and the flow's with a teacher and without one."""
    seconds = stage_seconds(p)
    return {"stages": {k: round(v / 60, 2) for k, v in seconds.items()}, **totals(seconds)}


def expected_range(inputs: dict[str, Input] = INPUTS) -> dict:
    """The least and the most minutes each stage and each total can take with every input anywhere in its range:
    every stage grows or shrinks with each input alone, so the bounds lie at corners of the ranges, all tried."""
    ranged = [name for name, i in inputs.items() if i.range[0] != i.range[1]]
    corners = [stage_seconds({**{n: i.value for n, i in inputs.items()},
                              **{n: inputs[n].range[pick] for n, pick in zip(ranged, picks)}})
               for picks in itertools.product((0, 1), repeat=len(ranged))]
    stages = {k: [round(min(c[k] for c in corners) / 60, 2), round(max(c[k] for c in corners) / 60, 2)]
              for k in corners[0]}
    flows = [totals(c) for c in corners]
    return {"stages": stages, **{k: [min(f[k] for f in flows), max(f[k] for f in flows)] for k in flows[0]}}


def gpu() -> dict | None:
    """The GPU as nvidia-smi names it, or None where there is none (no nvidia-smi, or it finds no device)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not lines:
        return None
    name, memory, driver = (s.strip() for s in lines[0].split(","))
    return {"name": name, "memory": memory, "driver": driver, "count": len(lines)}


def main() -> None:
    found = gpu()
    if found is None:
        print("gpu_flow.py: no GPU here (`nvidia-smi` is missing or finds no device); it measures the gpu profile "
              "on a GPU machine (docs/gpu.md). Nothing written.", file=sys.stderr)
        sys.exit(2)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from recipe_cpu import ROOT, run, save

    run_dir = ROOT / "runs" / "logistics_zh" / "gpu_flow"
    result = run("logistics_zh", sys.argv[1:], run_dir, profile="gpu")
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    source = stages.get("data", {}).get("source")
    teacher = bool(source and source.startswith("teacher"))  # else gold labels: the teacher's stages on paper only
    paper = expected_minutes()
    result |= {
        "gpu": found,
        "data_source": source,
        "train_tokens": stages.get("prepare", {}).get("stats", {}).get("tokens"),  # by the student's own tokenizer
        "paper": {"inputs": PAPER, "expected_minutes": paper, "expected_range": expected_range(),
                  "sources": {name: i.source for name, i in INPUTS.items()}},
        "expected_vs_measured": {
            name: {"expected": expected,
                   "measured": result["stage_minutes"].get(name) if teacher or name not in TEACHER_STAGES else None}
            for name, expected in paper["stages"].items()},
    }
    save("gpu_flow", result, run_dir)


if __name__ == "__main__":
    main()
