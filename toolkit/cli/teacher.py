"""Commands where the teacher makes data: `label` (answers for raw texts, after the teacher gate) and `synth`
(new raw texts in the style of examples)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.markup import escape

from toolkit.cli.resolve import console, recipe_of, run_dir
from toolkit.data.label import check_gold, read_inputs, run_label, teacher_key
from toolkit.data.synth import run_synth
from toolkit.flow.pipeline import gate_labelling
from toolkit.io.errors import StageError
from toolkit.io.jsonl import read_jsonl, write_root


def cmd_label(args) -> None:
    recipe = recipe_of(args)
    teacher = {k: v for k, v in (("base_url", args.base_url), ("model", args.teacher_model)) if v}
    if teacher:  # the gate scores the teacher that labels
        recipe = recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update=teacher)})
    run = run_dir(args, recipe)
    out = Path(args.out) if args.out else run / "data"  # where `xtk run` reads labels
    if not args.input and recipe.data.pool is None:
        raise StageError(f"recipe {recipe.name!r} has no data.pool: give the texts to label with --input")
    # what would stop labelling stops it before the gate asks anything
    rows = read_inputs(args.input or recipe.path(recipe.data.pool), recipe.data.max_input_chars)
    teacher_key(recipe, args.votes)
    gate_labelling(recipe, run, args.force)
    with write_root(out if args.out else run):  # the run's data/ is written as the run is: no link below it
        summary = run_label(recipe, rows, out, votes=args.votes, retry_rejects=args.retry_rejects, yes=args.yes)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    if args.check_gold:
        m = check_gold(recipe, out / "labelled.jsonl", args.check_gold, out / "label_check.json")
        fields = ", ".join(f"{k} {100 * v['value']:.1f}%" for k, v in m["fields"].items())
        print(f"teacher vs gold: exact match {100 * m['exact_match']['value']:.1f}% (n={m['n']}); {fields}")


def cmd_synth(args) -> None:
    recipe = recipe_of(args)
    run = run_dir(args, recipe)
    out = Path(args.out) if args.out else run / "synth"
    with write_root(out if args.out else run):
        summary = run_synth(recipe, args.examples, args.n, out, yes=args.yes, base_url=args.base_url,
                            model=args.teacher_model)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    if summary["smoke"]:
        for row in read_jsonl(out / "smoke.jsonl"):
            console.print(f"  {row['id']}: {escape(row['text'])}", highlight=False, soft_wrap=True)
        console.print(f"synth: the smoke batch above ({out / 'smoke.jsonl'}); if it looks right, run again with "
                      f"--yes for all {args.n} (its answers are not paid for again)")
    else:
        console.print(f"synth: {out / 'pool.jsonl'}: name it as data.pool to label it", highlight=False)
