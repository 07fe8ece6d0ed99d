"""A run folder as the stages and roles see it: the recipe, the folder and its manifest."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from toolkit.io.locks import folder_lock
from toolkit.model.models import resolve_model
from toolkit.run.manifest import Manifest
from toolkit.task.recipe import Recipe


@dataclass
class Context:
    recipe: Recipe
    run_dir: Path
    manifest: Manifest
    labelled: Path | None = None  # `xtk prepare --labelled FILE`: records from elsewhere than the data stage
    fresh_train: bool = False  # `xtk run --from train` (or earlier): train afresh, even under the same settings
    fresh_head: bool = False  # the same for the classification head
    force_gate: bool = False  # `xtk run --force`: label the pool whatever the teacher gate says
    labelling: bool = False  # `xtk label`: the teacher is about to label texts, whatever the recipe's data names
    hourly: float | None = None  # `--hourly`: the machine's price an hour, for the student's cost in the report

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def train_dir(self) -> Path:
        return self.run_dir / "train"

    @property
    def merged_dir(self) -> Path:
        return self.run_dir / "merged"

    @property
    def head_dir(self) -> Path:
        """The classification head's data/, train/ and merged/."""
        return self.run_dir / "head"

    def student(self):
        s = self.recipe.student
        return resolve_model(s.model, s.model_type, s.template, s.trust_remote_code)


@contextmanager
def open_run(recipe: Recipe, run_dir: str | Path) -> Iterator[Context]:
    """The run folder, held for as long as a command writes into it: one writer per run folder."""
    with folder_lock(Path(run_dir), "run"):
        ctx = Context(recipe, Path(run_dir), Manifest(run_dir))
        ctx.manifest.set_recipe(recipe)
        yield ctx
