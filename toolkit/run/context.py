"""A run folder as the stages and roles see it: the recipe, the folder and its manifest; and the settings the run
was made with (its profile and overrides), which the commands that use the run start from."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from toolkit.io.jsonl import write_json
from toolkit.io.locks import folder_lock
from toolkit.io.secrets import MASK, redact, secret_arg_values
from toolkit.model.models import resolve_model
from toolkit.run.manifest import Manifest
from toolkit.task.recipe import Recipe, parse_override

SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class Settings:
    """What a run is made with besides its recipe file: the profile and the `key=value` overrides given on the line.
    Consent (--allow-code, --trust-remote-code) is not a setting: each command is given it anew (docs/trust.md)."""
    recipe: Path  # the recipe file, resolved
    profile: str | None = None
    overrides: tuple[str, ...] = ()


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
    yes: bool = False  # `xtk run --yes`: label past teacher.confirm_above without asking

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
def open_run(recipe: Recipe, run_dir: str | Path, settings: Settings | None = None) -> Iterator[Context]:
    """The run folder, held for as long as a command writes into it: one writer per run folder. A command that
    makes the run (`xtk run` and its stages) passes the settings it was given: they are kept there."""
    with folder_lock(Path(run_dir), "run"):
        ctx = Context(recipe, Path(run_dir), Manifest(run_dir))
        ctx.manifest.set_recipe(recipe)
        if settings is not None:
            keep_settings(ctx.run_dir, settings, recipe)
        yield ctx


def keep_settings(run_dir: Path, settings: Settings, recipe: Recipe) -> None:
    """settings.json, secrets masked as in the manifest (an override's value that is a secret is not kept)."""
    hidden = secret_arg_values(recipe.train.extra_args)
    write_json(run_dir / SETTINGS_FILE, {"recipe": str(settings.recipe), "profile": settings.profile,
                                         "overrides": [redact(w, hidden) for w in settings.overrides]})


def with_kept_settings(run_dir: str | Path, given: Settings) -> tuple[Settings, list[str]]:
    """The settings a command on the run folder uses: those the run was made with, then the `given` ones, which win
    key by key; and a note for each (what is used from the folder, each given value that differs from its kept one,
    a kept secret that must be given again)."""
    path = Path(run_dir) / SETTINGS_FILE
    if not path.is_file():
        return given, []
    kept = json.loads(path.read_text(encoding="utf-8"))
    if Path(kept["recipe"]) != given.recipe:
        return given, [f"{run_dir} was made from {kept['recipe']}, not {given.recipe}: its settings are not used"]
    notes = []
    profile = kept["profile"] if given.profile is None else given.profile
    if profile != kept["profile"]:
        was = f"--profile {kept['profile']}" if kept["profile"] else "no profile"
        notes.append(f"--profile {profile} given: used instead of {was}, which {run_dir} was made with")
    again = {tuple(keys): (word, value) for word in given.overrides for keys, value in [parse_override(word)]}
    used = []
    for word in kept["overrides"]:
        keys, value = parse_override(word)
        if tuple(keys) in again:
            if again[tuple(keys)][1] != value:
                notes.append(f"{again[tuple(keys)][0]} given: used instead of {word}, which {run_dir} was made with")
        elif MASK in word:
            notes.append(f"{run_dir} was made with {word}, a secret it does not keep: give it again where needed")
        else:
            used.append(word)
    if inherited := [*([f"--profile {profile}"] if given.profile is None and profile else []), *used]:
        notes.insert(0, f"{run_dir} was made with {' '.join(inherited)}: used here too")
    return Settings(given.recipe, profile, (*used, *given.overrides)), notes
