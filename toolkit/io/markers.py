"""The one reader and writer of the markers in the folders xtk makes models in. A model folder (pulled, merged
student, merged head, a checkpoint merged for a curve) carries xtk-model.json: what the model is, the type and
template to serve it with, and for a trained one the training key (toolkit/train/swift.py:train_key) that says which
training made it. A training folder carries xtk-train.json: the key it trains under and the command."""

from __future__ import annotations

import json
from pathlib import Path

from toolkit.io.jsonl import write_json

MARKER = "xtk-model.json"
OWNER = "xtk-train.json"


def read_marker(folder: str | Path, name: str = MARKER) -> dict | None:
    """The folder's marker, or None where it has none (or one that is not a JSON object)."""
    path = Path(folder) / name
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(folder: str | Path, meta: dict, name: str = MARKER) -> None:
    """Written whole, never through a link planted where it goes (toolkit/io/jsonl.py's writer)."""
    write_json(Path(folder) / name, meta)


def trained_key(folder: str | Path) -> str | None:
    """The training key of the model in a model folder xtk merged, or None (no such model, or not trained)."""
    return (read_marker(folder) or {}).get("train_key")


def mark_trained(folder: Path, name: str, base: str, checkpoint: Path, train_key: str, model_type: str | None,
                 template: str | None, **more) -> None:
    """The marker of a model merged from a training: what ms-swift and xtk need to serve it again (type and
    template do not survive a merge) and the training key, so that nothing takes an older model for it."""
    write_marker(folder, {"name": name, "base": base, "checkpoint": str(checkpoint), "train_key": train_key,
                          "model_type": model_type, "template": template, **more})
