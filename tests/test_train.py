import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RECIPE
from toolkit.io.errors import StageError
from toolkit.train.losschart import diagnose
from toolkit.model.models import ResolvedModel
from toolkit.task.recipe import load_recipe
from toolkit.io.runner import tail
from toolkit.train.swift import merge_argv, sft_argv, stale_trainers, training_lock


def as_options(argv):
    assert argv[:2] == ["swift", "sft"]
    pairs = argv[2:]
    return dict(zip(pairs[::2], pairs[1::2]))


def test_gpu_argv_is_the_tutorials_command_in_4x_names():
    recipe = load_recipe(RECIPE, "gpu")
    model = ResolvedModel("Qwen/Qwen3-0.6B", recipe.student.model_type, recipe.student.template, local=False)
    argv = sft_argv(recipe, model, Path("/d/train.jsonl"), Path("/d/val.jsonl"), Path("/r/train"))
    opts = as_options(argv)
    tutorial = {
        "--model": "Qwen/Qwen3-0.6B", "--tuner_type": "lora", "--lora_rank": "8", "--lora_alpha": "32",
        "--target_modules": "all-linear", "--num_train_epochs": "10.0", "--per_device_train_batch_size": "20",
        "--per_device_eval_batch_size": "20", "--gradient_accumulation_steps": "16", "--learning_rate": "0.0001",
        "--max_length": "2048", "--warmup_ratio": "0.05", "--torch_dtype": "bfloat16",
        "--dataset": "/d/train.jsonl", "--val_dataset": "/d/val.jsonl",
    }
    assert {k: opts[k] for k in tutorial} == tutorial
    assert "--train_type" not in opts  # the 3.x name, rejected by 4.x
    assert opts["--template"] == "qwen3" and opts["--enable_thinking"] == "false"
    assert opts["--report_to"] == "tensorboard" and opts["--add_version"] == "false"
    # every hyper-parameter ms-swift would otherwise pick itself is explicit
    for key in ("--lr_scheduler_type", "--weight_decay", "--lora_dropout", "--save_steps", "--eval_steps",
                "--logging_steps", "--seed", "--gradient_checkpointing", "--dataloader_num_workers"):
        assert key in opts
    assert len(argv) == 2 + 2 * len(opts)  # strictly --key value pairs, no stray words


def test_cpu_argv_uses_the_embedded_student_settings_and_resume():
    recipe = load_recipe(RECIPE, "cpu", ["train.max_steps=7"])
    model = ResolvedModel("/cache/smollm2", "llama", "chatml", local=True)
    opts = as_options(sft_argv(recipe, model, Path("t"), None, Path("o"), resume_from=Path("o/checkpoint-2")))
    assert (opts["--model_type"], opts["--template"], opts["--torch_dtype"]) == ("llama", "chatml", "float32")
    assert opts["--max_steps"] == "7" and opts["--resume_from_checkpoint"] == "o/checkpoint-2"
    assert opts["--eval_strategy"] == "no" and "--val_dataset" not in opts and "--enable_thinking" not in opts
    # Gemma's output layer in bf16, through the plugin that ships with xtk
    assert opts["--callbacks"] == "bf16_output_layer" and Path(opts["--external_plugins"]).is_file()
    assert "--callbacks" not in as_options(sft_argv(load_recipe(RECIPE, "gpu"), model, Path("t"), None, Path("o")))
    assert merge_argv(Path("/c"), Path("/m")) == ["swift", "export", "--adapters", "/c", "--merge_lora", "true",
                                                   "--output_dir", "/m"]


def test_ddp_training_gets_a_rendezvous_port_of_its_own(monkeypatch):
    from toolkit.train.swift import sft_env

    monkeypatch.delenv("MASTER_PORT", raising=False)
    env = sft_env(load_recipe(RECIPE, "cpu"))
    assert env["NPROC_PER_NODE"] == "2" and env["OMP_NUM_THREADS"] == "1"
    assert env["MASTER_PORT"] != "29500" and int(env["MASTER_PORT"]) > 0
    monkeypatch.setenv("MASTER_PORT", "31337")
    assert sft_env(load_recipe(RECIPE, "cpu"))["MASTER_PORT"] == "31337"
    assert "MASTER_PORT" not in sft_env(load_recipe(RECIPE, "cpu", ["train.nproc_per_node=1"]))


MMAPPED_BLOCKS = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                               "fordblks keepcost").split()]
libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblks
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
@pytest.mark.parametrize("tunables", [None, "glibc.malloc.arena_max=2"])
def test_cpu_training_keeps_large_blocks_off_mmap(monkeypatch, tunables):
    """A 64 MB block (Gemma's logits are this size) is mmap'd by default and kept in the heap in the environment
    CPU training gets, the caller's own tunables kept beside ours."""
    from toolkit.io.secrets import child_env
    from toolkit.train.swift import sft_env

    if tunables:
        monkeypatch.setenv("GLIBC_TUNABLES", tunables)
    else:
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)

    def mmapped(env):
        return int(subprocess.run([sys.executable, "-c", MMAPPED_BLOCKS], env=env, capture_output=True, text=True,
                                  check=True).stdout)

    assert mmapped(child_env()) == 1
    env = child_env(sft_env(load_recipe(RECIPE, "cpu")))
    assert mmapped(env) == 0
    assert tunables is None or tunables in env["GLIBC_TUNABLES"]


def test_the_allocator_setting_is_not_part_of_the_training_key(monkeypatch, tmp_path):
    """Memory tunables change how fast a model trains, not the model: a folder trained under others is reused."""
    from toolkit.train.swift import train_key

    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    recipe = load_recipe(RECIPE, "cpu")
    model = ResolvedModel("/cache/gemma", "gemma3_text", "gemma3_text", local=True)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    before = train_key(recipe, model, data, None)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert train_key(recipe, model, data, None) == before
    assert train_key(load_recipe(RECIPE, "cpu", ["train.lora_rank=4"]), model, data, None) != before



def test_the_plugins_place_on_disk_is_not_part_of_the_training_key(monkeypatch, tmp_path):
    """The same recipe in two clones trains the same model: the bf16 output layer plugin is keyed by its name."""
    import toolkit.train.swift as train

    data = tmp_path / "train.jsonl"
    data.write_text("{}\n")
    recipe = load_recipe(RECIPE, "cpu")
    model = ResolvedModel("/cache/gemma", "gemma3_text", "gemma3_text", local=True)
    before = train.train_key(recipe, model, data, None)
    monkeypatch.setattr(train, "PLUGIN", tmp_path / "elsewhere" / "swift_plugin.py")
    assert train.train_key(recipe, model, data, None) == before
    assert train.train_key(load_recipe(RECIPE, "cpu", ["train.bf16_output_layer=false"]), model, data, None) != before

def series(values):
    return list(enumerate(values))


def test_fit_diagnosis_follows_the_tutorials_rule():
    falling = series([2.0, 1.6, 1.3, 1.0, 0.8, 0.6, 0.45, 0.35])
    flat = series([2.0, 0.5, 0.30, 0.30, 0.31, 0.30, 0.30, 0.30])
    rising = series([0.9, 0.7, 0.6, 0.62, 0.7, 0.8, 0.9, 1.0])
    assert diagnose(falling, falling).startswith("under-fit")
    assert diagnose(falling, rising).startswith("over-fit")
    assert diagnose(flat, flat).startswith("good fit")
    assert diagnose(series([1.0]), []).startswith("too few")


def test_fit_diagnosis_reads_small_batch_noise_as_flat():
    import random

    rng = random.Random(7)  # per-step losses of batch 4: spikes 3x the level, no trend
    noisy = series([0.1 * rng.choice([0.2, 0.6, 1.0, 1.4, 3.0]) for _ in range(120)])
    assert diagnose(noisy, series([0.20, 0.12, 0.10, 0.10, 0.10, 0.10])).startswith("good fit")
    assert diagnose(noisy, series([0.16, 0.12, 0.10, 0.09, 0.088, 0.084, 0.082, 0.080])).startswith("under-fit")
    assert diagnose(noisy, []).startswith("good fit")


def test_a_second_xtk_cannot_train_into_the_same_folder(tmp_path):
    with training_lock(tmp_path):
        with pytest.raises(StageError, match=r"in use by another xtk training \(pid \d+\)"):
            with training_lock(tmp_path):
                pass
    with training_lock(tmp_path):  # released on exit
        pass


def test_a_process_training_into_the_folder_is_found_and_stopped(tmp_path):
    """A sleeping Python stands in for an orphaned swift worker: only its argv matters here."""
    out = tmp_path / "train"
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--output_dir", str(out)])
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--output_dir", str(out) + "x"])
    try:
        assert stale_trainers(out) == [orphan.pid]
        with training_lock(out):
            assert orphan.wait(timeout=120) is not None and other.poll() is None
    finally:
        other.kill()
        orphan.kill()


def test_a_torchrun_failure_names_the_workers_error(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("[rank1]: Traceback (most recent call last):\n"
                   "[rank1]: ValueError: Can't find a valid checkpoint at /r/checkpoint-2\n"
                   + "torchrun summary\n" * 60)
    shown = tail(log)
    assert shown.count("torchrun summary") == 40 and shown.endswith("checkpoint at /r/checkpoint-2\n")


def test_an_aborted_worker_is_named_by_what_it_printed_before_the_abort(tmp_path):
    """A worker killed by SIGABRT leaves no [rankN] traceback, only the uncaught C++ exception's two lines."""
    log = tmp_path / "train.log"
    log.write_text("{'loss': '1.927'}\n"
                   "terminate called after throwing an instance of 'gloo::IoException'\n"
                   "  what():  [pair.cc:534] Connection closed by peer [127.0.0.1]:19133\n"
                   + "torchrun summary: exitcode -6 (SIGABRT)\n" * 60)
    shown = tail(log)
    assert shown.endswith("Cause: terminate called after throwing an instance of 'gloo::IoException'\n"
                          "  what():  [pair.cc:534] Connection closed by peer [127.0.0.1]:19133\n")
    assert "loss" not in shown


def test_training_minutes_come_from_the_summary_of_the_session_that_finished(tmp_path):
    """ms-swift's logging.jsonl: step rows, then a summary whose log_history ends with train_runtime (seconds)."""
    import json

    from toolkit.train.swift import training_minutes

    log = tmp_path / "logging.jsonl"
    log.write_text(json.dumps({"loss": 1.0, "global_step/max_steps": "1/2"}) + "\n")
    assert training_minutes(tmp_path) is None  # still training
    summary = {"last_model_checkpoint": "x", "log_history": [{"loss": 1.0, "step": 1},
                                                             {"train_runtime": 753.0, "step": 2}]}
    log.write_text(log.read_text() + json.dumps(summary) + "\n")
    assert training_minutes(tmp_path) == 12.6  # 753 s


def test_stopping_early_merges_the_checkpoint_of_lowest_eval_loss(tmp_path):
    """The summary line of ms-swift's logging.jsonl names the last checkpoint and the best (lowest eval loss);
    `best` takes the best, and the last where nothing was evaluated."""
    import json

    from toolkit.train.swift import finished_checkpoint

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
    summary = {"last_model_checkpoint": str(tmp_path / "checkpoint-4"),
               "best_model_checkpoint": str(tmp_path / "checkpoint-2")}
    (tmp_path / "logging.jsonl").write_text(json.dumps({"eval_loss": 0.5}) + "\n" + json.dumps(summary) + "\n")
    assert finished_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert finished_checkpoint(tmp_path, best=True) == tmp_path / "checkpoint-2"
    (tmp_path / "logging.jsonl").write_text(json.dumps({**summary, "best_model_checkpoint": None}) + "\n")
    assert finished_checkpoint(tmp_path, best=True) == tmp_path / "checkpoint-4"


def test_stopping_early_without_a_validation_split_is_refused_before_training(tmp_path, smollm2, pool):
    import json

    from toolkit.data.prepare import to_messages
    from toolkit.train.swift import run_train

    recipe = load_recipe(RECIPE, "cpu", ["train.early_stop_evals=2"])
    row = to_messages(recipe, pool[0], "s")
    (tmp_path / "train.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n")
    (tmp_path / "val.jsonl").write_text("")
    model = ResolvedModel(str(smollm2), "llama", "chatml", True)
    with pytest.raises(StageError, match="early_stop_evals needs a validation split"):
        run_train(recipe, model, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# A launcher and its worker that both ignore SIGTERM, as a torchrun whose workers are stuck would.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the worker
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(str(worker.pid))
time.sleep(600)
"""


def test_an_interrupted_command_leaves_no_process_behind_even_one_deaf_to_sigterm(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM reaches xtk while a child runs: the child is asked to stop and, after the grace period,
    it and every process it started are killed; the interrupt, not a time-out, is what the caller sees."""
    import psutil

    from toolkit.io import runner

    monkeypatch.setattr(runner, "GRACE_S", 1.0)
    pid_file = tmp_path / "worker.pid"

    def interrupt() -> None:
        if pid_file.is_file() and pid_file.read_text():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runner.run_logged([sys.executable, "-c", STUBBORN, str(pid_file)], tmp_path / "log", poll=interrupt)
    worker = int(pid_file.read_text())
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE


def test_a_second_signal_in_the_grace_period_still_leaves_no_process_behind(tmp_path, monkeypatch):
    """Ctrl-C, then SIGTERM while xtk waits for its child to stop: the second signal cuts the grace period short
    and the child and its workers are killed at once (before, the second signal's exception left stop() half-way
    and torchrun's workers went on training with xtk gone). The second signal is SIGUSR1 raising KeyboardInterrupt,
    as xtk's handler raises on SIGTERM, so pytest's own SIGINT handling plays no part."""
    import os
    import signal
    import threading
    import time

    import psutil

    from toolkit.io import runner

    monkeypatch.setattr(runner, "GRACE_S", 120.0)  # far longer than the test may take: only the signal ends it
    pid_file = tmp_path / "worker.pid"

    def second(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGUSR1, second)
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGUSR1))

    def interrupt() -> None:
        if pid_file.is_file() and pid_file.read_text():
            timer.start()  # the first interrupt: stop() is then waiting out the grace period
            raise KeyboardInterrupt

    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            runner.run_logged([sys.executable, "-c", STUBBORN, str(pid_file)], tmp_path / "log", poll=interrupt)
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)
    worker = int(pid_file.read_text())
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
    assert time.monotonic() - started < 100  # the grace period was cut short, not waited out
