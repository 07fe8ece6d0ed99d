"""Seeded data generators, by name: `xtk data generate NAME` rebuilds a recipe's shipped files."""

from __future__ import annotations

from pathlib import Path

from toolkit.jsonl import write_jsonl, write_text

GENERATORS = {
    # name: (module with build(seed) -> {filename: JSONL rows or text}, seed the shipped files were made with)
    "logistics_zh": ("toolkit.datagen.logistics_zh", 20260101),
}


def generate(name: str, out_dir: str | Path) -> list[Path]:
    """Write the generator's files into out_dir; the same name always gives the same bytes."""
    import importlib

    if name not in GENERATORS:
        raise KeyError(f"no data generator {name!r}; known: {', '.join(GENERATORS)}")
    module, seed = GENERATORS[name]
    files = importlib.import_module(module).build(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [write_text(out / filename, content) if isinstance(content, str) else write_jsonl(out / filename, content)
            for filename, content in files.items()]
