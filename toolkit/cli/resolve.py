"""From a command line to what it names: the recipe (profile, overrides, consent), its checks, and the run
folder, with the settings the run was made with. Every handler goes through here, so that each command reads a
line the same way."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from toolkit.flow.check import check_files, check_recipe
from toolkit.io.trust import Consent
from toolkit.run.context import Settings, open_run, with_kept_settings
from toolkit.run.manifest import default_run_dir
from toolkit.task.recipe import Recipe, load_recipe

console = Console(stderr=True, emoji=False)  # rich would print "r.yaml:100:" as "r.yaml💯"


def consent(args) -> Consent:
    return Consent(tuple(args.allow_code), args.trust_remote_code, tuple(args.allow_path), args.api_key_env)


def given(args) -> Settings:
    """The profile and overrides the line gives."""
    return Settings(Path(args.recipe).resolve(), args.profile, tuple(args.overrides))


def load(args, settings: Settings | None = None) -> Recipe:
    """The recipe under `settings` (default: the line's), with the line's consent."""
    settings = settings or given(args)
    overrides = list(settings.overrides)
    if args.trust_remote_code:
        overrides.append("student.trust_remote_code=true")
    if args.api_key_env:
        overrides.append(f"teacher.api_key_env={args.api_key_env}")
    return load_recipe(args.recipe, settings.profile, overrides, consent(args))


def recipe_of(args):
    """The recipe, its data files checked."""
    recipe = load(args)
    check_files(recipe)
    return recipe


def checked(args):
    """The recipe and what `xtk recipe check` finds in it, its warnings shown."""
    recipe = load(args)
    found = check_recipe(recipe)
    for note in found.notes:
        console.print("note:", escape(note), highlight=False, soft_wrap=True)
    for warning in found.warnings:
        console.print("[yellow]warning:[/]", escape(warning), highlight=False, soft_wrap=True)
    return recipe, found


def run_dir(args, recipe) -> Path:
    """The run folder the line names with --run, else the recipe's default one."""
    return Path(args.run) if args.run else default_run_dir(recipe)


def open_to_make(args, recipe: Recipe):
    """The run folder opened (locked) by a command that makes the run (`xtk run`, a stage): the line's profile and
    overrides are kept there, for the commands that use the run."""
    return open_run(recipe, run_dir(args, recipe), given(args))


def run_recipe(args) -> tuple[Recipe, Path]:
    """The recipe as the run the line names was made, and that run folder: the profile and overrides kept there,
    then the line's, which win (stderr says where they differ). Its data files are not checked: a command that
    uses a run needs its model, not its training data."""
    run = Path(args.run) if args.run else default_run_dir(load(args))
    settings, notes = with_kept_settings(run, given(args))
    for note in notes:
        console.print("note:", escape(note), highlight=False, soft_wrap=True)
    return load(args, settings), run


def open_to_use(args):
    """The run folder opened (locked) by a command that uses the run (eval, report, export): the recipe as it was
    made, its data files checked (evaluations read the test files)."""
    recipe, run = run_recipe(args)
    check_files(recipe)
    return open_run(recipe, run)
