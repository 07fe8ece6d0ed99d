"""The tutorial flow on one GPU: logistics_zh's `gpu` profile (Qwen3-0.6B), expected on paper and measured.

    .venv/bin/python benchmarks/gpu_flow.py [key=value ...]

Runs `xtk run recipes/logistics_zh.yaml --profile gpu` into runs/logistics_zh/gpu_flow (as recipe_cpu.py runs a
profile: resumable, finished stages reused only under the same settings) and writes
benchmarks/results/gpu_flow.json whole: what recipe_cpu.py records for a run (provenance, figures with
intervals, minutes per stage, the paired test of the student against the rules), the GPU as nvidia-smi names
it, and each stage's expected minutes (`expected_minutes`: docs/gpu.md's estimate, from the inputs in `PAPER`)
beside its measured minutes. The report and its charts are copied to benchmarks/results/gpu_flow/.

A machine without a GPU (no working `nvidia-smi`) exits 2 and writes nothing. Labelling is measured only where
$DASHSCOPE_API_KEY is set (the data stage then asks the teacher; without it the generator's gold labels are
used and the teacher is not evaluated): the results file says which.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# The inputs of docs/gpu.md's estimate, each with where it comes from (the doc gives the links).
PAPER = {
    "pool_records": 4000,  # datasets/logistics_zh/pool.jsonl: the teacher labels every pool record
    "test_records": 800,  # test.jsonl + test_unseen.jsonl, 400 each
    "teacher_concurrency": 16,  # recipes/logistics_zh.yaml, teacher.concurrency
    "teacher_latency_s": 3.0,  # assumption: one qwen3-235b-a22b request, ~380 tokens in, ~64 out
    "params": 595_984_384,  # Qwen3-0.6B's matmul weights: 28 layers x 15,728,640 + the 151,936 x 1,024 output layer
    "tokens_per_epoch": 388_766,  # the prepared 1,900 training rows, Qwen's tokenizer, padded to batches of 20
    "epochs": 10,  # train.num_train_epochs
    "flop_per_param_token": 6,  # LoRA: forward 2 + input gradients 2 + the checkpointed forward again 2
    "peak_tflops": 989.4,  # bf16 dense, H100 SXM and H200 alike (the same GH100 compute)
    "utilisation": 0.35,
    "train_overhead_s": 60,  # assumption: swift sft's start, model load, tokenising, 3 evaluations, saves
    "merge_s": 30,  # assumption: swift export of a 0.6B model
    "vllm_start_s": 60,  # vLLM's start: load, torch.compile, CUDA graphs (vllm-project/vllm#20264: ~59 s)
    "vllm_output_tokens_per_s": 12_148,  # Qwen3-0.6B on one H100: 94.91 req/s x 128 output tokens
    "student_answer_tokens": 64,  # the gold answers' mean, Qwen's tokenizer
    "base_answer_tokens": 256,  # eval.max_new_tokens: the base model may write to the limit
}
TEACHER_STAGES = ("data", "eval_teacher")  # on paper at the teacher's pace; measured only with a teacher


def expected_minutes(p: dict = PAPER) -> dict:
    """Each stage's expected minutes on one H100 or one H200 (the same bf16 peak, so the same estimate), and the
    flow's with a teacher and without one (gold labels, no teacher evaluation)."""
    seconds = {
        "data": p["pool_records"] * p["teacher_latency_s"] / p["teacher_concurrency"],
        "eval_base": p["vllm_start_s"] + p["test_records"] * p["base_answer_tokens"] / p["vllm_output_tokens_per_s"],
        "train": p["flop_per_param_token"] * p["params"] * p["tokens_per_epoch"] * p["epochs"]
        / (p["peak_tflops"] * 1e12 * p["utilisation"]) + p["train_overhead_s"],
        "merge": p["merge_s"],
        "eval_student": p["vllm_start_s"]
        + p["test_records"] * p["student_answer_tokens"] / p["vllm_output_tokens_per_s"],
        "eval_teacher": p["test_records"] * p["teacher_latency_s"] / p["teacher_concurrency"],
    }
    stages = {k: round(v / 60, 2) for k, v in seconds.items()}
    return {"stages": stages, "with_teacher": round(sum(seconds.values()) / 60, 1),
            "without_teacher": round(sum(v for k, v in seconds.items() if k not in TEACHER_STAGES) / 60, 1)}


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
        "paper": {"inputs": PAPER, "expected_minutes": paper},
        "expected_vs_measured": {
            name: {"expected": expected,
                   "measured": result["stage_minutes"].get(name) if teacher or name not in TEACHER_STAGES else None}
            for name, expected in paper["stages"].items()},
    }
    save("gpu_flow", result, run_dir)


if __name__ == "__main__":
    main()
