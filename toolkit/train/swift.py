"""train: `swift sft` from a recipe, every hyper-parameter explicit, progress from logging.jsonl, resumable.

ms-swift silently picks hyper-parameters it is not given (gradient_accumulation_steps among them), so the
argv names all of them. The argv is a list, never a shell string, and is recorded in the manifest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from toolkit.data.prepare import check_messages_file
from toolkit.infer.head import check_head_file
from toolkit.io.errors import StageError
from toolkit.io.jsonl import cleared, own_folder
from toolkit.io.keys import digest, file_digest
from toolkit.io.locks import folder_lock
from toolkit.io.markers import OWNER, read_marker, write_marker
from toolkit.io.runner import run_logged
from toolkit.io.secrets import redact_argv, scrub_files, secret_arg_values
from toolkit.model.models import ResolvedModel
from toolkit.model.thinking import thinking_off
from toolkit.io.progress import Bar
from toolkit.task.recipe import Recipe

PLUGIN = Path(__file__).with_name("swift_plugin.py")
CALLBACK = "bf16_output_layer"  # the name toolkit/train/swift_plugin.py registers


def _flag(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def sft_argv(recipe: Recipe, model: ResolvedModel, train_file: Path, val_file: Path | None, output_dir: Path,
             resume_from: Path | None = None, num_labels: int | None = None) -> list[str]:
    """The `swift sft` command line (ms-swift 4.x names) for a recipe; with num_labels, a classification head
    (`--task_type seq_cls`) on rows of a user turn and a label index (toolkit/infer/head.py)."""
    t = recipe.train
    opts: dict[str, object] = {"model": model.ref}
    if model.model_type:
        opts["model_type"] = model.model_type
    if model.template:
        opts["template"] = model.template
    if thinking_off(model.model_type, model.template, model.ref):
        opts["enable_thinking"] = False  # hybrid-thinking students train on answers with thinking off
    if num_labels is not None:
        opts.update(task_type="seq_cls", num_labels=num_labels, problem_type="single_label_classification")
    opts.update(dataset=train_file, split_dataset_ratio=0)
    if val_file is not None:
        opts["val_dataset"] = val_file
    opts["tuner_type"] = t.tuner_type
    if t.tuner_type == "lora":
        opts.update(lora_rank=t.lora_rank, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                    target_modules=t.target_modules)
    opts.update(
        torch_dtype=t.torch_dtype, num_train_epochs=t.num_train_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type, warmup_ratio=t.warmup_ratio, weight_decay=t.weight_decay,
        max_length=t.max_length, truncation_strategy="delete", gradient_checkpointing=t.gradient_checkpointing,
        packing=t.packing, eval_strategy="steps" if val_file is not None else "no", eval_steps=t.eval_steps,
        save_steps=t.save_steps, save_total_limit=t.save_total_limit, logging_steps=t.logging_steps,
        dataloader_num_workers=t.dataloader_num_workers, dataset_num_proc=1, seed=t.seed, data_seed=t.seed,
        output_dir=output_dir, add_version=False, report_to="tensorboard",
    )
    if t.deepspeed:
        opts["deepspeed"] = t.deepspeed
    if t.nproc_per_node * t.nnodes > 1 and not _cuda():
        # Without it, accelerate sees no CUDA and no cpu flag and sets up no DDP: each process trains alone on
        # its shard of the data, no gradient is shared, and the saved model has seen half of it.
        opts["use_cpu"] = True
    if t.early_stop_evals is not None:
        opts.update(early_stop_interval=t.early_stop_evals, metric_for_best_model="loss", greater_is_better=False)
    if resume_from is not None:
        opts["resume_from_checkpoint"] = resume_from
    if t.bf16_output_layer:
        opts.update(external_plugins=PLUGIN, callbacks=CALLBACK)
    argv = ["swift", "sft"]
    for key, value in opts.items():
        argv += [f"--{key}", _flag(value)]
    return argv + list(t.extra_args)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Where this node meets the others, not what is trained: left out of train_key, so that every node of a
# multi-node run (and a re-run on another port) trains under one key.
RENDEZVOUS = ("NODE_RANK", "MASTER_ADDR", "MASTER_PORT")
# The launch settings that leave the trained model as it is: not part of the training key.
NOT_THE_MODEL = (*RENDEZVOUS, "GLIBC_TUNABLES")


# glibc serves every block over 32 MB (Gemma's logits: ~1 MB a token) with a fresh mmap and unmaps it when freed,
# so each step faults its buffers in again: the CPU trainers spent ~25% of their time in the kernel. Keeping freed
# memory in the heap (no mmap, no trimming) took a 16-step probe of the cpu profile from 6.3 to 5.3 s a step.
CPU_MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def cpu_malloc_tunables() -> str:
    """GLIBC_TUNABLES for CPU training: ours, then the caller's own (glibc lets the later setting win)."""
    own = os.environ.get("GLIBC_TUNABLES", "")
    return own if CPU_MALLOC in own else ":".join(filter(None, (CPU_MALLOC, own)))


def sft_env(recipe: Recipe) -> dict[str, str]:
    """The environment `swift sft` reads its launch from: threads, and torchrun's processes, nodes and rendezvous."""
    t = recipe.train
    env = {}
    if not _cuda():
        env["GLIBC_TUNABLES"] = cpu_malloc_tunables()
    if t.omp_num_threads:
        env["OMP_NUM_THREADS"] = str(t.omp_num_threads)
    if t.nnodes > 1:
        # Every node must name the same address and port, so the port is the recipe's (torchrun's 29500 unless
        # set), never one picked here.
        env.update(NPROC_PER_NODE=str(t.nproc_per_node), NNODES=str(t.nnodes), NODE_RANK=str(t.node_rank),
                   MASTER_ADDR=t.master_addr, MASTER_PORT=str(t.master_port or 29500))
    elif t.nproc_per_node > 1:
        env["NPROC_PER_NODE"] = str(t.nproc_per_node)
        # torchrun's default port 29500 is shared by every job on the machine: a second DDP training would
        # join the first one's rendezvous and stall both. A port of its own unless the user chose one.
        env["MASTER_PORT"] = str(t.master_port or os.environ.get("MASTER_PORT") or free_port())
    return env


def read_log(output_dir: Path) -> list[dict]:
    """ms-swift's logging.jsonl: one dict per logging step, eval, and a final summary."""
    path = output_dir / "logging.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written right now
            pass
    return rows


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (trainer_state.json is written last), by step."""
    found = [p for p in output_dir.glob("checkpoint-*") if re.fullmatch(r"checkpoint-\d+", p.name)
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def finished_checkpoint(output_dir: Path, best: bool = False) -> Path | None:
    """The checkpoint a finished run's summary line in logging.jsonl names: the last, or with `best` the one of
    lowest eval loss (the last where none was evaluated)."""
    for row in reversed(read_log(output_dir)):
        if row.get("last_model_checkpoint"):
            path = Path(row.get("best_model_checkpoint") if best and row.get("best_model_checkpoint")
                        else row["last_model_checkpoint"])
            return path if path.is_dir() else None
    return None


def rows_trained(output_dir: Path) -> int | None:
    """How many training rows ms-swift kept after encoding, from the summary line of logging.jsonl."""
    for row in reversed(read_log(output_dir)):
        m = re.search(r"size=(\d+)", str(row.get("train_dataset", "")))
        if m:
            return int(m.group(1))
    return None


def training_minutes(output_dir: Path) -> float | None:
    """How long ms-swift's last (or only) training session into output_dir trained, from its summary line; None
    where it has not finished. A resumed training counts only the session that finished it."""
    for row in reversed(read_log(output_dir)):
        for entry in reversed([row, *row.get("log_history", [])]):
            if "train_runtime" in entry:
                return round(float(entry["train_runtime"]) / 60, 1)
    return None


def stale_trainers(output_dir: Path) -> list[int]:
    """Processes still training into output_dir. torchrun starts its workers in sessions of their own, so a
    `kill -9` of xtk (and of its process group) leaves them training, rotating away the checkpoint a re-run
    would resume from."""
    target, pids = str(output_dir.resolve()), []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []  # None: not ours to read, or a zombie
        if "--output_dir" in args[:-1] and args[args.index("--output_dir") + 1] == target:
            pids.append(proc.pid)
    return pids


def stop_stale_trainers(output_dir: Path, grace_s: float = 30.0) -> None:
    pids = stale_trainers(output_dir)
    if not pids:
        return
    print(f"xtk: stopping {len(pids)} processes still training into {output_dir} for an xtk that is gone "
          f"(pids {' '.join(map(str, pids))})", file=sys.stderr)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while (left := stale_trainers(output_dir)) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not left:
            return
    raise StageError(f"processes {pids} keep training into {output_dir} and would not stop")


@contextmanager
def training_lock(output_dir: Path) -> Iterator[None]:
    """One xtk per training folder. Holding the lock also proves that whatever else trains there is stale.
    The lock sits beside the folder, not in it, so that a folder of other settings can be moved aside."""
    with folder_lock(output_dir.parent, "training", f".{output_dir.name}.lock", shown=output_dir):
        stop_stale_trainers(output_dir)
        yield


def train_key(recipe: Recipe, model: ResolvedModel, train_file: Path, val_file: Path | None,
              num_labels: int | None = None) -> str:
    """What makes a trained adapter what it is: the whole `swift sft` command (model, type, template, every
    hyper-parameter), its environment and the bytes of the data. A folder trained under another key holds
    another model."""
    argv = sft_argv(recipe, model, Path("TRAIN"), Path("VAL") if val_file else None, Path("OUT"),
                    num_labels=num_labels)
    argv = [arg if arg != str(PLUGIN) else PLUGIN.name for arg in argv]  # the same wherever xtk is installed
    env = {k: v for k, v in sft_env(recipe).items() if k not in NOT_THE_MODEL}
    data = [file_digest(f) for f in (train_file, val_file) if f is not None]
    return digest([argv, env, data], 32)


def trained_checkpoint(output_dir: Path, key: str, best: bool = False) -> Path | None:
    """The finished checkpoint (the best with `best`) in output_dir if it was trained under `key`, else None."""
    return finished_checkpoint(output_dir, best) if _trained_under(output_dir, key) else None


def _trained_under(output_dir: Path, key: str) -> bool:
    return (read_marker(output_dir, OWNER) or {}).get("key") == key


def _move_aside(output_dir: Path) -> Path:
    aside = output_dir.with_name(f"{output_dir.name}.superseded-{time.strftime('%Y%m%d-%H%M%S')}")
    output_dir.rename(aside)
    return aside


@dataclass
class TrainResult:
    checkpoint: Path
    argv: list[str]
    resumed_from: Path | None
    train_rows: int | None
    key: str
    moved_aside: Path | None = None


class _ProgressFeed:
    """Feeds the progress bar (step, loss, ETA) from logging.jsonl while swift runs."""

    def __init__(self, output_dir: Path, bar: Bar):
        self.output_dir, self.bar = output_dir, bar
        self.seen = 0

    def __call__(self) -> None:
        rows = read_log(self.output_dir)
        for row in rows[self.seen:]:
            step = row.get("global_step/max_steps")
            note = next((f"{k} {row[k]:.4f}" for k in ("loss", "eval_loss") if k in row), None)
            if step:
                done, total = (int(x) for x in step.split("/"))
                self.bar.update(done, total=total, note=note)
        self.seen = len(rows)


def run_train(recipe: Recipe, model: ResolvedModel, data_dir: Path, output_dir: Path,
              fresh: bool = False, num_labels: int | None = None) -> TrainResult:
    """Train into output_dir: skip when it holds a finished training of these very settings, resume an
    unfinished one of them, and otherwise (other settings, or `fresh`) move the folder aside and start over.
    With num_labels, a classification head on data_dir's head rows (toolkit/infer/head.py)."""
    train_file, val_file = data_dir / "train.jsonl", data_dir / "val.jsonl"
    check = check_messages_file if num_labels is None else check_head_file
    n_train = check(recipe, train_file)
    has_val = val_file.is_file() and val_file.stat().st_size > 0
    if has_val:
        check(recipe, val_file)
    best = recipe.train.early_stop_evals is not None  # the lowest eval loss is merged, not the last
    if best and not has_val:
        raise StageError(f"train.early_stop_evals needs a validation split to evaluate, and {val_file} is empty: "
                         "set data.val_fraction above 0")
    key = train_key(recipe, model, train_file, val_file if has_val else None, num_labels)
    with training_lock(output_dir):
        aside = None
        same = _trained_under(output_dir, key)
        if output_dir.is_dir() and any(output_dir.iterdir()) and (fresh or not same):
            aside = _move_aside(output_dir)
            why = "a re-train was asked for" if same else "it was trained with other settings or data"
            print(f"xtk: {output_dir} moved to {aside.name} ({why}); training afresh", file=sys.stderr)
        done = finished_checkpoint(output_dir, best) if not aside else None
        if done is not None:
            return TrainResult(done, [], None, None, key)
        resume = checkpoints(output_dir)[-1] if checkpoints(output_dir) else None
        argv = sft_argv(recipe, model, train_file.resolve(), val_file.resolve() if has_val else None,
                        output_dir.resolve(), resume.resolve() if resume else None, num_labels)
        own_folder(output_dir)  # where ms-swift writes: no link on the way
        write_marker(output_dir, {"key": key, "argv": redact_argv(argv)}, OWNER)
        log_path = output_dir / "train.log"
        try:
            with Bar("swift sft") as bar:
                run_logged(argv, log_path, env=sft_env(recipe), poll=_ProgressFeed(output_dir, bar),
                           what="swift sft")
        finally:  # ms-swift writes its arguments, secrets included, into args.json files
            scrub_files(output_dir.rglob("args.json"), secret_arg_values(argv))
    rows = rows_trained(output_dir)
    if rows is not None and rows != n_train:
        raise StageError(f"ms-swift trained on {rows} rows but {train_file} has {n_train}: rows were dropped "
                         f"(too long for max_length {recipe.train.max_length}?). See {log_path}.")
    ckpt = finished_checkpoint(output_dir, best)
    if ckpt is None:
        raise StageError(f"swift sft finished but named no checkpoint in {output_dir / 'logging.jsonl'}")
    return TrainResult(ckpt, redact_argv(argv), resume, rows, key, aside)


def merge_argv(checkpoint: Path, output_dir: Path) -> list[str]:
    return ["swift", "export", "--adapters", str(checkpoint), "--merge_lora", "true",
            "--output_dir", str(output_dir)]


# What a checkpoint holds beside the model: the trainer's state, for resuming, not for serving.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
                  "training_args.bin", "global_step*", "latest", "zero_to_fp32.py")


def run_merge(checkpoint: Path, merged_dir: Path, log_path: Path) -> list[str]:
    """A trained checkpoint as a whole model in merged_dir (written aside, then moved, so a crash leaves no half
    model): a LoRA checkpoint merged into its base with swift export --merge_lora; a full fine-tune's checkpoint
    (train.tuner_type full) is the whole model already, copied without the trainer's state. Returns the argv
    run (none for a copy)."""
    lora = (checkpoint / "adapter_config.json").is_file()
    if not lora and not (checkpoint / "config.json").is_file():
        raise StageError(f"{checkpoint}: neither a LoRA checkpoint (adapter_config.json) nor a whole model "
                         "(config.json)")
    partial = cleared(merged_dir.with_name(merged_dir.name + ".partial"))
    argv = merge_argv(checkpoint.resolve(), partial.resolve()) if lora else []
    if lora:
        run_logged(argv, log_path, what="swift export")
    else:
        shutil.copytree(checkpoint, partial, ignore=shutil.ignore_patterns(*TRAINING_STATE))
    if not (partial / "config.json").is_file():
        raise StageError(f"swift export wrote no model into {partial}; see {log_path}")
    cleared(merged_dir)
    partial.rename(merged_dir)
    return argv
