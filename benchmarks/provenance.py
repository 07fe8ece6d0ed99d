"""Where a benchmark figure comes from, and whether it still describes the code: the commit (and whether the tree
was clean) when the run started and when it wrote its file, the CPU it ran on, when, whether one run made every
figure in it, and the trainings behind the models it scores. Every results JSON in benchmarks/results/ carries
these, written by the run itself; `python -m benchmarks.check` checks them and lists the stale files."""

from __future__ import annotations

import ast
import datetime
import json
import os
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# This checkout's toolkit, not the one the venv's editable install points at (a clone sharing another's venv
# would score its own run with the other tree's code).
sys.path.insert(0, str(ROOT))
from toolkit.io.markers import read_marker  # noqa: E402

# What every results file must say of itself (dotted: a key inside a key).
REQUIRED = ("date", "git.commit", "git.dirty", "machine.cpu_model", "machine.cpu_count", "one_run")
# Files written before `one_run` was required (#46), never edited by hand: their tables say "legacy: not known to
# be one run" until their scripts run again.
LEGACY_WITHOUT_ONE_RUN = frozenset({
    "advise_memory", "bad_input", "bakeoff_cpu", "eval_speed", "export_parity", "guided_llamacpp", "label_faults",
    "label_throughput", "levers_cpu", "predict_cpu", "serve_load", "table_schema", "train_speed"})
# A results file is written by benchmarks/<its name>.py, except these (files written before they named their script)
SCRIPTS = {"msra_ner_cpu": "recipe_cpu", "review_sentiment_zh_cpu": "recipe_cpu"}


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def git_state() -> dict:
    try:
        dirty = [line[3:] for line in git("status", "--porcelain").splitlines()]
        return {"commit": git("rev-parse", "HEAD").strip(), "dirty": bool(dirty), "dirty_files": dirty}
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"commit": None, "dirty": None, "error": f"not a git checkout: {exc}"}


# A benchmark imports this module first thing: the tree as its run starts, to set beside the tree as it ends.
AT_START = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "git": git_state()}


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


def provenance(one_run: bool) -> dict:
    """date, git (now and when the run started), machine, the script and `one_run`: whether this invocation
    made every figure of the file (False where it reused what an earlier one made, or cannot tell)."""
    script = Path(sys.argv[0]).resolve()
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "git": git_state(),
            "started": AT_START, "machine": machine(), "one_run": one_run,
            "script": str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else None}


def trained_model(folder: Path) -> dict:
    """The training behind a model folder a results file scores: its training key (the digest of the training's
    settings) from the folder's marker, and the commit its run folder's manifest recorded for the training."""
    manifest = folder.parent / "manifest.json"
    train = json.loads(manifest.read_text(encoding="utf-8"))["stages"].get("train", {}) if manifest.is_file() else {}
    return {"folder": str(folder.resolve().relative_to(ROOT)) if folder.resolve().is_relative_to(ROOT) else str(folder),
            "train_key": (read_marker(folder) or {}).get("train_key"), "train_commit": train.get("commit")}


# --- whether a file is complete and current -----------------------------------------------------------------

def missing(data: dict) -> list[str]:
    """The REQUIRED keys a results file lacks (None counts as lacking: "not a git checkout")."""
    out = []
    for key in REQUIRED:
        value = data
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            out.append(key)
    return out


def script_of(name: str, data: dict) -> Path:
    return ROOT / (data.get("script") or f"benchmarks/{SCRIPTS.get(name, name)}.py")


def _module_file(module: str, root: Path) -> Path | None:
    """A module's file in this checkout: toolkit.x.y, or a sibling script a benchmark puts on sys.path (provenance,
    recipe_cpu, tests' conftest)."""
    parts = module.split(".")
    for base in (root, root / "benchmarks", root / "tests"):
        for path in (base.joinpath(*parts).with_suffix(".py"), base.joinpath(*parts) / "__init__.py"):
            if path.is_file():
                return path
    return None


def code_of(script: Path, root: Path = ROOT) -> list[Path]:
    """The script and every file of this checkout it imports, transitively (imports inside functions too); a
    script that starts the CLI (`-m toolkit`) runs all of it."""
    return sorted(_closure(script.resolve(), root.resolve()))


@cache
def _closure(script: Path, root: Path) -> frozenset[Path]:
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _imports(path, root)
    return frozenset(seen)


@cache
def _imports(path: Path, root: Path) -> list[Path]:
    """The files of this checkout one file imports (or runs: a constant "toolkit", as in [python, "-m", "toolkit"])."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = ".".join(path.relative_to(root).with_suffix("").parts[:-node.level]) if node.level else ""
            base = ".".join(p for p in (package, node.module or "") if p)
            names += [base, *(f"{base}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Constant) and node.value == "toolkit":
            names.append("toolkit.__main__")
    return [f for f in (_module_file(n, root) for n in names) if f is not None]


def changed_since(commit: str, paths: list[Path], root: Path = ROOT) -> list[str] | None:
    """The commits after `commit` that touched any of paths, newest first; None where git cannot tell (no
    checkout, or a commit this clone does not have)."""
    try:
        out = git("log", "--format=%h", f"{commit}..HEAD", "--", *(str(p.relative_to(root)) for p in paths), cwd=root)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.split()


def stale(name: str, data: dict, root: Path = ROOT) -> list[str] | None:
    """The commits since the file's own that changed its script or the code it runs: [] when current, None where
    git cannot tell."""
    commit = (data.get("git") or {}).get("commit")
    script = root / script_of(name, data).relative_to(ROOT)
    if not commit or not script.is_file():
        return None
    return changed_since(commit, code_of(script, root), root)
