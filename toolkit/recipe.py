"""Recipes: one YAML file per task, typed, with profiles and `key=value` overrides.

A recipe is validated as a whole after the profile and the overrides are applied, and every error names the
file, the key (with its line when it came from the file) and what was expected.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from toolkit.jsonl import DataError, file_problem, iter_lines, read_text


class RecipeError(ValueError):
    """A recipe that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Normaliser = Literal["strip", "width", "digits", "lower", "nospace"]


class FieldSpec(_Strict):
    name: str
    # What the field holds (toolkit/fields.py): str, enum (one of its choices: classification), list[str]
    # (entities, compared order-free), int, float or bool.
    type: Literal["str", "enum", "list[str]", "int", "float", "bool"] = "str"
    description: str
    normalise: list[Normaliser] = Field(default_factory=lambda: ["strip", "width"])
    # A grounded value must occur in the input after normalisation, else the teacher's label is rejected.
    grounded: bool = False
    # The longest sensible value: the schema's maxLength, so guided decoding ends a string a looping model
    # would otherwise run on until max_new_tokens, leaving unparseable JSON.
    max_chars: int | None = Field(default=None, gt=0)
    # A list's most items: the schema's maxItems, which ends a list a looping model would run on.
    max_items: int | None = Field(default=None, gt=0)
    # A closed set: the values a label may take, inline or one a line in a UTF-8 file (recipe-relative; an
    # empty line allows ""). Labels outside it are refused; small sets become the schema's enum.
    choices: list[str] | None = None
    choices_file: str | None = None

    @model_validator(mode="after")
    def _one_source_of_choices(self) -> FieldSpec:
        from toolkit.fields import GROUNDABLE, TEXT_TYPES

        if self.choices is not None and self.choices_file is not None:
            raise ValueError("either choices or choices_file, not both")
        if self.type == "enum" and self.choices is None and self.choices_file is None:
            raise ValueError("an enum field needs its choices (choices or choices_file)")
        if self.type not in TEXT_TYPES and (self.choices is not None or self.choices_file is not None):
            raise ValueError(f"choices apply to text fields, not to type {self.type}")
        if self.grounded and self.type not in GROUNDABLE:
            raise ValueError(f"grounded applies to str and list[str] fields, not to type {self.type}")
        if self.max_items is not None and self.type != "list[str]":
            raise ValueError("max_items applies to list[str] fields only")
        return self


class Prompts(_Strict):
    teacher: str
    base: str  # the detailed prompt, for models that were not fine-tuned
    student: str  # the short prompt the student is trained and evaluated with


def _code_ref(ref: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", ref):
        raise ValueError("module:function (e.g. toolkit.baseline:answer)")
    return ref


# How a recipe names code (its data builder, its rule baseline): `package.module:function`, or null for none.
CodeRef = Annotated[str, AfterValidator(_code_ref)]


def load_ref(ref: str, key: str):
    """The function a recipe key names as `module:function`; RecipeError naming the key when it is not there."""
    import importlib

    module, _, name = ref.partition(":")
    try:
        found = getattr(importlib.import_module(module), name, None)
    except ImportError as exc:
        raise RecipeError(f"recipe key {key}: {ref}: cannot import {module} ({exc})") from None
    if not callable(found):
        raise RecipeError(f"recipe key {key}: {ref}: {module} has no function {name}")
    return found


class DataSpec(_Strict):
    # The function that builds this recipe's data files (`xtk data generate NAME`), or none.
    generator: CodeRef | None = None
    # Where training labels come from, first that applies: `labelled` (your own {id, text, label} JSONL or
    # ms-swift messages rows), the teacher labelling `pool` when its key is set, or `pool_gold`.
    labelled: str | None = None
    pool: str | None = None  # JSONL {id, text}: raw strings for labelling and training
    pool_gold: str | None = None  # JSONL {id, label}: the generator's labels, to check a teacher against
    test: list[str]
    train_records: int = Field(gt=0)
    val_fraction: float = Field(ge=0, lt=1)
    seed: int = 42
    # Label fields whose values the training rows should cover evenly: when the labelled rows outnumber
    # train_records, each combination of these fields' values is kept once before any is kept twice (no value
    # left out by chance, as classes or counties are by a random sample). Empty: a plain random sample.
    spread_over: list[str] = []
    # The longest input text accepted for labelling and training: a runaway text must not reach the teacher
    # as one (paid) request, nor the student's training data.
    max_input_chars: int = Field(default=4000, gt=0)

    @model_validator(mode="after")
    def _some_training_data(self) -> DataSpec:
        if self.labelled is None and self.pool is None:
            raise ValueError("labelled (your labelled JSONL) or pool (raw texts for the teacher), or both")
        if self.pool_gold is not None and self.pool is None:
            raise ValueError("pool_gold labels the pool: name the pool too")
        return self


class TeacherSpec(_Strict):
    base_url: str
    model: str
    api_key_env: str  # the key is read from this variable and never written anywhere
    concurrency: int = Field(default=16, gt=0)
    max_retries: int = Field(default=6, ge=0)
    timeout_s: float = Field(default=120, gt=0)
    max_tokens: int = Field(default=512, gt=0)
    temperature: float = 0.0
    enable_thinking: bool | None = False  # sent as extra_body for Qwen3 teachers; None sends nothing
    price_in_per_mtok: float = 0.0
    price_out_per_mtok: float = 0.0


class StudentSpec(_Strict):
    model: str  # an embedded name (`xtk models list`), a local folder or a hub id
    model_type: str | None = None
    template: str | None = None
    trust_remote_code: bool = False


class TrainSpec(_Strict):
    tuner_type: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(gt=0)
    lora_alpha: int = Field(gt=0)
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    target_modules: str = "all-linear"
    num_train_epochs: float = Field(gt=0)
    max_steps: int = -1  # > 0 overrides the epochs
    per_device_train_batch_size: int = Field(gt=0)
    per_device_eval_batch_size: int = Field(gt=0)
    gradient_accumulation_steps: int = Field(gt=0)
    learning_rate: float = Field(gt=0)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(ge=0, lt=1)
    weight_decay: float = Field(default=0.1, ge=0)
    max_length: int = Field(gt=0)
    torch_dtype: Literal["bfloat16", "float16", "float32"]
    gradient_checkpointing: bool = True
    # CPU: the frozen output layer's matmul on contiguous rows, in bfloat16 where the CPU has it
    # (toolkit/swift_plugin.py); the logits stay in torch_dtype for the loss.
    bf16_output_layer: bool = False
    packing: bool = False
    eval_steps: int = Field(gt=0)
    save_steps: int = Field(gt=0)
    save_total_limit: int = Field(gt=0)
    logging_steps: int = Field(gt=0)
    dataloader_num_workers: int = Field(ge=0)
    seed: int = 42
    # Threads per training process: on 2 cores two processes of one thread each trained fastest (measured:
    # benchmarks/train_speed.py).
    omp_num_threads: int | None = None
    nproc_per_node: int = Field(default=1, gt=0)
    # Several machines: the same recipe runs on each, node_rank 0..nnodes-1, all meeting at node 0's
    # master_addr:master_port (ms-swift hands these to torchrun as NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT).
    # On one machine master_port is left free: a DDP training then gets a port of its own.
    nnodes: int = Field(default=1, gt=0)
    node_rank: int = Field(default=0, ge=0)
    master_addr: str | None = None
    master_port: int | None = Field(default=None, gt=0, le=65535)
    # One of ms-swift's shipped ZeRO configs (DEEPSPEED_PRESETS) or a DeepSpeed JSON file (or JSON text).
    deepspeed: str | None = None
    # Training to the plateau: stop once the eval loss has not improved for this many evaluations (ms-swift's
    # --early_stop_interval, counted at checkpoints, hence save_steps = eval_steps) and merge the checkpoint of
    # lowest eval loss rather than the last. Needs a validation split; num_train_epochs is then the ceiling.
    early_stop_evals: int | None = Field(default=None, gt=0)
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed_config(cls, value: str | None) -> str | None:
        if value is None or value in DEEPSPEED_PRESETS or value.endswith(".json") or value.lstrip().startswith("{"):
            return value
        raise ValueError(f"one of ms-swift's DeepSpeed configs ({', '.join(DEEPSPEED_PRESETS)}) or a DeepSpeed "
                         "JSON file")

    @model_validator(mode="after")
    def _plugin_flags_kept(self) -> TrainSpec:
        # ms-swift keeps the last of a repeated list flag: these in extra_args would drop the plugin's
        taken = {"--external_plugins", "--callbacks"} & set(self.extra_args)
        if self.bf16_output_layer and taken:
            raise ValueError(f"bf16_output_layer passes ms-swift {' and '.join(sorted(taken))} itself; extra_args "
                             "naming them would replace its own: set bf16_output_layer false or drop them")
        return self

    @model_validator(mode="after")
    def _early_stop_counts_evaluations(self) -> TrainSpec:
        if self.early_stop_evals is not None and self.save_steps != self.eval_steps:
            raise ValueError(f"early_stop_evals counts evaluations at checkpoints: save_steps ({self.save_steps}) "
                             f"must equal eval_steps ({self.eval_steps})")
        return self

    @model_validator(mode="after")
    def _nodes_agree(self) -> TrainSpec:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank below nnodes (nodes count from 0), got node_rank {self.node_rank} with "
                             f"nnodes {self.nnodes}")
        if self.nnodes > 1 and not self.master_addr:
            raise ValueError(f"master_addr (the address of node 0, which every node connects to) when nnodes is "
                             f"{self.nnodes}")
        return self


# ms-swift 4.6 resolves these names to its own config files (swift/config/<name>.json).
DEEPSPEED_PRESETS = ("zero0", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload")


class VllmSpec(_Strict):
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    max_model_len: int = Field(default=4096, gt=0)
    cpu_kvcache_gib: int = Field(default=4, gt=0)
    dtype: str = "auto"
    # GPUs one model is split over (vllm.LLM's tensor_parallel_size): for a model too large for one GPU.
    tensor_parallel_size: int = Field(default=1, gt=0)


class EvalSpec(_Strict):
    backend: Literal["auto", "vllm", "transformers", "openai"] = "auto"
    batch_size: int = Field(default=16, gt=0)
    max_new_tokens: int = Field(default=256, gt=0)
    guided_json: bool = False
    limit: int | None = Field(default=None, gt=0)  # first N records of each test file
    # The base model before training is scored on fewer records where generation is costly (CPU): it answers
    # with long non-JSON text to max_new_tokens, and its figure is near 0 with a tight interval anyway.
    base_limit: int | None = Field(default=None, gt=0)
    vllm: VllmSpec = Field(default_factory=VllmSpec)


class ExportSpec(_Strict):
    # `xtk export`'s quantisation when --quant is not given: f16, q8_0 (both by llama.cpp's converter), q4_k_m.
    quant: Literal["f16", "q8_0", "q4_k_m"] = "q8_0"
    # The most whole-record exact match (a fraction: 0.01 is 1 point) the exported file may lose against the
    # merged student on the recipe's test files, all records together; more fails the export unless
    # --accept-drop.
    max_drop: float = Field(default=0.01, ge=0, le=1)


class Recipe(_Strict):
    name: str
    description: str = ""
    fields: list[FieldSpec]
    prompts: Prompts
    data: DataSpec
    teacher: TeacherSpec
    student: StudentSpec
    train: TrainSpec
    eval: EvalSpec = Field(default_factory=EvalSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    # The baseline, evaluated as `rules`: a function text -> the answer's JSON text, or a @trained one that first
    # learns from the run's training split (toolkit/classical.py); none: not evaluated.
    baseline: CodeRef | None = None
    # A post-step on the fine-tuned student's answers (text, parsed answer -> answer), scored as its own row
    # `resolved` beside the pure student's (e.g. completing province/city from the district with a table).
    resolver: CodeRef | None = None
    # Also train a linear classification head with ms-swift itself (`swift sft --task_type seq_cls`) and
    # evaluate it as `head` (toolkit/seqcls.py): the encoder-style alternative to a generative student. One enum
    # field only: its choices are the head's labels.
    classification_head: bool = False
    # Set by `load_recipe`: where relative paths in the recipe are resolved from, and what was applied.
    root: Path = Path(".")
    profile: str | None = None
    _choices_cache: dict[str, list[str] | None] = PrivateAttr(default_factory=dict)
    _allowed_cache: dict[str, frozenset[str] | None] = PrivateAttr(default_factory=dict)

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, fields: list[FieldSpec]) -> list[FieldSpec]:
        names = [f.name for f in fields]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"field names must be unique and non-empty, got {names}")
        return fields

    @model_validator(mode="after")
    def _spread_over_fields(self) -> Recipe:
        unknown = [f for f in self.data.spread_over if f not in self.field_names]
        if unknown:
            raise ValueError(f"data.spread_over names {unknown}, not fields of this recipe ({self.field_names})")
        return self

    @model_validator(mode="after")
    def _head_has_one_enum(self) -> Recipe:
        if self.classification_head and [f.type for f in self.fields] != ["enum"]:
            raise ValueError("classification_head needs exactly one field, of type enum (its choices are the "
                             f"head's labels); this recipe has {[f'{f.name}: {f.type}' for f in self.fields]}")
        return self

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def path(self, relative: str) -> Path:
        """A path named in the recipe, resolved against the project root the recipe lives in."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p

    def prompt(self, which: Literal["teacher", "base", "student"]) -> str:
        return self.path(getattr(self.prompts, which)).read_text(encoding="utf-8").strip()

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r}; the recipe has {self.field_names}")

    def choices(self, field_name: str) -> list[str] | None:
        """A field's allowed values as written (inline or read from its choices_file, once), or None."""
        if field_name not in self._choices_cache:
            f = self.field(field_name)
            if f.choices_file is not None:
                # Line endings only: the field's normalisers decide what else is insignificant.
                values = [line.rstrip("\r\n") for _, line in iter_lines(self.path(f.choices_file), "a text file")]
            else:
                values = f.choices
            self._choices_cache[field_name] = None if values is None else list(dict.fromkeys(values))
        return self._choices_cache[field_name]

    def allowed_values(self, field_name: str) -> frozenset[str] | None:
        """The values a field's label may take, normalised with the field's normalisers; None: any value."""
        if field_name not in self._allowed_cache:
            from toolkit.fields import normalise

            values, steps = self.choices(field_name), self.field(field_name).normalise
            self._allowed_cache[field_name] = None if values is None else frozenset(normalise(v, steps) for v in values)
        return self._allowed_cache[field_name]

    def choices_source(self, field_name: str) -> str:
        """Where a field's allowed values come from, for messages."""
        return self.field(field_name).choices_file or f"fields.{field_name}.choices"

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of one answer, for guided decoding and for validating labels."""
        from toolkit.fields import schema

        return {
            "type": "object",
            "properties": {f.name: schema(f, self.choices(f.name), MAX_ENUM) for f in self.fields},
            "required": self.field_names,
            "additionalProperties": False,
        }

    def public_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"root"})


# A larger closed set (every county) is checked after decoding but left out of the schema: an enum that size
# makes guided decoding's grammar slow to build.
MAX_ENUM = 512


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        self.line = line
        self.problem = f"duplicate key {key!r} (first given on line {first}): give each key once"
        super().__init__(f"line {line}: {self.problem}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, where PyYAML silently keeps the last."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may be overridden by design
                    continue
                if isinstance(key_node, yaml.ScalarNode):  # a complex key is refused by PyYAML anyway
                    key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                    if key in first:
                        raise _DuplicateKey(key, line, first[key])
                    first[key] = line
        return super().construct_mapping(node, deep)


def _deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.max_steps=5` -> (['train', 'max_steps'], 5); the value is read as YAML, so types survive."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r}: expected key=value, e.g. train.max_steps=5")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return key.strip().split("."), value


def _apply_override(data: dict, keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise RecipeError(f"override {'.'.join(keys)}: '{k}' is not a section")
    node[keys[-1]] = value


def _key_lines(text: str) -> dict[tuple, int]:
    """Line number (1-based) of every mapping key in a YAML file, by its key path."""
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = prefix + (k.value,)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[prefix + (i,)] = v.start_mark.line + 1
                walk(v, prefix + (i,))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return lines


_EXPECTED = {
    "extra_forbidden": "unknown key (misspelt?)",
    "missing": "required key is missing",
}


def _describe(err: dict) -> str:
    if err["type"] in _EXPECTED:
        return _EXPECTED[err["type"]]
    expected = f"expected {err['msg'].removeprefix('Input should be ').removeprefix('Value error, ')}"
    # A whole section as the input (from a check across its keys) would bury the message.
    return expected if isinstance(err.get("input"), dict) else f"{expected}, got {err.get('input')!r}"


def _where(path: Path, loc: tuple, lines: dict[tuple, int], profile: str | None, overridden: set[tuple],
           missing: bool = False) -> str:
    """`file:line: key 'a.b'` for a key of the recipe, the line taken from the profile where it set the key."""
    dotted = ".".join(str(p) for p in loc)
    if loc in overridden:
        return f"{path}: key '{dotted}' (from a command-line override)"
    line = (lines.get(("profiles", profile) + loc) if profile else None) or lines.get(loc)
    if line is None and missing:
        line = lines.get(loc[:-1])
    return f"{path}:{line}: key '{dotted}'" if line else f"{path}: key '{dotted}'"


def _format_errors(path: Path, exc: ValidationError, lines: dict[tuple, int], profile: str | None,
                   overridden: set[tuple]) -> str:
    out = [f"{_where(path, tuple(err['loc']), lines, profile, overridden, err['type'] == 'missing')}: {_describe(err)}"
           for err in exc.errors()]
    return "invalid recipe\n  " + "\n  ".join(out)


def _check_files(recipe: Recipe, path: Path, text: str, overridden: set[tuple]) -> None:
    """Every file the recipe names for itself (prompts, choices) exists now, not when a stage first reads it."""
    named = [(("prompts", which), getattr(recipe.prompts, which), "a prompt file")
             for which in ("teacher", "base", "student")]
    named += [(("fields", i, "choices_file"), f.choices_file, "a text file of allowed values")
              for i, f in enumerate(recipe.fields) if f.choices_file is not None]
    for loc, relative, expected in named:
        problem = file_problem(recipe.path(relative), expected)
        if problem:
            where = _where(path, loc, _key_lines(text), recipe.profile, overridden)
            raise RecipeError(f"{where}: {recipe.path(relative)}: {problem}")


def read_yaml_mapping(path: Path, what: str, expected: str, error: type[RecipeError]) -> tuple[str, dict]:
    """A YAML file's text and its top-level mapping. Every way it can be unusable (missing, a directory,
    unreadable, not UTF-8, a duplicate key, not YAML, not a mapping) is an `error` naming the file (and line)."""
    if not path.exists():
        raise error(f"{path}: no such {what}")
    try:
        text = read_text(path, f"a {what} (YAML)")
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except DataError as exc:
        raise error(str(exc)) from None
    except _DuplicateKey as exc:
        raise error(f"{path}:{exc.line}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected {expected}, got {type(raw).__name__}")
    return text, raw


def load_recipe(path: str | Path, profile: str | None = None, overrides: list[str] = ()) -> Recipe:
    """Read a recipe, apply a profile and `key=value` overrides, and validate the result."""
    path = Path(path)
    text, raw = read_yaml_mapping(path, "recipe file", "a mapping of keys at the top level", RecipeError)
    profiles = raw.pop("profiles", None) or {}
    if profile is not None:
        if profile not in profiles:
            raise RecipeError(f"{path}: no profile {profile!r}; the recipe has: {', '.join(profiles) or 'none'}")
        raw = _deep_merge(raw, profiles[profile])
    overridden: set[tuple] = set()
    for given in overrides:  # not `text`: the YAML text still gives the error messages their line numbers
        keys, value = parse_override(given)
        _apply_override(raw, keys, value)
        overridden.add(tuple(keys))
    # Relative paths in a recipe are relative to the project root: the parent of recipes/.
    root = path.resolve().parent.parent if path.resolve().parent.name == "recipes" else path.resolve().parent
    try:
        recipe = Recipe(**raw, root=root, profile=profile)
    except ValidationError as exc:
        raise RecipeError(_format_errors(path, exc, _key_lines(text), profile, overridden)) from None
    except TypeError as exc:  # e.g. a duplicate of root/profile in the file
        raise RecipeError(f"{path}: {exc}") from None
    _check_files(recipe, path, text, overridden)
    return recipe
