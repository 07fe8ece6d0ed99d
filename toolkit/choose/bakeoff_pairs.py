"""Running a bake-off's pairs: one pair in this process (`xtk bakeoff SPEC --pair N`: `xtk run`'s stages and the
guided base evaluation), and every pair as such a child process, one per GPU slot at a time, stopped whole when
interrupted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from toolkit.choose.bakeoff_spec import Bakeoff, Pair
from toolkit.flow.pipeline import console, evaluate_model, run_all, skip
from toolkit.io.errors import StageError
from toolkit.io.jsonl import open_append, write_bytes
from toolkit.io.progress import Bar
from toolkit.model.models import EMBEDDED, pull_embedded
from toolkit.run.context import open_run
from toolkit.run.identity import evaluations_current
from toolkit.run.roles import ROLES, role
from toolkit.task.recipe import Recipe


GUIDED = "eval_base_guided"  # the manifest entry of the guided base evaluation


def eval_base_guided(ctx) -> None:
    """The base model with the detailed prompt again, decoding constrained to the recipe's JSON schema (vLLM), as
    eval/base-guided-<test>/ (the role base-guided). Skipped while every one of them is current."""
    guided = role(ctx, "base-guided")
    if evaluations_current(ctx, guided, ctx.recipe.data.test) is None:
        console.print(f"[dim]{GUIDED}: complete, skipped[/]")
        return
    console.print(f"[bold cyan]stage {GUIDED}[/]")  # as `xtk run` announces its stages (and the bar shows them)
    why = ROLES["base-guided"].not_applicable(ctx)
    if why:
        skip(ctx, GUIDED, why)
        return
    ctx.manifest.start(GUIDED)
    ctx.manifest.done(GUIDED, evaluate_model(ctx, guided))


SHARED = ("data/labelled.jsonl", "data/rejects.jsonl", "cache/endpoint-answers.jsonl")


def share_teacher_answers(first: Path, run_dir: Path) -> None:
    """The teacher's labels and answers from the task's first pair: they do not depend on the student, and each
    was paid for (both files are journals keyed by what was asked, so nothing is asked twice)."""
    for rel in SHARED:
        if (first / rel).is_file() and not os.path.lexists(run_dir / rel):
            write_bytes(run_dir / rel, (first / rel).read_bytes())


def teacher_reachable(recipe: Recipe) -> bool:
    return bool(os.environ.get(recipe.teacher.api_key_env))


def run_pair(b: Bakeoff, index: int) -> list[str]:
    """One pair, in this process: `xtk run`'s stages (finished ones skipped) with the guided base evaluation
    after the plain one (the data stage may first have to build the test files). Returns the stages that ran."""
    if not 0 <= index < len(b.pairs):
        raise StageError(f"--pair {index}: the spec has pairs 0 to {len(b.pairs) - 1}")
    pair = b.pairs[index]
    first = b.pairs[b.tasks.index(pair.task) * len(b.students)]
    with open_run(pair.recipe, pair.run_dir) as ctx:
        if first is not pair and teacher_reachable(pair.recipe):
            share_teacher_answers(first.run_dir, ctx.run_dir)
        return run_all(ctx, after={"eval_base": eval_base_guided})


def gpu_slots() -> list[str | None]:
    """One slot per visible GPU (its CUDA_VISIBLE_DEVICES value) where there are several, else one slot."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n <= 1:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (visible.split(",") if visible else [str(i) for i in range(n)])[:n]


def _last_stage(log: Path) -> str:
    with log.open("rb") as fh:
        fh.seek(max(0, log.stat().st_size - 65536))
        found = re.findall(r"^stage (\w+)$", fh.read().decode("utf-8", "replace"), re.M)
    return found[-1] if found else "starting"


def run_pairs(b: Bakeoff) -> list[tuple[Pair, Path]]:
    """Every pair in a child process (`xtk bakeoff SPEC --pair N`), its output in <run>/bakeoff.log, one per slot
    at a time; where a teacher is reachable, a task's other pairs wait for its first one, whose teacher labels
    and answers they reuse. Returns the pairs that failed, with their logs."""
    for s in b.students:  # once, before children that would each build it at the same time
        if s.model in EMBEDDED:
            pull_embedded(s.model)
    slots = gpu_slots()
    first = {i: b.tasks.index(p.task) * len(b.students) for i, p in enumerate(b.pairs)}
    waits = {i: first[i] for i, p in enumerate(b.pairs) if first[i] != i and teacher_reachable(p.recipe)}
    pending, running, finished, failed = list(range(len(b.pairs))), {}, set(), []
    try:
        with Bar("bake-off", total=len(b.pairs)) as bar:
            while pending or running:
                for i, (proc, slot, log, fh) in list(running.items()):
                    if proc.poll() is not None:
                        fh.close()
                        del running[i]
                        finished.add(i)
                        if proc.returncode != 0:
                            failed.append((b.pairs[i], log))
                free = [s for s in slots if s not in {r[1] for r in running.values()}]
                for slot in free:
                    ready = next((i for i in pending if waits.get(i, i) == i or waits[i] in finished), None)
                    if ready is None:
                        break
                    pending.remove(ready)
                    running[ready] = _start(b, ready, slot)
                bar.update(len(finished), note="; ".join(
                    f"{b.pairs[i].task} x {b.pairs[i].student.name}: {_last_stage(r[2])}" for i, r in running.items()))
                time.sleep(1)
    finally:
        for proc, _, _, fh in running.values():  # interrupted: stop the children this started
            _stop(proc)
            fh.close()
    return failed


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the child itself once it exits, so that only live processes count
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen, grace: tuple[float, float, float] = (60, 10, 5)) -> None:
    """Stop a child and everything it started (vLLM's engine processes, ms-swift's trainers: its process group).
    SIGINT first, on which a child closes its engine as on Ctrl-C; a vLLM engine still starting up ignores SIGINT
    and SIGTERM alike (seen here), so what is left after the grace periods is killed."""
    for sig, seconds in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), grace):
        if not _group_alive(proc):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.5)
    proc.wait()


def _start(b: Bakeoff, index: int, slot: str | None):
    pair = b.pairs[index]
    log = pair.run_dir / "bakeoff.log"
    fh = open_append(log)
    fh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} pair {index}: {pair.task} x {pair.student.name}\n")
    fh.flush()
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": slot} if slot is not None else {})}
    argv = [sys.executable, "-m", "toolkit", "bakeoff", str(b.spec_path), "--out", str(b.out), "--pair", str(index),
            *b.consent.argv()]
    # a process group of its own, so that an interruption stops all of it (_stop) and nothing is left running
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, slot, log, fh
