"""Run an external command (swift sft, swift export) as an argv list, its whole output kept in a log file;
on failure show the log's last lines and raise StageError."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from toolkit.io.errors import StageError
from toolkit.io.jsonl import open_append
from toolkit.io.secrets import child_env, redact, redact_argv, secret_arg_values

# A worker's Python exception as torchrun prefixes it, or what a worker that aborts (SIGABRT, which torchrun
# reports with no traceback) printed first: a C++ exception nobody caught (gloo's, torch's) or glibc's heap check.
RANK_ERROR = re.compile(r"^\[rank\d+\]: \w[\w.]*(Error|Exception)\b")
ABORT = re.compile(r"^(terminate called |\s+what\(\): |Fatal Python error: |(malloc|free|realloc|munmap_chunk)\(\): "
                   r"|double free or corruption|corrupted size vs)")


def tail(path: Path, n: int = 40) -> str:
    """The log's last n lines; under torchrun those are its own summary, so a worker's error lines are added."""
    with path.open(encoding="utf-8", errors="replace") as fh:
        last, cause, previous = deque(maxlen=n), "", ""
        for line in fh:
            last.append(line)
            if RANK_ERROR.match(line):
                cause = line
            elif ABORT.match(line):  # "terminate called ..." and its "what(): ..." belong together
                cause = previous + line if ABORT.match(previous) else line
            previous = line
    text = "".join(last)
    return text if not cause or cause in text else f"{text}Cause: {cause}"


def executable(name: str) -> str:
    """A console script of this Python's environment (e.g. `swift`), even when that venv is not activated."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise StageError(f"`{name}` is not installed in this environment; run `bash setup.sh`")
    return found


GRACE_S = 60.0  # how long a stopped child (torchrun, and through it its workers) may take to end by itself


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the child, which torchrun passes on to its workers; whatever of it and its descendants still
    runs GRACE_S later is killed: torchrun killed alone would leave its workers training."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    deadline = time.monotonic() + GRACE_S
    try:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=GRACE_S)
        psutil.wait_procs(family, timeout=max(0.0, deadline - time.monotonic()))
    finally:
        # Also when a second Ctrl-C or SIGTERM cuts the grace period short (seen: torchrun's workers kept
        # training after xtk had gone): whatever still runs is killed now.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = [p for p in family if p.is_running()]
        for p in left:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        # SIGKILL is delivered, not done: return once they are gone (or zombies), not while they still hold memory
        psutil.wait_procs(left, timeout=10)


def run_logged(argv: list[str], log_path: Path, env: Mapping[str, str] | None = None,
               poll: Callable[[], None] | None = None, what: str | None = None) -> None:
    """Run argv with stdout+stderr appended to log_path, calling poll() about once a second. The output goes
    through us on its way to the log so that secrets (a token in the argv, which ms-swift prints with its
    arguments, or in the environment) are redacted before they reach the disk."""
    what = what or " ".join(Path(argv[0]).name.split() + argv[1:2])
    hidden = secret_arg_values(argv)
    with open_append(log_path) as log:
        log.write(f"\n$ {' '.join(redact_argv(argv))}\n")
        log.flush()
        # Same process group as ours: Ctrl-C in a terminal, or killing the job, reaches the child too.
        proc = subprocess.Popen([executable(argv[0]), *argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=child_env(env), text=True, encoding="utf-8", errors="replace", bufsize=1)

        def copy() -> None:
            for line in proc.stdout:
                log.write(redact(line, hidden))
                log.flush()

        copier = threading.Thread(target=copy, daemon=True)
        copier.start()
        try:
            while proc.poll() is None:
                if poll:
                    poll()
                time.sleep(1.0)
        except BaseException:
            stop(proc)  # an exception of ours (not a signal to the group): don't leave the child running
            raise
        finally:
            copier.join(timeout=30)  # torchrun's workers may hold the pipe a moment after torchrun exits
        if poll:
            poll()
    if proc.returncode != 0:
        raise StageError(f"{what} failed with exit code {proc.returncode}. Last lines of {log_path}:\n"
                         f"{tail(log_path)}")
