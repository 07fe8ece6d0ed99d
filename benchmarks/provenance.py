"""Where a benchmark figure comes from: the commit (and whether the tree was clean), the CPU it ran on and when.
Every results JSON in benchmarks/results/ carries these, written by the run itself."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def git_state() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout

    try:
        dirty = [line[3:] for line in git("status", "--porcelain").splitlines()]
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(dirty), "dirty_files": dirty}
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"commit": None, "dirty": None, "error": f"not a git checkout: {exc}"}


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": model, "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0))}


def provenance() -> dict:
    """date, git and machine, for the top of a results file."""
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "git": git_state(),
            "machine": machine()}
