"""The command table: each row names a sub-command, its arguments and the handler that runs it. It is the whole
interface of `xtk` (toolkit/cli/__init__.py makes the parser from it; tests/test_cli.py checks every row)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import Callable

from toolkit.cli.authoring import cmd_advise, cmd_data_generate, cmd_init, cmd_models_list, cmd_models_pull, \
    cmd_prompt, cmd_recipe_check, cmd_recipe_keys, cmd_recipe_show
from toolkit.cli.deploy import cmd_export, cmd_predict, cmd_serve
from toolkit.cli.runs import cmd_bakeoff, cmd_eval, cmd_report, cmd_run, stage_command
from toolkit.cli.teacher import cmd_label, cmd_synth
from toolkit.deploy.serve import Limits
from toolkit.flow.pipeline import STAGE_NAMES
from toolkit.infer.backends import BACKENDS, backend_names
from toolkit.model.models import EMBEDDED
from toolkit.run.roles import ROLES


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
           "runs only the functions xtk registered (its tasks' and classical baselines). swift:FLAG lets "
           "train.extra_args pass ms-swift a flag outside xtk's list (docs/trust.md). Repeat for several"),
    A("--trust-remote-code", action="store_true",
      help="allow model folders that ship their own Python code (sets student.trust_remote_code=true; a recipe "
           "setting it needs this flag too)"),
    A("--allow-path", action="append", default=[], metavar="DIR",
      help="let the recipe name files under DIR (prompts, choices, data, test files); without it a recipe names only "
           "files of its own project. Repeat for several"),
    A("--api-key-env", metavar="NAME",
      help="the environment variable holding the teacher's key (or, with eval --base-url, the endpoint's); a recipe "
           "may itself name only a variable called *_API_KEY (default: the recipe's teacher.api_key_env)"),
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
# One flag for the run folder on every command that reads or writes one; --out names anything else a command
# writes (predict's answers, label's labels, a project, a bake-off).
# What engines print (vLLM's log, a library's banner) is kept off stdout: toolkit/cli/deploy.py:engine_log.
VERBOSE = A("-v", "--verbose", action="store_true",
            help="the engine's output on stderr (default: in the run folder's COMMAND.log where it exists, "
                 "else stderr)")
RUN = A("--run", metavar="DIR", help="the run folder (default: runs/<recipe>/<profile or default>/<student>)")
MODEL = A("--model", help=" | ".join(ROLES) + " (a role of the run: "
          "student is its merged model) | an embedded name (xtk models list), a model folder, a hub id, or a served "
          "model name with the openai backend, or a GGUF file with the llamacpp backend (eval's --backend NAME, or "
          "on any command the override eval.backend=NAME)")


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
YES_COST = A("--yes", action="store_true", help="label even when the printed estimate is over "
             "teacher.confirm_above, without asking (for scripts: without a terminal it is refused otherwise)")
LIMITS = Limits()  # serve's flags' defaults
STAGE_LIST = ", ".join(STAGE_NAMES)
EMBEDDED_LIST = ", ".join(EMBEDDED)


COMMANDS: tuple[Command, ...] = (
    Command("run", f"the whole flow, stage by stage ({STAGE_LIST}); a stage that does not apply is skipped and "
            "the report says why, a finished one is skipped, an interrupted one resumes",
            cmd_run, RECIPE + (
                RUN,
                A("--from", dest="from_stage", metavar="STAGE",
                  help=f"re-run this stage and every one after it: {STAGE_LIST} (default: every stage, "
                  "finished ones skipped)"),
                A("--only", metavar="STAGE", help=f"run just this stage: {STAGE_LIST} (default: every stage)"),
                A("--force", action="store_true", help="label the pool even when the teacher gate says ITERATE or "
                  "RETHINK"),
                YES_COST,
                HOURLY,
            )),
    Command("models pull", f"materialise an embedded model ({EMBEDDED_LIST}) as a float32 safetensors folder, "
            "cached, or download a hub id; prints its folder", cmd_models_pull, (
                A("name", help=f"an embedded name ({EMBEDDED_LIST}) or a hub id such as Qwen/Qwen3-0.6B"),
                A("--force", action="store_true", help="rebuild even when a cached copy exists"),
                A("--trust-remote-code", action="store_true", help="accept a model folder that ships its own code"),
            )),
    Command("models list", "list the embedded models: kind, licence, commercial use, parameters, size, package, "
            "whether pulled", cmd_models_list),
    Command("recipe show", "print a recipe as resolved (profile and overrides applied)", cmd_recipe_show, RECIPE),
    Command("init", "write a new task's recipe from its fields: prompts rendered from the fields, what it cannot "
            "know marked TODO, the teacher priced and capped, your labelled rows split into its labelled and test "
            "files", cmd_init, (
                A("name", help="the task's name: recipes/NAME.yaml, data/NAME/"),
                A("--fields", required=True, metavar="FIELDS",
                  help="name:type[:flag] items, e.g. \"seller:str:grounded, amount:float?, date:date, "
                       "currency:enum(CNY|USD)\"; types as in docs/field-types.md, flags grounded and optional"),
                A("--from", dest="examples", metavar="FILE", help="labelled JSONL ({id, text, label}) split into "
                  "data/NAME/labelled.jsonl and a fifth as data/NAME/test.jsonl (default: none; write them "
                  "yourself)"),
                A("--description", help="one line saying what the task is (default: NAME and its fields)"),
                A("--describe", action="append", default=[], metavar="FIELD=TEXT",
                  help="what a field holds, in words, repeatable (default: a TODO that xtk recipe check refuses)"),
                A("--example", action="append", default=[], metavar="FIELD=VALUE",
                  help="an example of a field's value, for the prompts, repeatable (default: the first in "
                       "--from's rows, else a TODO)"),
                A("--out", metavar="DIR", default=".", help="the project folder to write into"),
            )),
    Command("recipe check", "check a recipe's data before a run: no TODO left (each named with its line), the "
            "teacher's key set where only the teacher can label, every file it names exists and reads row by row "
            "(file:line), labels carry every field with a valid value, nothing left from another task's recipe, "
            "sizes that fit the rows there are (xtk run checks the same first)", cmd_recipe_check, RECIPE),
    Command("prompt", "print exactly what the teacher and the student are given: each chat's system prompt and "
            "user turn (a placeholder for the text), and the JSON schema where answers are decoded to it",
            cmd_prompt, RECIPE),
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
            "stats.json", stage_command("prepare"), RECIPE + (
                RUN,
                A("--labelled", help="labelled JSONL ({id,text,label} or {messages}) (default: the run's data)"),)),
    Command("train", "train the student with swift sft (LoRA unless train.tuner_type says full), resuming an "
            "interrupted run; loss.png with a fit diagnosis", stage_command("train"),
            RECIPE + (RUN,)),
    Command("merge", "merge the trained LoRA checkpoint (the last, or the best with train.early_stop_evals) into "
            "the run's merged/ with swift export", stage_command("merge"), RECIPE + (RUN,)),
    Command("eval", "score a model on the recipe's test files: predictions.jsonl and metrics.json under the run's "
            "eval/", cmd_eval, RECIPE + (
                RUN,
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
                A("--guided-json", action="store_true", help="vLLM JSON-schema guided decoding"),
            )),
    Command("predict", "run the student on new texts (JSONL, CSV, TSV, Parquet) exactly as it was evaluated: "
            "one row per input with its fields and what is wrong with the answer, resumable", cmd_predict,
            RECIPE + (
                RUN,
                A("--input", required=True, help="texts: .jsonl ({id, text}), .csv, .tsv or .parquet"),
                A("--out", metavar="FILE", required=True,
                  help="answers: .jsonl or .parquet (by the suffix), or - for JSON lines on stdout (nothing else is "
                       "printed there)"),
                VERBOSE,
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
            RECIPE + (
                RUN,
                A(*MODEL.flags, default="student", **MODEL.options),
                A("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all) (default: 127.0.0.1)"),
                A("--port", type=int, default=8000, help="port (default: 8000)"),
                VERBOSE,
                A("--max-records", type=positive(int), default=LIMITS.max_records, metavar="N",
                  help="texts in one /extract request; more get 413 (the body's size limit follows from it)"),
                A("--read-timeout", type=positive(float), default=LIMITS.read_seconds, metavar="SECONDS",
                  help="to receive a request's body; a client sending slower gets 408 and is dropped"),
                A("--queue-timeout", type=positive(float), default=LIMITS.queue_seconds, metavar="SECONDS",
                  help="a request waiting this long for the engine gets 503 with Retry-After and leaves the queue"),
                A("--drain-timeout", type=positive(float), default=LIMITS.drain_seconds, metavar="SECONDS",
                  help="after SIGTERM, for the requests in flight to finish before the server exits"),
                A("--engine", choices=["local", "ray"], default="local",
                  help="local: one engine in this process; ray: replicas on Ray Serve behind one address "
                       "(default: local)"),
                A("--address", help="with --engine ray: a running cluster's address (default: start a local one)"),
                A("--replicas", type=positive(int),
                  help="with --engine ray: engines to run (default: one per GPU, else 1)"),
            )),
    Command("export", "the student as a GGUF file (llama.cpp's converter) with an Ollama Modelfile, scored by "
            "llama.cpp beside the merged student: exit 1 when it loses more than export.max_drop and McNemar's test "
            "shows it", cmd_export,
            RECIPE + (
                RUN,
                A("--format", required=True, choices=["gguf"], help="the file format (gguf: llama.cpp, Ollama)"),
                A("--quant", choices=["f16", "q8_0", "q4_k_m"], help="default: the recipe's export.quant"),
                A(*MODEL.flags, default="student", **MODEL.options),
                A("--accept-drop", action="store_true",
                  help="keep the export (exit 0) even when it loses more exact match than export.max_drop"),
                A("--parity-full", action="store_true",
                  help="score every test record for parity, not export.parity_records of them (a seeded sample)"),
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
                YES_COST,
                A("--check-gold", metavar="FILE", help="score the labels against gold {id, label} JSONL (default: no check)"),
            )),
    Command("synth", "the teacher writes new raw inputs in the style of your examples, steered by the recipe's "
            "synth block: a smoke batch first, the rest when you say yes; near duplicates, copies and test inputs "
            "removed; pool.jsonl (a data.pool to label), removed.jsonl, diversity.json", cmd_synth, RECIPE + (
                RUN,
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
            "evaluations; or --compare two runs", cmd_report, RECIPE + (
                RUN,
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
