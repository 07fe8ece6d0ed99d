"""Commands that make a run: the whole flow (`run`), one stage of it (`prepare`, `train`, `merge`), an
evaluation (`eval`), the report of its evaluations (`report`), and a bake-off of many runs (`bakeoff`)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from toolkit.choose.bakeoff import run_bakeoff
from toolkit.choose.bakeoff_pairs import run_pair
from toolkit.choose.bakeoff_spec import load_spec
from toolkit.cli.resolve import checked, consent, open_to_make, open_to_use, recipe_of
from toolkit.evaluate.report import compare_runs
from toolkit.flow.pipeline import evaluate_model, run_all, run_stage
from toolkit.infer.backends import backend_kind
from toolkit.io.errors import StageError
from toolkit.run.manifest import slug
from toolkit.run.roles import ROLES, named_model, role

EVAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def cmd_run(args) -> None:
    with open_to_make(args, checked(args)[0]) as ctx:
        ctx.force_gate, ctx.hourly, ctx.yes = args.force, args.hourly, args.yes
        run_all(ctx, args.from_stage, args.only)
    for label, name in (("report", "report.md"), ("browse", "report.html"), ("accuracy", "accuracy.png"),
                        ("loss", "loss.png")):
        if (ctx.run_dir / name).is_file():
            print(f"{label + ':':<10}{ctx.run_dir / name}")


def stage_command(name: str):
    """The handler of a command that runs one stage (`xtk prepare`, `xtk train`, `xtk merge`)."""

    def handler(args) -> None:
        with open_to_make(args, recipe_of(args)) as ctx:
            if getattr(args, "labelled", None):
                ctx.labelled = Path(args.labelled)
            run_stage(ctx, name)

    return handler


def cmd_eval(args) -> None:
    if args.name and not EVAL_NAME.fullmatch(args.name):
        raise StageError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' (at most 64, no path parts)")
    with open_to_use(args) as ctx:
        spec = ROLES.get(args.model)
        if spec:  # a role, on another engine where asked: not an endpoint or the rules, which no engine loads
            r = role(ctx, args.model)
            r = replace(r, backend=r.backend if not backend_kind(r.backend).model_folder else args.backend or r.backend)
        else:
            r = named_model(ctx, args.model, args.backend, slug(args.model))
        if args.prompt and not backend_kind(r.backend).reads_prompt:
            raise StageError(f"--prompt {args.prompt}: the {r.backend} backend answers from the text alone, it "
                             "reads no prompt")
        r = replace(r, name=args.name or r.folder, prompt=args.prompt or r.prompt,
                    base_url=args.base_url or r.base_url, api_key_env=args.api_key_env or r.api_key_env,
                    guided_json=True if args.guided_json else r.guided_json)
        evaluate_model(ctx, r, tests=args.test)


def cmd_report(args) -> None:
    if args.compare:
        print("\n".join(compare_runs(recipe_of(args), *map(Path, args.compare))))
        return
    with open_to_use(args) as ctx:
        ctx.hourly = args.hourly
        for path in run_stage(ctx, "report"):
            print(path)


def cmd_bakeoff(args) -> None:
    bakeoff = load_spec(args.spec, args.out, consent(args))
    if args.pair is not None:  # one pair, in this process: how the bake-off runs each of its pairs
        run_pair(bakeoff, args.pair)
        return
    for path in run_bakeoff(bakeoff):
        print(path)
