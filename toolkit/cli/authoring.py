"""Commands for before a run: a task's recipe written, shown and checked, its data generated, the embedded
models pulled and listed, a student advised."""

from __future__ import annotations

import json
import sys
import textwrap

import yaml
from rich.console import Console

from toolkit.choose.advise import advise, render
from toolkit.cli.resolve import checked, consent, console, load, recipe_of
from toolkit.data.generators import generate
from toolkit.data.init import TODO, init_recipe
from toolkit.evaluate.evaluation import chat
from toolkit.io.errors import StageError
from toolkit.io.markers import read_marker
from toolkit.model.models import EMBEDDED, cache_dir, pull_embedded, pull_hub
from toolkit.run.roles import ROLES
from toolkit.task.keys import recipe_keys


def cmd_models_pull(args) -> None:
    if args.name in EMBEDDED:
        path = pull_embedded(args.name, force=args.force)
    else:
        path = pull_hub(args.name, trust_remote_code=args.trust_remote_code)
    print(path)


def cmd_models_list(args) -> None:
    print("name\tkind\tlicence\tcommercial use\tparameters\tsize\tpackage\tstatus")
    for m in EMBEDDED.values():
        pulled = read_marker(cache_dir() / "models" / m.name) is not None
        print(f"{m.name}\t{m.kind}\t{m.licence}\t{m.commercial_use}\t{m.parameters}\t{m.disk_size}\t"
              f"{m.package}=={m.version}\t{'pulled' if pulled else 'not pulled'}")


def cmd_recipe_show(args) -> None:
    print(yaml.safe_dump(recipe_of(args).public_dict(), allow_unicode=True, sort_keys=False), end="")


def cmd_init(args) -> None:
    written = init_recipe(args.name, args.fields, args.out, args.examples, args.description, args.describe,
                          args.example)
    for path in written:
        print(path)
    recipe = written[0]
    if todo := sum(TODO in line for line in recipe.read_text(encoding="utf-8").splitlines()):
        console.print(f"next: replace the {TODO}s on {todo} lines of {recipe} (what each field holds, an example "
                      "value); xtk recipe check lists them", highlight=False, soft_wrap=True)
    if args.examples is None:
        console.print(f"next: your labelled rows ({{id, text, label}} JSONL) in {args.out}/data/{args.name}/"
                      "labelled.jsonl and test.jsonl, then", highlight=False, soft_wrap=True)
    console.print(f"xtk recipe check {recipe} --profile cpu && xtk run {recipe} --profile cpu", highlight=False,
                  soft_wrap=True)


def cmd_recipe_check(args) -> None:
    recipe, found = checked(args)
    fields = ", ".join(f"{f.name} ({f.type}{'?' if f.optional else ''})" for f in recipe.fields)
    print(f"{args.recipe}: {recipe.name}, fields {fields}")
    for loc, n in found.rows.items():
        name = recipe.data.test[loc[2]] if loc[1] == "test" else getattr(recipe.data, loc[1])
        print(f"  {'.'.join(map(str, loc))}: {name}: {n} rows")
    print(f"ok{f' ({len(found.warnings)} warnings above)' if found.warnings else ''}")


# What `xtk prompt` shows in place of a record's text: the user turn is the text itself, nothing around it.
PLACEHOLDER = "<the input text>"
SHOWN = (("teacher", "labelling, the teacher gate, the teacher's evaluation"),
         ("student", "training, the student's evaluation, predict, serve"))


def cmd_prompt(args) -> None:
    """The chats the teacher and the student are given, rendered as labelling, training and evaluation render them
    (recipe.prompt, evaluation.chat), and the JSON schema where a role's answers are decoded to it."""
    recipe = load(args)
    for who, used_by in SHOWN:
        spec = ROLES[who]
        for turn in chat(recipe.prompt(spec.prompt), PLACEHOLDER):
            print(f"=== {who} ({used_by}): {turn['role']} ===\n{turn['content']}\n")
        if recipe.eval.guided_json if spec.guided is None else spec.guided:
            print(f"=== {who}: the JSON schema its answers are decoded to (eval.guided_json) ===\n"
                  f"{json.dumps(recipe.json_schema(), ensure_ascii=False, indent=2)}\n")


def cmd_recipe_keys(args) -> None:
    for key in recipe_keys(recipe_of(args) if args.recipe else None):
        value = f"; value {key.value}" if key.value is not None else ""
        print(f"{key.path}: {key.type}; default {key.default}{value}")
        print(textwrap.indent(textwrap.fill(key.description, 100), "    "))


def cmd_advise(args) -> None:
    names = [n.strip() for n in args.candidates.split(",") if n.strip()] if args.candidates else None
    if args.candidates is not None and not names:
        raise StageError(f"--candidates {args.candidates!r}: name at least one model, e.g. smollm2-135m-instruct,gemma3-270m")
    advice = advise(recipe_of(args), args.recipe, rows=args.rows, ram_gib=args.ram, gpu_gib=args.gpu,
                    candidates=names)
    if args.json:
        print(json.dumps(advice.to_json(), ensure_ascii=False, indent=2, allow_nan=False))  # JSON has no NaN
    else:
        render(advice, Console(width=None if sys.stdout.isatty() else 160))


def cmd_data_generate(args) -> None:
    for path in generate(args.name, args.out, consent(args)):
        print(path)
