"""Recipes: one YAML file per task, typed, with profiles and `key=value` overrides.

A recipe is validated as a whole after the profile and the overrides are applied, and every error names the
file, the key (with its line when it came from the file) and what was expected.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from toolkit.task.fields import FieldSpec, example, hint, normalise, not_classes, schema
from toolkit.io.jsonl import file_problem, iter_lines, read_text
from toolkit.io.errors import DataError, RecipeError

if TYPE_CHECKING:
    from toolkit.io.trust import Consent


class AtKey(ValueError):
    """A check across keys whose error belongs to one of them: `loc`, below the model that raises it, is where
    the message points (its key and line), where pydantic would point at the model as a whole."""

    def __init__(self, loc: tuple, message: str):
        self.loc = loc
        super().__init__(message)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Prompts(_Strict):
    teacher: str | None = Field(default=None, description=(
        "The teacher's prompt file (recipe-relative): the detailed instructions the teacher labels with; one that "
        "does not name every field is warned of (`xtk recipe check`). Null: rendered from the fields with "
        "prompts.template."))
    base: str | None = Field(default=None, description=(
        "The detailed prompt file, for models that were not fine-tuned (the base model, option likelihood); one "
        "that does not name every field is warned of. Null: rendered from the fields with prompts.template."))
    student: str | None = Field(default=None, description=(
        "The short prompt file the student is trained and evaluated with (it may name no field: the student learns "
        "the keys from its training answers). Null: one line naming the fields."))
    template: str | None = Field(default=None, description=(
        "The template file (recipe-relative) the teacher's and base prompts are rendered with where they are null: "
        "text with $task (the description), $fields (a line a field: name, description, what a value is), $keys "
        "and $example (an answer); $$ is a dollar sign. Null: xtk's own (docs/recipes.md)."))


# The teacher's and base prompts where a recipe gives no file and no prompts.template.
PROMPT_TEMPLATE = """\
$task

Read the input and answer with one JSON object and nothing else. Its keys, in this order:
$fields

An answer looks like this (the values are only examples):
$example
"""


def _code_ref(ref: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", ref):
        raise ValueError("module:function (e.g. toolkit.infer.classical:tfidf_logreg)")
    return ref


# How a recipe names code (its data builder, its rule baseline): `package.module:function`, or null for none.
CodeRef = Annotated[str, AfterValidator(_code_ref)]


def load_ref(ref: str, key: str):
    """The function a recipe key names as `module:function`; RecipeError naming the key when it is not there.
    Which modules a recipe may name is checked where it loads (toolkit/io/trust.py)."""
    from toolkit.io.trust import import_module

    module, _, name = ref.partition(":")
    try:
        found = getattr(import_module(module), name, None)
    except ImportError as exc:
        raise RecipeError(f"recipe key {key}: {ref}: cannot import {module} ({exc})") from None
    if not callable(found):
        raise RecipeError(f"recipe key {key}: {ref}: {module} has no function {name}")
    return found


class DataSpec(_Strict):
    generator: CodeRef | None = Field(default=None, description=(
        "The function that builds this recipe's data files (`xtk data generate NAME`), as module:function; null: "
        "none."))
    labelled: str | None = Field(default=None, description=(
        "Your own labelled JSONL ({id, text, label} or ms-swift messages rows): used for training when set, before "
        "pool and pool_gold."))
    pool: str | None = Field(default=None, description="JSONL {id, text}: raw strings to label for training.")
    pool_gold: str | None = Field(default=None, description=(
        "JSONL {id, label}: the generator's labels of the pool, to train on without a teacher and to check a teacher "
        "against."))
    test: list[str] = Field(description=(
        "Test JSONL files with gold labels ({id, text, label}); every evaluation scores each of them."))
    train_records: int = Field(gt=0, description=(
        "How many labelled rows to train on (training and validation together)."))
    val_fraction: float = Field(ge=0, lt=1, description=(
        "The share of training rows held out as the validation split (eval loss, early stopping)."))
    seed: int = Field(default=42, description="Seed of the training sample and the train/validation split.")
    spread_over: list[str] = Field(default_factory=list, description=(
        "Label fields whose values the training rows should cover evenly: when the labelled rows outnumber "
        "train_records, each combination of these fields' values is kept once before any is kept twice (no value left "
        "out by chance, as classes or counties are by a random sample). Empty: a plain random sample."))
    max_input_chars: int = Field(default=4000, gt=0, description=(
        "The longest input text accepted for labelling and training: a runaway text must not reach the teacher as one "
        "(paid) request, nor the student's training data."))

    @model_validator(mode="after")
    def _some_training_data(self) -> DataSpec:
        if self.labelled is None and self.pool is None:
            raise ValueError("labelled (your labelled JSONL) or pool (raw texts for the teacher), or both")
        if self.pool_gold is not None and self.pool is None:
            raise ValueError("pool_gold labels the pool: name the pool too")
        return self


class GateSpec(_Strict):
    records: int = Field(default=100, ge=0, description=(
        "Test records the teacher answers before it labels the pool (the first of data.test's first file; its "
        "answers are kept and reused by the teacher's evaluation); 0: no gate."))
    min_exact: float = Field(default=0.6, ge=0, le=1, description=(
        "The least whole-record exact match (a fraction) the teacher must reach on them for the pool to be "
        "labelled; below it the run stops with ITERATE (`--force` goes on)."))
    min_field: float = Field(default=0.7, ge=0, le=1, description=(
        "The least accuracy (a fraction) of every field on them; a field below it stops the run with ITERATE."))
    rethink_exact: float = Field(default=0.3, ge=0, le=1, description=(
        "Exact match below this is RETHINK rather than ITERATE: the task, its fields or the teacher, not the "
        "prompt's wording, need changing."))


class TeacherSpec(_Strict):
    base_url: str = Field(description=(
        "The teacher's OpenAI-compatible endpoint, e.g. https://dashscope.aliyuncs.com/compatible-mode/v1."))
    model: str = Field(description="The teacher's served model name.")
    api_key_env: str = Field(description=(
        "The environment variable holding the teacher's API key; the key is read from it and never written anywhere."))
    concurrency: int = Field(default=16, gt=0, description="Requests to the teacher in flight at once.")
    max_retries: int = Field(default=6, ge=0, description=(
        "Retries of a failed teacher request (rate limits, server errors, timeouts), with backoff."))
    timeout_s: float = Field(default=120, gt=0, description="Seconds one teacher request may take.")
    max_tokens: int = Field(default=512, gt=0, description="The most tokens a teacher answer may have.")
    temperature: float = Field(default=0.0, description=(
        "The teacher's sampling temperature (with --votes k above 1, at least 0.7)."))
    enable_thinking: bool | None = Field(default=False, description=(
        "Sent as the request's extra_body enable_thinking, for Qwen3 teachers; null sends nothing."))
    price_in_per_mtok: float = Field(default=0.0, description=(
        "Price per million input tokens, for the labelling cost reported."))
    price_out_per_mtok: float = Field(default=0.0, description=(
        "Price per million output tokens, for the labelling cost reported."))
    max_cost: float | None = Field(default=None, gt=0, description=(
        "The most one labelling run may spend at the prices above: labelling stops cleanly once it is reached (the "
        "answers so far are kept; a re-run pays only for the rest); null: no limit."))
    gate: GateSpec = Field(default_factory=GateSpec, description=(
        "The teacher gate: the teacher is scored on test records before it labels the pool (docs/flow.md)."))


class StudentSpec(_Strict):
    model: str = Field(description=(
        "The student to fine-tune: an embedded name (`xtk models list`), a local folder or a hub id."))
    model_type: str | None = Field(default=None, description=(
        "ms-swift's model type (e.g. qwen3, llama); null: the embedded model's, or ms-swift's guess."))
    template: str | None = Field(default=None, description=(
        "ms-swift's chat template name (e.g. chatml); null: the model type's default."))
    trust_remote_code: bool = Field(default=False, description=(
        "Allow a model folder that ships its own Python code to run it (as --trust-remote-code)."))


class TrainSpec(_Strict):
    tuner_type: Literal["lora", "full"] = Field(default="lora", description=(
        "lora (a low-rank adapter, merged after training) or full (every weight trained)."))
    lora_rank: int = Field(gt=0, description="LoRA rank: the adapter's inner dimension.")
    lora_alpha: int = Field(gt=0, description="LoRA alpha: the adapter's output is scaled by alpha / rank.")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA adapter's input.")
    target_modules: str = Field(default="all-linear", description=(
        "The layers LoRA adapts (ms-swift's --target_modules), e.g. all-linear."))
    num_train_epochs: float = Field(gt=0, description=(
        "Passes over the training rows (the ceiling when early_stop_evals is set)."))
    max_steps: int = Field(default=-1, description=(
        "Optimiser steps to train for; above 0 overrides num_train_epochs, -1: by epochs."))
    per_device_train_batch_size: int = Field(gt=0, description=(
        "Training rows per device per step, before gradient accumulation."))
    per_device_eval_batch_size: int = Field(gt=0, description="Validation rows per device per evaluation step.")
    gradient_accumulation_steps: int = Field(gt=0, description=(
        "Batches whose gradients are summed into one optimiser step."))
    learning_rate: float = Field(gt=0, description="Peak learning rate.")
    lr_scheduler_type: str = Field(default="cosine", description=(
        "The learning rate's schedule after warm-up (transformers' names: cosine, linear, constant...)."))
    warmup_ratio: float = Field(ge=0, lt=1, description="The share of steps the learning rate warms up over.")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW's weight decay.")
    max_length: int = Field(gt=0, description=(
        "The longest training row in tokens, prompt and answer (ms-swift's --max_length)."))
    torch_dtype: Literal["bfloat16", "float16", "float32"] = Field(description=(
        "The precision weights are trained and served in (float32 on CPUs without bfloat16)."))
    gradient_checkpointing: bool = Field(default=True, description=(
        "Recompute activations in the backward pass: less memory, more time."))
    bf16_output_layer: bool = Field(default=False, description=(
        "CPU: the frozen output layer's matmul on contiguous rows, in bfloat16 where the CPU has it "
        "(toolkit/train/swift_plugin.py); the logits stay in torch_dtype for the loss."))
    packing: bool = Field(default=False, description=(
        "Pack several short rows into one sequence of max_length (ms-swift's --packing)."))
    eval_steps: int = Field(gt=0, description="Steps between evaluations of the validation loss.")
    save_steps: int = Field(gt=0, description=(
        "Steps between checkpoints (an interrupted training resumes from the last)."))
    save_total_limit: int = Field(gt=0, description="Checkpoints kept on disk; older ones are deleted.")
    logging_steps: int = Field(gt=0, description="Steps between training-loss log lines (the loss chart's points).")
    dataloader_num_workers: int = Field(ge=0, description=(
        "Worker processes loading training rows; 0 loads them in the training process."))
    seed: int = Field(default=42, description="Seed of training (initialisation, shuffling, dropout).")
    omp_num_threads: int | None = Field(default=None, description=(
        "Threads per training process; null: the environment's. On 2 cores two processes of one thread each trained "
        "fastest (measured: benchmarks/train_speed.py)."))
    nproc_per_node: int = Field(default=1, gt=0, description=(
        "Training processes on this machine (torchrun's workers, one a GPU, or several on a CPU)."))
    nnodes: int = Field(default=1, gt=0, description=(
        "Machines training together: the same recipe runs on each, node_rank 0..nnodes-1 (torchrun's NNODES)."))
    node_rank: int = Field(default=0, ge=0, description=(
        "This machine's rank among nnodes, counted from 0 (torchrun's NODE_RANK)."))
    master_addr: str | None = Field(default=None, description=(
        "The address of node 0, which every node connects to (torchrun's MASTER_ADDR); needed when nnodes > 1."))
    master_port: int | None = Field(default=None, gt=0, le=65535, description=(
        "Node 0's rendezvous port (torchrun's MASTER_PORT); null on one machine: a DDP training gets a free port of "
        "its own."))
    deepspeed: str | None = Field(default=None, description=(
        "One of ms-swift's shipped ZeRO configs (zero0 ... zero3_offload), a DeepSpeed JSON file or JSON text; null: "
        "none."))
    early_stop_evals: int | None = Field(default=None, gt=0, description=(
        "Train to the plateau: stop once the eval loss has not improved for this many evaluations (ms-swift's "
        "--early_stop_interval, counted at checkpoints, hence save_steps = eval_steps) and merge the checkpoint of "
        "lowest eval loss rather than the last. Needs a validation split; null: train every epoch."))
    extra_args: list[str] = Field(default_factory=list, description=(
        "More `swift sft` arguments, passed as given (e.g. [--lorap_lr_ratio, '16'])."))

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
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description=(
        "The share of GPU memory vLLM may take (weights and KV cache)."))
    max_model_len: int = Field(default=4096, gt=0, description=(
        "The longest sequence vLLM serves, prompt and answer, in tokens."))
    cpu_kvcache_gib: int = Field(default=4, gt=0, description=(
        "CPU vLLM: GiB of memory for the KV cache (VLLM_CPU_KVCACHE_SPACE)."))
    dtype: str = Field(default="auto", description=(
        "The dtype vLLM loads weights in; auto: the model's own (float32 on CPUs without bfloat16)."))
    tensor_parallel_size: int = Field(default=1, gt=0, description=(
        "GPUs one model is split over (vllm.LLM's tensor_parallel_size): for a model too large for one GPU."))
    enforce_eager: bool = Field(default=False, description=(
        "Run the model without torch.compile (vllm.LLM's enforce_eager): on a CPU each start skips minutes of "
        "compiling, which a short job (a few records, a test) never earns back."))


class EvalSpec(_Strict):
    backend: str = Field(default="auto", description=(
        "How models are run for evaluation: a backend of the registry (toolkit/infer/backends.py; `xtk eval --help` lists "
        "them): vllm, transformers, openai (a served endpoint), or auto (vllm when it imports, else transformers)."))
    batch_size: int = Field(default=16, gt=0, description="Records a generation batch holds.")
    max_new_tokens: int = Field(default=256, gt=0, description="The most tokens a model's answer may have.")
    guided_json: bool = Field(default=False, description=(
        "Constrain generation to the answer's JSON schema (vLLM's guided decoding), for the models that can be "
        "guided."))
    limit: int | None = Field(default=None, gt=0, description=(
        "Score only the first N records of each test file; null: all."))
    base_limit: int | None = Field(default=None, gt=0, description=(
        "Score the base model before training on fewer records where generation is costly (CPU): it answers with long "
        "non-JSON text to max_new_tokens, and its figure is near 0 with a tight interval anyway. Null: as limit."))
    vllm: VllmSpec = Field(default_factory=VllmSpec, description="vLLM's engine settings.")


class ExportSpec(_Strict):
    quant: Literal["f16", "q8_0", "q4_k_m"] = Field(default="q8_0", description=(
        "`xtk export`'s quantisation when --quant is not given: f16, q8_0 (both by llama.cpp's converter), q4_k_m."))
    max_drop: float = Field(default=0.01, ge=0, le=1, description=(
        "The most whole-record exact match (a fraction: 0.01 is 1 point) the exported file may lose against the "
        "merged student on the recipe's test files, all records together; more fails the export unless "
        "--accept-drop."))


class SynthSpec(_Strict):
    topics: list[str] = Field(default_factory=list, description=(
        "`xtk synth`: what the new inputs are about, one a request in turn (e.g. [office delivery, rural address]); "
        "empty: as the examples."))
    lengths: list[str] = Field(default_factory=list, description=(
        "`xtk synth`: lengths asked for in turn (e.g. [under 30 characters, two lines]); empty: as the examples."))
    formats: list[str] = Field(default_factory=list, description=(
        "`xtk synth`: layouts asked for in turn (e.g. [one line, labelled fields, chat message]); empty: as the "
        "examples."))
    noise: list[str] = Field(default_factory=list, description=(
        "`xtk synth`: imperfections asked for in turn (e.g. [typos, missing punctuation]); empty: none asked."))
    balance: str | None = Field(default=None, description=(
        "`xtk synth`: a field with choices whose values the new inputs spread over evenly (each request asks for "
        "inputs whose answer has the next choice); null: none."))
    per_request: int = Field(default=8, gt=0, description="`xtk synth`: new inputs the teacher writes in one answer.")
    smoke: int = Field(default=64, gt=0, description=(
        "`xtk synth`: inputs of the first batch, shown before any more are paid for (`--yes` goes on)."))
    examples_shown: int = Field(default=10, gt=0, description=(
        "`xtk synth`: of your examples, how many each request shows the teacher (a different draw each)."))
    max_similarity: float = Field(default=0.8, gt=0, le=1, description=(
        "`xtk synth`: an input whose character-trigram Jaccard similarity to a kept one, an example or a test "
        "input reaches this is removed (a near-duplicate, a copy, a leak)."))
    temperature: float = Field(default=1.0, ge=0, description="`xtk synth`: the teacher's sampling temperature.")


class Recipe(_Strict):
    name: str = Field(description=(
        "The task's name: the run folder (runs/<name>/...) and the datasets folder are named by it."))
    description: str = Field(default="", description="One line saying what the task is, for people.")
    fields: list[FieldSpec] = Field(description=(
        "The answer's fields, in the order the student writes them (docs/field-types.md)."))
    prompts: Prompts = Field(default_factory=Prompts, description=(
        "The prompt files, recipe-relative; those left out are rendered from the fields."))
    data: DataSpec = Field(description="Where the training and test data come from.")
    teacher: TeacherSpec = Field(description="The large model that labels the pool, by an OpenAI-compatible endpoint.")
    student: StudentSpec = Field(description="The small model to fine-tune.")
    train: TrainSpec = Field(description="ms-swift training settings (`swift sft`).")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation settings.")
    export: ExportSpec = Field(default_factory=ExportSpec, description="`xtk export` settings (docs/export.md).")
    synth: SynthSpec = Field(default_factory=SynthSpec, description=(
        "How `xtk synth` has the teacher write new raw inputs in the style of your examples (docs/data.md)."))
    baseline: CodeRef | None = Field(default=None, description=(
        "The baseline evaluated as `rules`, as module:function: text -> the answer's JSON text, or a @trained one "
        "that first learns from the run's training split (toolkit/infer/classical.py); null: not evaluated."))
    resolver: CodeRef | None = Field(default=None, description=(
        "A post-step on the fine-tuned student's answers, module:function (text, parsed answer) -> answer, scored as "
        "its own row `resolved` beside the pure student's (e.g. completing province and city from the district by a "
        "table); null: none."))
    classification_head: bool = Field(default=False, description=(
        "Also train a linear classification head with ms-swift itself (`swift sft --task_type seq_cls`) and evaluate "
        "it as `head` (toolkit/infer/head.py): the encoder-style alternative to a generative student. One enum field "
        "only: its choices are the head's labels."))
    root: Path = Field(default=Path("."), description=(
        "Set by xtk, not in the file: where relative paths in the recipe are resolved from (the folder holding "
        "recipes/)."))
    profile: str | None = Field(default=None, description=(
        "Set by xtk from --profile, not in the file: the profile applied (a key of the file's `profiles:` mapping, "
        "each overriding any keys)."))
    _choices_cache: dict[str, list[str] | None] = PrivateAttr(default_factory=dict)
    _allowed_cache: dict[str, frozenset[str] | None] = PrivateAttr(default_factory=dict)
    _where: Any = PrivateAttr(default=None)  # set by load_recipe: a key as `file:line: key 'a.b'`

    def at(self, loc: tuple) -> str:
        """Where a key is: the recipe file, the key `loc` and its line (a recipe not loaded from a file: the key
        alone)."""
        return self._where(loc) if self._where is not None else ".".join(map(str, loc))

    def fail_at(self, loc: tuple, problem: str):
        """Raise RecipeError naming where the key `loc` is (`at`) and the problem."""
        raise RecipeError(f"{self.at(loc)}: {problem}")

    @field_validator("fields")
    @classmethod
    def _unique_fields(cls, fields: list[FieldSpec]) -> list[FieldSpec]:
        names = [f.name for f in fields]
        if not names:
            raise ValueError("at least one field")
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"each field name once; given more than once: {', '.join(twice)}")
        return fields

    @model_validator(mode="after")
    def _spread_over_fields(self) -> Recipe:
        unknown = [f for f in self.data.spread_over if f not in self.field_names]
        if unknown:
            raise AtKey(("data", "spread_over"),
                        f"data.spread_over names {unknown}, not fields of this recipe ({self.field_names})")
        return self

    @model_validator(mode="after")
    def _synth_balance_has_choices(self) -> Recipe:
        name = self.synth.balance
        if name is not None and (name not in self.field_names or (
                self.field(name).choices is None and self.field(name).choices_file is None)):
            raise AtKey(("synth", "balance"), f"synth.balance names {name!r}: expected a field with choices of this "
                        f"recipe ({[f.name for f in self.fields if f.choices or f.choices_file]})")
        return self

    @model_validator(mode="after")
    def _head_has_one_enum(self) -> Recipe:
        if self.classification_head and (len(self.fields) != 1 or not_classes(self.fields)):
            found = [f"{f.name}: {f.type}" for f in self.fields]
            raise AtKey(("classification_head",), "classification_head needs exactly one field, of type enum (its "
                        f"choices are the head's labels); this recipe has {found}")
        return self

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def path(self, relative: str) -> Path:
        """A path named in the recipe, resolved against the project root the recipe lives in."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else self.root / p

    def prompt(self, which: Literal["teacher", "base", "student"]) -> str:
        """The prompt a role is given: the recipe's file, else rendered from the fields."""
        if (given := getattr(self.prompts, which)) is not None:
            return self.path(given).read_text(encoding="utf-8").strip()
        names = ", ".join(self.field_names)
        if which == "student":
            return f"Extract as JSON: {names}."
        answer = {f.name: example(f, self.choices(f.name)) for f in self.fields}
        template = PROMPT_TEMPLATE if self.prompts.template is None else self.path(self.prompts.template).read_text(
            encoding="utf-8")
        try:
            return Template(template).substitute(
                task=self.description or f"Extract {names} from the input.", keys=names,
                fields="\n".join(f"- {hint(f, self.choices(f.name))}" for f in self.fields),
                example=json.dumps(answer, ensure_ascii=False)).strip()
        except (KeyError, ValueError) as exc:
            self.fail_at(("prompts", "template"), f"{self.prompts.template}: {exc.args[0]!r} is not one of $task, "
                         "$fields, $keys, $example ($$ for a dollar sign)")

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
            values, steps = self.choices(field_name), self.field(field_name).normalise
            self._allowed_cache[field_name] = None if values is None else frozenset(normalise(v, steps) for v in values)
        return self._allowed_cache[field_name]

    def choices_source(self, field_name: str) -> str:
        """Where a field's allowed values come from, for messages."""
        return self.field(field_name).choices_file or f"fields.{field_name}.choices"

    def json_schema(self) -> dict[str, Any]:
        """The JSON schema of one answer, for guided decoding and for validating labels."""
        return {
            "type": "object",
            "properties": {f.name: schema(f, self.choices(f.name), MAX_ENUM) for f in self.fields},
            "required": self.field_names,
            "additionalProperties": False,
        }

    def public_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"root"})


@dataclass(frozen=True)
class Key:
    """One recipe key as `xtk recipe keys` prints it."""
    path: str  # dotted, as overrides name it: train.lora_rank, fields.0.name
    type: str
    default: str  # "required", or the default as JSON
    description: str
    value: str | None = None  # as JSON, when a recipe was given


def recipe_keys(recipe: Recipe | None = None) -> list[Key]:
    """Every key a recipe may set, where it is declared: its type, default and description, and its value in
    `recipe` when one is given. A list of sections (fields) is listed for each of its items in the recipe, else
    once as `fields.*`. root and profile are set by xtk, not by the file."""
    out: list[Key] = []

    def walk(model: type[BaseModel], prefix: str, obj: BaseModel | None) -> None:
        for name, info in model.model_fields.items():
            if model is Recipe and name in ("root", "profile"):
                continue
            path, value = prefix + name, getattr(obj, name) if obj is not None else None
            section, many = _section(info.annotation)
            shown = None if obj is None or section else json.dumps(
                value, ensure_ascii=False, default=str)
            default = "required" if info.is_required() else json.dumps(
                info.get_default(call_default_factory=True), ensure_ascii=False, default=str)
            kind_ = _type_name(info.annotation) + "".join(
                f" {op} {getattr(m, attr)}" for m in info.metadata
                for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")) if hasattr(m, attr))
            out.append(Key(path, kind_, "—" if section else default, info.description or "", shown))
            if section and many:
                for i, item in enumerate(value) if obj is not None else [("*", None)]:
                    walk(section, f"{path}.{i}.", item)
            elif section:
                walk(section, path + ".", value)

    walk(Recipe, "", recipe)
    return out


def _section(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the model a key's value is, whether a list of them) for a section key; (None, False) for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = get_args(annotation)
    if get_origin(annotation) is list and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], True
    return None, False


def _type_name(annotation: Any) -> str:
    """A key's type as a reader writes it: `int | null`, `lora | full`, `list[str]`, `module:function`."""
    if annotation is type(None):
        return "null"
    if annotation == CodeRef:
        return "module:function"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin in (Union, UnionType):
        return " | ".join(map(_type_name, args))
    if origin is Annotated:
        return _type_name(args[0])
    if origin is not None:
        return f"{origin.__name__}[{', '.join(map(_type_name, args))}]"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


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
    def loc(err: dict) -> tuple:
        return tuple(err["loc"]) + getattr((err.get("ctx") or {}).get("error"), "loc", ())

    out = [f"{_where(path, loc(err), lines, profile, overridden, err['type'] == 'missing')}: {_describe(err)}"
           for err in exc.errors()]
    return "invalid recipe\n  " + "\n  ".join(out)


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


# Set by load_recipe itself: a recipe file or an override giving them would pass the keyword twice.
RESERVED = {"root": "where the recipe's relative paths start: the project the recipe lives in",
            "profile": "the profile chosen with --profile"}


def load_recipe(path: str | Path, profile: str | None = None, overrides: list[str] = (),
                consent: Consent | None = None) -> Recipe:
    """Read a recipe, apply a profile and `key=value` overrides, and validate the result; then check what it
    names against what the user allowed on the command line (`consent`, toolkit/io/trust.py)."""
    from toolkit.io.trust import Consent

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
    for key, meaning in RESERVED.items():
        if key in raw:
            where = _where(path, (key,), _key_lines(text), profile, overridden)
            raise RecipeError(f"{where}: not a recipe key: xtk sets it ({meaning}); remove it")
    # Relative paths in a recipe are relative to the project root: the parent of recipes/.
    root = path.resolve().parent.parent if path.resolve().parent.name == "recipes" else path.resolve().parent
    try:
        recipe = Recipe(**raw, root=root, profile=profile)
    except ValidationError as exc:
        raise RecipeError(_format_errors(path, exc, _key_lines(text), profile, overridden)) from None
    _check_consent(recipe, path, text, overridden, consent or Consent())
    _check_own_files(recipe)
    return recipe


def _check_own_files(recipe: Recipe) -> None:
    """The prompts (readable UTF-8, not empty) and choices files (UTF-8, line by line) the recipe names are read
    now, not when a stage first needs them (the data and test files: toolkit/flow/check.py)."""
    fail = recipe.fail_at
    for which in ("teacher", "base", "student", "template"):
        if (given := getattr(recipe.prompts, which)) is None:
            continue
        loc, p = ("prompts", which), recipe.path(given)
        if problem := file_problem(p, "a prompt file"):
            fail(loc, f"{p}: {problem}")
        try:
            text = read_text(p, "a prompt file")
        except DataError as exc:
            fail(loc, str(exc))
        if not text.strip():
            fail(loc, f"{p}: the prompt file is empty: write the instructions the model is given")
    if recipe.prompts.template is not None:
        recipe.prompt("teacher")  # a placeholder it does not know, named now
    for i, f in enumerate(recipe.fields):
        if f.choices_file is not None:
            p = recipe.path(f.choices_file)
            if problem := file_problem(p, "a text file of allowed values"):
                fail(("fields", i, "choices_file"), f"{p}: {problem}")
            try:
                recipe.choices(f.name)
            except DataError as exc:
                fail(("fields", i, "choices_file"), str(exc))


def _check_consent(recipe: Recipe, path: Path, text: str, overridden: set[tuple], consent: Consent) -> None:
    """What a loaded recipe may do on its own (toolkit/io/trust.py's docstring); RecipeError naming the file, the
    key and its line. The files it names are read by toolkit/flow/check.py."""
    from toolkit.io.trust import CODE_KEYS, code_problem, name_problem

    lines = _key_lines(text)
    recipe._where = lambda loc: _where(path, loc, lines, recipe.profile, overridden)
    fail = recipe.fail_at

    if problem := name_problem(recipe.name):
        fail(("name",), f"expected {problem}")
    if recipe.profile is not None and (problem := name_problem(recipe.profile)):
        line = lines.get(("profiles", recipe.profile))
        raise RecipeError(f"{path}{f':{line}' if line else ''}: profile: expected {problem}")
    for loc in CODE_KEYS:
        ref = getattr(recipe.data, loc[1]) if loc[0] == "data" else getattr(recipe, loc[0])
        if ref and (problem := code_problem(ref, consent)):
            fail(loc, problem)
    if recipe.student.trust_remote_code and not consent.remote_code:
        fail(("student", "trust_remote_code"), "a recipe cannot grant itself trust: model code runs only with "
             "--trust-remote-code on the command line (only for a model folder you trust)")
