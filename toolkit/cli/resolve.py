"""From a command line to what it names: the recipe (profile, overrides, consent), its checks, and the run
folder. Every handler goes through here, so that each command reads a line the same way."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape

from toolkit.flow.check import check_files, check_recipe
from toolkit.io.trust import Consent
from toolkit.run.context import open_run
from toolkit.run.manifest import default_run_dir
from toolkit.task.recipe import load_recipe

console = Console(stderr=True)


def consent(args) -> Consent:
    return Consent(tuple(args.allow_code), args.trust_remote_code)


def load(args):
    overrides = list(args.overrides)
    if args.trust_remote_code:
        overrides.append("student.trust_remote_code=true")
    return load_recipe(args.recipe, args.profile, overrides, consent(args))


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


def opened(args, recipe=None):
    """The run folder, opened (locked) for the command."""
    recipe = recipe or recipe_of(args)
    return open_run(recipe, run_dir(args, recipe))
