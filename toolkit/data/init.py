"""`xtk init NAME --fields ...`: a new task's recipe, written from a line of fields, ready to run once its TODOs
are written.

The recipe names no prompt file (its prompts are rendered from the fields, docs/recipes.md#prompts), no data
builder and no baseline; its data are the user's labelled rows: `--from FILE` splits them into
data/NAME/labelled.jsonl and data/NAME/test.jsonl, checked row by row first. Each field's description says what it
holds and shows an example value: given (--describe, --example), the example taken from --from's rows, else a TODO
that `xtk recipe check` refuses with its line. The teacher has prices, a currency and a cost cap. Nothing is
written unless all of it can be.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from toolkit.data.prepare import read_records
from toolkit.task.fields import FieldSpec
from toolkit.io.jsonl import write_jsonl, write_text
from toolkit.model.models import default_student
from toolkit.task.recipe import Recipe
from toolkit.io.errors import RecipeError
from toolkit.io.trust import name_problem

FLAGS = ("grounded", "optional")
# One field of --fields: name[:type[:flag...]]; a type takes its choices in parentheses: enum(CNY|USD).
FIELD = re.compile(r"(?P<name>[A-Za-z_]\w*)(?::(?P<type>[^:(]+?)(?:\((?P<choices>[^)]*)\))?(?P<optional>\?)?)?"
                   r"(?P<flags>(?::\w+)*)")
TEST_SHARE = 0.2  # of --from's rows held out as the test file (at least one)
# What init cannot know is left marked: `xtk recipe check` lists every TODO with its line and refuses the recipe
# until each is written (toolkit/flow/check.py).
TODO = "TODO"

RECIPE = """\
# {name}: written by `xtk init`. The prompts are rendered from the fields (docs/recipes.md#prompts); to write
# your own, name files under prompts: (teacher, base, student). Check it, then run it:
#
#   xtk recipe check recipes/{name}.yaml --profile cpu
#   xtk run recipes/{name}.yaml --profile cpu
name: {name}
description: {description}

fields:
{fields}

data:
  labelled: data/{name}/labelled.jsonl   # your labelled rows {{id, text, label}}; or pool: raw texts for the teacher
  test: [data/{name}/test.jsonl]
  train_records: 2000
  val_fraction: 0.05
  seed: 42
  max_input_chars: 4000

teacher:   # labels data.pool when it is set and $DASHSCOPE_API_KEY is
  base_url: https://dashscope.aliyuncs.com/compatible-mode/v1
  model: qwen3-235b-a22b
  api_key_env: DASHSCOPE_API_KEY
  max_tokens: 512
  enable_thinking: false
  price_in_per_mtok: 0.29   # per million tokens, in teacher.currency: DashScope's list price; set your own
  price_out_per_mtok: 1.15
  currency: USD
  max_cost: 5.0             # the most the label folder may spend, over all its runs (docs/trust.md)

student:   # {gpu.why}
  model: {gpu.model}
  model_type: {gpu.model_type}
  template: {gpu.template}

train:
  tuner_type: lora
  lora_rank: 8
  lora_alpha: 32
  num_train_epochs: 3
  per_device_train_batch_size: 16
  per_device_eval_batch_size: 16
  gradient_accumulation_steps: 4
  learning_rate: 1.0e-4
  warmup_ratio: 0.05
  max_length: 1024
  torch_dtype: bfloat16
  eval_steps: 20
  save_steps: 20
  save_total_limit: 2
  logging_steps: 5
  dataloader_num_workers: 4

eval:
  batch_size: 64
  max_new_tokens: 256

profiles:
  gpu: {{}}
  cpu:   # on 2 cores
    # the student: {cpu.why}
    student: {{model: {cpu.model}, model_type: {cpu.model_type}, template: {cpu.template}}}
    train:
      num_train_epochs: 1
      nproc_per_node: 2
      per_device_train_batch_size: 2
      per_device_eval_batch_size: 4
      gradient_accumulation_steps: 1
      learning_rate: 5.0e-4
      max_length: 512
      torch_dtype: float32
      gradient_checkpointing: false
      eval_steps: 50
      save_steps: 50
      logging_steps: 1
      dataloader_num_workers: 0
      omp_num_threads: 1
    eval:
      base_limit: 50
      max_new_tokens: 160
      vllm: {{max_model_len: 1024, cpu_kvcache_gib: 4}}
"""


def parse_fields(text: str) -> list[dict]:
    """`seller:str:grounded, amount:float?, currency:enum(CNY|USD)` -> the recipe's field declarations, each
    checked as the recipe will check it; RecipeError naming the item and what was expected."""
    items = [i.strip() for i in re.split(r",(?![^()]*\))", text) if i.strip()]
    if not items:
        raise RecipeError("--fields: expected at least one field, e.g. \"seller:str:grounded, amount:float?\"")
    out = []
    for item in items:
        m = FIELD.fullmatch(item)
        if not m:
            raise RecipeError(f"--fields item {item!r}: expected name[:type[:flag...]], e.g. seller:str:grounded, "
                              "amount:float?, currency:enum(CNY|USD)")
        field: dict = {"name": m["name"], "type": (m["type"] or "str").strip() + (m["optional"] or ""),
                       "description": f"{TODO}: what {m['name']} holds, in words"}
        if m["choices"] is not None:
            field["choices"] = [c.strip() for c in m["choices"].split("|")]
        for flag in filter(None, m["flags"].split(":")):
            if flag not in FLAGS:
                raise RecipeError(f"--fields item {item!r}: unknown flag {flag!r}; expected {' or '.join(FLAGS)}")
            field[flag] = True
        try:
            FieldSpec(**field)
        except ValidationError as exc:
            problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise RecipeError(f"--fields item {item!r}: expected {problems}") from None
        out.append(field)
    return out


def given_per_field(items: list[str], flag: str, names: list[str]) -> dict[str, str]:
    """`--describe amount="the total, tax included"` items as {field: text}; RecipeError for a field not in
    --fields or an item without `=`."""
    out = {}
    for item in items:
        field, eq, text = item.partition("=")
        if not eq or not text.strip():
            raise RecipeError(f"{flag} {item!r}: expected FIELD=TEXT, e.g. {flag} {names[0]}=...")
        if field.strip() not in names:
            raise RecipeError(f"{flag} {item!r}: no field {field.strip()!r} in --fields ({', '.join(names)})")
        out[field.strip()] = text.strip()
    return out


def describe(field: dict, description: str | None, example: str | None) -> str:
    """A field's description as the prompts show it: what it holds (given, else a TODO) and, beside a value not
    from a closed set, an example value (given, taken from --from's rows, else a TODO)."""
    text = description or field["description"]
    if "choices" in field:
        return text
    return f"{text}; e.g. {example or f'{TODO}: an example value'}"


def first_example(rows: list[dict], name: str) -> str | None:
    """The first value a labelled row gives the field (not null, not empty), as the prompt would show it."""
    for row in rows:
        value = row["label"].get(name)
        if value not in (None, "", []):
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return None


def init_recipe(name: str, fields: str, out: str | Path = ".", examples: str | Path | None = None,
                description: str | None = None, describes: list[str] = (), values: list[str] = ()) -> list[Path]:
    """Write recipes/NAME.yaml under `out` (the project folder), and with `examples` (labelled JSONL) its
    data/NAME/labelled.jsonl and test.jsonl; the paths written. `describes` and `values` are FIELD=TEXT items:
    what a field holds and an example value (else taken from the examples' rows, else left as a TODO)."""
    if problem := name_problem(name):
        raise RecipeError(f"NAME: expected {problem}")
    out = Path(out)
    path = out / "recipes" / f"{name}.yaml"
    if path.exists():
        raise RecipeError(f"{path}: already there: choose another NAME, or edit that recipe")
    specs = parse_fields(fields)
    names = [f["name"] for f in specs]
    said, shown = given_per_field(list(describes), "--describe", names), given_per_field(list(values), "--example", names)

    def render() -> str:
        listed = ", ".join(names)
        return RECIPE.format(name=name, description=json.dumps(description or f"{name}: {listed} from the input.",
                                                               ensure_ascii=False),
                             fields="\n".join(f"  - {json.dumps(f, ensure_ascii=False)}" for f in specs),
                             gpu=default_student("gpu"), cpu=default_student("cpu"))

    raw = yaml.safe_load(render())
    raw.pop("profiles")
    try:
        recipe = Recipe(**raw, root=out.resolve())  # what load_recipe reads, to check the examples against
    except ValidationError as exc:  # what no single --fields item shows: a field name given twice
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise RecipeError(f"--fields {fields!r}: expected {problems}") from None
    targets = [path, *([recipe.path(recipe.data.labelled), recipe.path(recipe.data.test[0])] if examples else [])]
    for target in targets:  # a planted link (recipes/, data/) must not carry the files out of the project folder
        if not target.resolve().is_relative_to(out.resolve()):
            raise RecipeError(f"{target}: leads outside {out.resolve()} (a link on the way?): nothing written")
    rows = []
    if examples is not None:
        rows = read_records(recipe, Path(examples))  # every row checked against the fields, with file and line
        if len(rows) < 2:
            raise RecipeError(f"{examples}: {len(rows)} labelled row: at least 2, one to train on and one to test")
    for f in specs:
        f["description"] = describe(f, said.get(f["name"]), shown.get(f["name"]) or first_example(rows, f["name"]))
    text = render()
    written = []
    if rows:
        random.Random(recipe.data.seed).shuffle(rows)
        n_test = max(1, round(len(rows) * TEST_SHARE))
        written += [write_jsonl(recipe.path(recipe.data.labelled), rows[n_test:]),
                    write_jsonl(recipe.path(recipe.data.test[0]), rows[:n_test])]
    return [write_text(path, text), *written]
