"""The typed sections of a recipe (prompts, data, teacher, student, train, eval, export, synth): every key's type,
default and description, checked by pydantic; the whole recipe is toolkit/task/recipe.py's Recipe."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from toolkit.io.trust import FILE, NamesFiles


class AtKey(ValueError):
    """A check across keys whose error belongs to one of them: `loc`, below the model that raises it, is where
    the message points (its key and line), where pydantic would point at the model as a whole."""

    def __init__(self, loc: tuple, message: str):
        self.loc = loc
        super().__init__(message)


class Strict(BaseModel):
    # No key is infinite or NaN: `.inf` epochs would train for ever, a NaN price compares false with every cap.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Prompts(Strict):
    teacher: Annotated[str | None, FILE] = Field(default=None, description=(
        "The teacher's prompt file (recipe-relative): the detailed instructions the teacher labels with; one that "
        "does not name every field is warned of (`xtk recipe check`). Null: rendered from the fields with "
        "prompts.template."))
    base: Annotated[str | None, FILE] = Field(default=None, description=(
        "The detailed prompt file, for models that were not fine-tuned (the base model, option likelihood); one "
        "that does not name every field is warned of. Null: rendered from the fields with prompts.template."))
    student: Annotated[str | None, FILE] = Field(default=None, description=(
        "The short prompt file the student is trained and evaluated with (it may name no field: the student learns "
        "the keys from its training answers). Null: one line naming the fields."))
    template: Annotated[str | None, FILE] = Field(default=None, description=(
        "The template file (recipe-relative) the teacher's and base prompts are rendered with where they are null: "
        "text with $task (the description), $fields (a line a field: name, description, what a value is), $keys "
        "and $example (an answer); $$ is a dollar sign. Null: xtk's own (docs/recipes.md)."))


def _code_ref(ref: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", ref):
        raise ValueError("module:function (e.g. toolkit.infer.classical:tfidf_logreg)")
    return ref


# How a recipe names code (its data builder, its rule baseline): `package.module:function`, or null for none.
CodeRef = Annotated[str, AfterValidator(_code_ref)]


class DataSpec(Strict):
    generator: CodeRef | None = Field(default=None, description=(
        "The function that builds this recipe's data files (`xtk data generate NAME`), as module:function; null: "
        "none."))
    labelled: Annotated[str | None, FILE] = Field(default=None, description=(
        "Your own labelled JSONL ({id, text, label} or ms-swift messages rows): used for training when set, before "
        "pool and pool_gold."))
    pool: Annotated[str | None, FILE] = Field(default=None, description=(
        "JSONL {id, text}: raw strings to label for training."))
    pool_gold: Annotated[str | None, FILE] = Field(default=None, description=(
        "JSONL {id, label}: the generator's labels of the pool, to train on without a teacher and to check a teacher "
        "against."))
    test: Annotated[list[str], FILE] = Field(description=(
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

    @field_validator("test")
    @classmethod
    def _some_test_file(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one test file: every evaluation, the teacher gate and the report score them")
        return value

    @model_validator(mode="after")
    def _some_training_data(self) -> DataSpec:
        if self.labelled is None and self.pool is None:
            raise ValueError("labelled (your labelled JSONL) or pool (raw texts for the teacher), or both")
        if self.pool_gold is not None and self.pool is None:
            raise ValueError("pool_gold labels the pool: name the pool too")
        return self


class GateSpec(Strict):
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


class TeacherSpec(Strict):
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
    temperature: float = Field(default=0.0, ge=0, description=(
        "The teacher's sampling temperature (with --votes k above 1, at least 0.7)."))
    enable_thinking: bool | None = Field(default=False, description=(
        "Sent as the request's extra_body enable_thinking, for Qwen3 teachers; null sends nothing."))
    price_in_per_mtok: float = Field(default=0.0, ge=0, description=(
        "Price per million input tokens (in teacher.currency): the estimate before labelling, the cost reported, "
        "the budget (max_cost)."))
    price_out_per_mtok: float = Field(default=0.0, ge=0, description=(
        "Price per million output tokens (in teacher.currency), as price_in_per_mtok."))
    currency: str = Field(default="USD", min_length=1, description=(
        "The currency of the prices, named with every cost printed or kept."))
    max_cost: float | None = Field(default=None, gt=0, description=(
        "The most the label folder may spend at the prices above, everything it paid in earlier runs counted: a "
        "request is sent only if the worst case of it (its prompt tokens and max_tokens) and of every request in "
        "flight still fits, so labelling stops before passing it (the answers are kept); null: no limit. Needs a "
        "price: with both prices 0 it would never stop."))
    confirm_above: float = Field(default=1.0, ge=0, description=(
        "`xtk label` and `xtk run` print the labelling's estimate before asking anything; when it may spend more "
        "than this (at most, or what max_cost leaves), a terminal is asked to confirm, and without one --yes is "
        "needed."))
    tokenizer: str | None = Field(default=None, description=(
        "A tokenizer of the teacher's family (a local folder or a hub id transformers loads) that the estimate "
        "and the budget count the rendered prompts with; null: estimated without one (the budget then reserves "
        "a prompt's UTF-8 bytes as its tokens, a bound no byte-level tokenizer passes)."))
    gate: GateSpec = Field(default_factory=GateSpec, description=(
        "The teacher gate: the teacher is scored on test records before it labels the pool (docs/flow.md)."))

    @model_validator(mode="after")
    def _cap_needs_a_price(self) -> TeacherSpec:
        if self.max_cost is not None and not (self.price_in_per_mtok or self.price_out_per_mtok):
            raise AtKey(("max_cost",), "teacher.price_in_per_mtok or price_out_per_mtok above 0 with a cap: at "
                        f"prices of 0 nothing is counted and max_cost {self.max_cost:g} would never stop labelling; "
                        "set the teacher's prices (per million tokens, in teacher.currency) or remove max_cost")
        return self


class StudentSpec(Strict):
    model: str = Field(description=(
        "The student to fine-tune: an embedded name (`xtk models list`), a local folder or a hub id."))
    model_type: str | None = Field(default=None, description=(
        "ms-swift's model type (e.g. qwen3, llama); null: the embedded model's, or ms-swift's guess."))
    template: str | None = Field(default=None, description=(
        "ms-swift's chat template name (e.g. chatml); null: the model type's default."))
    trust_remote_code: bool = Field(default=False, description=(
        "Allow a model folder that ships its own Python code to run it (as --trust-remote-code)."))


DEEPSPEED_FILE = NamesFiles(only=lambda value: value.endswith(".json"))  # not a preset's name, nor JSON text


class TrainSpec(Strict):
    tuner_type: Literal["lora", "full"] = Field(default="lora", description=(
        "lora (a low-rank adapter, merged after training) or full (every weight trained)."))
    lora_rank: int = Field(gt=0, description="LoRA rank: the adapter's inner dimension.")
    lora_alpha: int = Field(gt=0, description="LoRA alpha: the adapter's output is scaled by alpha / rank.")
    lora_dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA adapter's input.")
    target_modules: str = Field(default="all-linear", description=(
        "The layers LoRA adapts (ms-swift's --target_modules), e.g. all-linear."))
    num_train_epochs: float = Field(gt=0, description=(
        "Passes over the training rows (the ceiling when early_stop_evals is set)."))
    max_steps: int = Field(default=-1, ge=-1, description=(
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
    deepspeed: Annotated[str | None, DEEPSPEED_FILE] = Field(default=None, description=(
        "One of ms-swift's shipped ZeRO configs (zero0 ... zero3_offload), a DeepSpeed JSON file or JSON text; null: "
        "none."))
    early_stop_evals: int | None = Field(default=None, gt=0, description=(
        "Train to the plateau: stop once the eval loss has not improved for this many evaluations (ms-swift's "
        "--early_stop_interval, counted at checkpoints, hence save_steps = eval_steps) and merge the checkpoint of "
        "lowest eval loss rather than the last. Needs a validation split; null: train every epoch."))
    extra_args: list[str] = Field(default_factory=list, description=(
        "More `swift sft` arguments, passed as given (e.g. [--lorap_lr_ratio, '16']): flags of SWIFT_FLAGS (those "
        "that only change how the model trains) and their values; any other needs --allow-code swift:FLAG on the "
        "command line (docs/trust.md)."))

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

    @field_validator("max_steps")
    @classmethod
    def _steps_or_epochs(cls, value: int) -> int:
        if value == 0:
            raise ValueError("a number of steps above 0, or -1 to train by num_train_epochs; 0 would train nothing")
        return value

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

# The `swift sft` flags (ms-swift 4.6 names) train.extra_args may pass without the user's consent: each only changes
# how the given model trains on the given data; none names a file, code, a place to write or a service to report to
# (--external_plugins, --custom_register_path, --output_dir, --dataset, --report_to, --push_to_hub... are not
# here). A pattern restricts a flag's values: attn_impl may also name a kernel repository on the hub, which runs its
# code.
SWIFT_FLAGS: dict[str, str | None] = {
    **dict.fromkeys((  # the adapter and which weights train
        "lorap_lr_ratio", "lora_bias", "lora_dtype", "use_rslora", "use_dora", "init_weights", "target_regex",
        "modules_to_save", "freeze_llm", "freeze_parameters", "freeze_parameters_ratio", "freeze_parameters_regex",
        "trainable_parameters", "trainable_parameters_regex",
        # the optimiser, its schedule and the loss
        "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "warmup_steps",
        "label_smoothing_factor", "neftune_noise_alpha", "loss_type",
        # batches and the order of rows
        "group_by_length", "padding_free", "padding_side", "packing_length", "lazy_tokenize", "dataset_shuffle",
        "train_dataloader_shuffle", "dataloader_drop_last", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor",
        # precision, speed, checkpoints and processes
        "bf16", "fp16", "tf32", "use_liger_kernel", "torch_empty_cache_steps", "vit_gradient_checkpointing",
        "logging_first_step", "save_only_model", "save_strategy", "ddp_find_unused_parameters", "ddp_timeout",
        "ddp_backend", "ddp_bucket_cap_mb",
        "callbacks",  # names of callbacks ms-swift registers (code comes only through --external_plugins)
        "hub_token",  # a gated student's download (masked wherever xtk writes it)
    )),
    "attn_impl": "eager|sdpa|flash_attn|flash_attention_2|flash_attention_3|flex_attention",
}


class VllmSpec(Strict):
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


class EvalSpec(Strict):
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


class ExportSpec(Strict):
    quant: Literal["f16", "q8_0", "q4_k_m"] = Field(default="q8_0", description=(
        "`xtk export`'s quantisation when --quant is not given: f16, q8_0 (both by llama.cpp's converter), q4_k_m."))
    max_drop: float = Field(default=0.01, ge=0, le=1, description=(
        "The most whole-record exact match (a fraction: 0.01 is 1 point) the exported file may lose against the "
        "merged student on the compared test records, all together; more fails the export (unless --accept-drop) "
        "where McNemar's test on those records shows the drop (p < 0.05), and is only said where it does not: on "
        "a few records one answer is several points."))
    parity_records: int | Literal["all"] = Field(default=200, description=(
        "How many test records (all test files together, a seeded random sample) `xtk export` scores the GGUF on "
        "beside the merged student; `all` (or --parity-full): every one. 200 because llama.cpp answers about one "
        "record in 3 s on one thread of a 2-core CPU: ~10 minutes, where logistics_zh's 800 take ~40 (hours when "
        "the cores are busy). It catches a broken export (a wrong template or quantisation costs tens of points); "
        "its interval is about twice as wide as the full set's, so judge a drop near max_drop on all records."))
    parity_seed: int = Field(default=0, description=(
        "Seed of export's parity sample: the same seed and test files give the same records."))

    @field_validator("parity_records", mode="before")
    @classmethod
    def _records_or_all(cls, value):
        if value == "all" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise ValueError("a number of records above 0, or all")


class SynthSpec(Strict):
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


