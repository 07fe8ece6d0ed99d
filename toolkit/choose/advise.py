"""advise: the student-choice checks as numbers, for every candidate, before anything is trained.

    xtk advise recipes/logistics_zh.yaml --profile cpu [--rows N] [--ram GIB] [--gpu GIB] [--candidates a,b] [--json]

For each candidate (the recipe's student and the embedded ones, or those named): licence and commercial use; the
memory of LoRA training at the recipe's batch, max_length and dtype, and of vLLM inference, against the memory
given (fits or not); base or instruct, and which of the two the labelled row count favours; whether it has a chat
template; and tokens per record on the recipe's own data with its tokenizer. No weights are loaded: the shapes come
from the config (a model built on torch's meta device), the tokens from the tokenizer. It ends with the
`xtk bakeoff` spec that tests the short-list, since rules of thumb are no substitute for a measurement; the
profile's default student (the one `xtk init` writes, chosen by one) is never left off it by the rows rule.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import yaml
from rich.table import Table

from toolkit.data.prepare import gold_records, read_record, to_messages, token_lengths
from toolkit.io.jsonl import iter_jsonl
from toolkit.io.progress import Bar
from toolkit.model.models import EMBEDDED, ModelError, check_custom_code, default_student, pull_embedded
from toolkit.task.recipe import Recipe
from toolkit.train.cpu import cpu_has_bf16

GIB = 1024 ** 3
# Labelled rows: instruct models learn the task from a few hundred; base models need more to learn the answer
# format as well, and are fine from about a thousand.
INSTRUCT_BELOW, BASE_FROM = 300, 1000
# Resident memory of the processes around the model, measured here (benchmarks/advise_memory.py: a Python that
# imports what each process imports, peak RSS): a training worker (torch, transformers, peft, ms-swift), the
# `swift` command that starts it, and torchrun's launcher when there are several processes.
WORKER_FIXED_GIB = 0.61
SWIFT_LAUNCHER_GIB = 0.23
TORCHRUN_GIB = 0.22
# Copies of the fp32 logits alive at the peak: the logits, cross-entropy's log-softmax, and the two gradients
# on the way back.
LOGIT_COPIES = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SAMPLE_RECORDS = 200  # records tokenised per candidate
PERMISSIVE = {"apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause"}


@dataclass(frozen=True)
class Shape:
    """What memory depends on, read from a model's config: its parameters, sizes, and the linear layers LoRA
    would wrap (name, in_features, out_features)."""

    parameters: int
    hidden: int
    layers: int
    intermediate: int
    vocab: int
    attention: int  # heads x head_dim: the width of q and of attention's output
    kv: int  # key-value heads x head_dim, per K and per V: what the KV cache keeps per token and layer
    linears: tuple[tuple[str, int, int], ...]


def model_shape(folder: Path) -> Shape:
    """A model's shape from its config.json, by building it on torch's meta device (no memory, no weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    out = model.get_output_embeddings()
    linears = tuple((name, m.in_features, m.out_features) for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and m is not out)
    return Shape(parameters=sum(p.numel() for p in model.parameters()), hidden=text.hidden_size,
                 layers=text.num_hidden_layers, intermediate=text.intermediate_size, vocab=text.vocab_size,
                 attention=text.num_attention_heads * head_dim, kv=kv_heads * head_dim, linears=linears)


def lora_targets(shape: Shape, target_modules: str) -> list[tuple[str, int, int]]:
    """The linears ms-swift wraps: all but the output head for `all-linear`, else those named (comma or space)."""
    if target_modules == "all-linear":
        return list(shape.linears)
    names = set(re.split(r"[,\s]+", target_modules.strip()))
    return [lin for lin in shape.linears if lin[0].rsplit(".", 1)[-1] in names]


@dataclass(frozen=True)
class TrainingMemory:
    """GiB. One training process holds weights, adapter (weights, gradients, AdamW's two moments, fp32),
    activations kept for the backward pass, the logits' copies and the framework; `total` is every process of the
    command on this node (launchers included); `device` what one GPU needs (no host framework)."""

    weights: float
    adapter: float
    activations: float
    logits: float
    framework: float
    per_process: float
    processes: int
    launchers: float
    total: float
    device: float


def training_memory(shape: Shape, *, batch: int, max_length: int, dtype: str, lora_rank: int, lora_dropout: float,
                    target_modules: str, gradient_checkpointing: bool, processes: int,
                    bf16_output_copy: bool = False) -> TrainingMemory:
    """LoRA training's peak memory, every sequence max_length long (the longest batch the data can make).

    Activations kept per token and layer, in the training dtype, as autograd saves them (counted with
    torch.autograd.graph.saved_tensors_hooks on SmolLM2 + peft LoRA: 17,280 values a token and layer, exactly
    this sum). Frozen linears keep nothing of their input, and torch's attention kernels keep no sequence x
    sequence matrix, nor k and v repeated to every head:
      2 x hidden                  the two RMSNorms' inputs
      2 x attention + 2 x kv      q, attention's output, k and v
      3 x intermediate            the MLP's gate, its activation and up (the product's inputs)
      2 x each LoRA input         lora_A's input as dropout's output, and dropout's mask (as wide on a CPU);
                                  without dropout lora_A keeps its input once
    With gradient checkpointing only each layer's input (hidden) is kept, plus one layer's set while it recomputes.
    bf16_output_copy: train.bf16_output_layer's bfloat16 copy of the output layer's weight (vocab x hidden x 2 B),
    made where the CPU multiplies bfloat16 (toolkit/train/swift_plugin.py); counted with the weights.
    Not counted: what the memory allocator holds on to after freeing (benchmarks/advise_memory.py measures it).
    """
    targets = lora_targets(shape, target_modules)
    width = DTYPE_BYTES[dtype]
    tokens = batch * max_length
    lora_inputs = sum(i for _, i, _ in targets) / shape.layers
    per_layer = (2 * shape.hidden + 2 * shape.attention + 2 * shape.kv + 3 * shape.intermediate) * width
    per_layer += lora_inputs * width * (2 if lora_dropout > 0 else 1)
    kept = shape.hidden * width * shape.layers + per_layer if gradient_checkpointing else per_layer * shape.layers
    weights = (shape.parameters * width + (shape.vocab * shape.hidden * 2 if bf16_output_copy else 0)) / GIB
    adapter = lora_rank * sum(i + o for _, i, o in targets) * 16 / GIB  # fp32: weight, grad, 2 AdamW moments
    activations = tokens * kept / GIB
    logits = tokens * shape.vocab * 4 * LOGIT_COPIES / GIB  # the loss is taken in fp32
    device = weights + adapter + activations + logits
    per_process = device + WORKER_FIXED_GIB
    launchers = SWIFT_LAUNCHER_GIB + (TORCHRUN_GIB if processes > 1 else 0)
    return TrainingMemory(*(round(x, 2) for x in (weights, adapter, activations, logits, WORKER_FIXED_GIB,
                                                  per_process)), processes, round(launchers, 2),
                          round(processes * per_process + launchers, 2), round(device, 2))


@dataclass(frozen=True)
class InferenceMemory:
    """GiB for vLLM serving the model: weights, KV cache, framework. On a CPU vLLM reserves its KV cache up front
    (eval.vllm.cpu_kvcache_gib); on a GPU the cache is what one eval batch at max_model_len needs."""

    weights: float
    kv_cache: float
    framework: float
    total: float


def inference_memory(shape: Shape, recipe: Recipe, gpu: bool) -> InferenceMemory:
    spec = recipe.eval.vllm
    if gpu:
        width = DTYPE_BYTES.get(spec.dtype, 2)  # "auto": 16-bit on a GPU
        kv = 2 * shape.layers * shape.kv * width * recipe.eval.batch_size * spec.max_model_len / GIB
        framework = 0.0  # on the host, not the GPU
    else:
        width = DTYPE_BYTES.get(spec.dtype, 4)  # "auto": float32 on a CPU (toolkit.infer.engines.vllm_kwargs)
        kv, framework = float(spec.cpu_kvcache_gib), WORKER_FIXED_GIB
    weights = shape.parameters * width / GIB
    return InferenceMemory(round(weights, 2), round(kv, 2), framework, round(weights + kv + framework, 2))


def rows_favour(rows: int) -> str:
    """Which kind of student a labelled row count favours."""
    if rows < INSTRUCT_BELOW:
        return "instruct"
    if rows < BASE_FROM:
        return "instruct (base only with care)"
    return "either"


def rows_verdict(kind: str, rows: int) -> str:
    favour = rows_favour(rows)
    if not kind.startswith(("base", "instruct")):
        return "kind unknown"
    if kind.startswith("instruct") or favour == "either":
        return "good"
    return "too few rows" if favour == "instruct" else "risky"


def commercial_use(licence: str) -> str:
    return "yes" if licence.lower() in PERMISSIVE else "unknown: read the licence"


@dataclass
class Candidate:
    name: str
    source: str  # embedded, folder or hub
    licence: str = "unknown"
    commercial_use: str = "unknown"
    kind: str = "unknown"
    rows: str = "unknown"
    parameters: int | None = None
    chat_template: bool | None = None
    tokens_mean: float | None = None
    tokens_max: int | None = None
    training: TrainingMemory | None = None
    training_fits: bool | None = None
    inference: InferenceMemory | None = None
    inference_fits: bool | None = None
    found: bool = False  # its config and tokenizer were read here
    default: bool = False  # the profile's default student (toolkit/model/models.py: DEFAULT_STUDENTS)
    notes: list[str] = field(default_factory=list)

    @property
    def shortlisted(self) -> bool:
        """Not ruled out: it exists (a hub id may, where the hub is reachable), it fits or we could not tell, and its
        rows verdict is not 'too few rows' (the default student's choice was measured, not a rule of thumb)."""
        return ((self.found or self.source == "hub") and self.training_fits is not False
                and self.inference_fits is not False and (self.rows != "too few rows" or self.default))


def _front_matter_licence(folder: Path) -> str | None:
    """`license:` from a model card's YAML front matter (README.md), as hub folders carry it."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    m = re.match(r"---\n(.*?)\n---", card.read_text(encoding="utf-8", errors="replace"), re.DOTALL)
    found = re.search(r"^license:\s*(\S+)", m.group(1), re.MULTILINE) if m else None
    return found.group(1).strip("'\"") if found else None


def _folder_kind(folder: Path, name: str) -> str:
    marker = folder / "xtk-model.json"
    if marker.is_file() and json.loads(marker.read_text()).get("kind"):
        return json.loads(marker.read_text())["kind"]
    if re.search(r"instruct|chat|-it\b", name, re.IGNORECASE):
        return "instruct (by its name)"
    return "unknown"


def locate(name: str, candidate: Candidate, trust_remote_code: bool) -> Path | None:
    """The candidate's folder (config and tokenizer, weights not needed), filling in the facts its source gives;
    None, with the reason in its notes, where there is none here."""
    if name in EMBEDDED:
        m = EMBEDDED[name]
        candidate.source, candidate.licence, candidate.commercial_use, candidate.kind = \
            "embedded", m.licence, m.commercial_use, m.kind
        candidate.notes.append(f"{name}: {m.weights}")
        return pull_embedded(name)
    path = Path(name).expanduser()
    try:
        if path.exists() or name.startswith((".", "/", "~")):
            candidate.source = "folder"
            folder = path
        else:
            from swift.utils.hub_utils import safe_snapshot_download

            candidate.source = "hub"
            try:  # config and tokenizer only
                folder = Path(safe_snapshot_download(name, download_model=False))
            except Exception as exc:  # the hub clients raise many types; all mean "not here"
                candidate.notes.append(f"{name}: unknown: the model hub is not reachable from here or has no such "
                                       f"model ({type(exc).__name__}: {str(exc)[:120]})")
                return None
        check_custom_code(folder, trust_remote_code)
    except ModelError as exc:
        candidate.notes.append(f"{name}: unknown: {exc}")
        return None
    licence = _front_matter_licence(folder)
    if licence:
        candidate.licence, candidate.commercial_use = licence, commercial_use(licence)
    candidate.kind = _folder_kind(folder, name)
    return folder


def sample_rows(recipe: Recipe, n: int = SAMPLE_RECORDS) -> tuple[list[dict], str]:
    """Up to n training rows as `xtk prepare` writes them (student prompt, text, answer), from the recipe's
    labelled data or its pool's gold labels; else the pool's texts without an answer."""
    system = recipe.prompt("student")
    d = recipe.data
    if d.labelled and recipe.path(d.labelled).is_file():
        path = recipe.path(d.labelled)
        records = [read_record(recipe, row, path, line) for line, row in islice(iter_jsonl(path), n)]
        return [to_messages(recipe, r, system) for r in records], f"{len(records)} records of {d.labelled}"
    if d.pool_gold and recipe.path(d.pool_gold).is_file():
        records = gold_records(recipe)[:n]
        return [to_messages(recipe, r, system) for r in records], f"{len(records)} records of {d.pool} (gold labels)"
    path = recipe.path(d.pool)
    rows = [{"messages": [{"role": "system", "content": system}, {"role": "user", "content": row["text"]}]}
            for _, row in islice(iter_jsonl(path), n)]
    return rows, f"{len(rows)} texts of {d.pool}, without answers (none labelled yet)"


def labelled_rows(recipe: Recipe) -> int:
    """How many labelled rows training would get: the labelled file's (or the pool's) lines, at most
    data.train_records."""
    d = recipe.data
    source = d.labelled if d.labelled and recipe.path(d.labelled).is_file() else d.pool
    if source is None or not recipe.path(source).is_file():
        return 0
    return min(d.train_records, sum(1 for _ in iter_jsonl(recipe.path(source))))


def tokenizer_facts(candidate: Candidate, folder: Path, recipe: Recipe, rows: list[dict]) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # a tokenizer transformers cannot read: its facts stay unknown
        candidate.notes.append(f"{candidate.name}: tokenizer unreadable ({type(exc).__name__}: {str(exc)[:120]})")
        return
    candidate.chat_template = bool(tokenizer.chat_template)
    if not candidate.chat_template:
        candidate.notes.append(f"{candidate.name}: no chat template, so no tokens per record (vLLM's chat needs one)")
        return
    lengths = token_lengths(recipe, str(folder), rows)
    if lengths:
        candidate.tokens_mean, candidate.tokens_max = round(sum(lengths) / len(lengths), 1), max(lengths)
        if candidate.tokens_max > recipe.train.max_length:
            over = sum(n > recipe.train.max_length for n in lengths)
            candidate.notes.append(f"{candidate.name}: {over} of {len(lengths)} sampled records are longer than "
                                   f"train.max_length {recipe.train.max_length} and would be dropped: raise it")


def makes_bf16_output_copy(recipe: Recipe) -> bool:
    """Whether training on this CPU makes train.bf16_output_layer's copy: only of a float32 model, only where the
    CPU has bfloat16 (elsewhere the plugin keeps float32 and copies nothing)."""
    if not recipe.train.bf16_output_layer or recipe.train.torch_dtype != "float32":
        return False
    return cpu_has_bf16()


def assess(name: str, recipe: Recipe, rows: int, ram_gib: float, gpu_gib: float | None,
           sample: list[dict]) -> Candidate:
    """Every check for one candidate; what cannot be known here is 'unknown' with the reason in its notes."""
    t = recipe.train
    candidate = Candidate(name, "")
    folder = locate(name, candidate, recipe.student.trust_remote_code)
    candidate.rows = rows_verdict(candidate.kind, rows)
    default = default_student(recipe.profile)
    if name == default.model:
        candidate.default = True
        profile = f"the {recipe.profile} profile" if recipe.profile else "a recipe without a profile"
        candidate.notes.append(f"{name}: xtk's default student for {profile} (xtk init writes it), kept on the "
                               f"short-list whatever its rows say: {default.why}")
    if folder is None:
        return candidate
    candidate.found = True
    try:
        shape = model_shape(folder)
    except Exception as exc:  # an architecture this transformers does not know
        candidate.notes.append(f"{name}: unknown shape ({type(exc).__name__}: {str(exc)[:120]})")
    else:
        candidate.parameters = shape.parameters
        candidate.training = training_memory(
            shape, batch=t.per_device_train_batch_size, max_length=t.max_length, dtype=t.torch_dtype,
            lora_rank=t.lora_rank, lora_dropout=t.lora_dropout, target_modules=t.target_modules,
            gradient_checkpointing=t.gradient_checkpointing, processes=t.nproc_per_node,
            bf16_output_copy=gpu_gib is None and makes_bf16_output_copy(recipe))
        candidate.inference = inference_memory(shape, recipe, gpu=gpu_gib is not None)
        if gpu_gib is not None:
            candidate.training_fits = candidate.training.device <= gpu_gib
            candidate.inference_fits = candidate.inference.total <= gpu_gib * recipe.eval.vllm.gpu_memory_utilization
        else:
            candidate.training_fits = candidate.training.total <= ram_gib
            candidate.inference_fits = candidate.inference.total <= ram_gib
    tokenizer_facts(candidate, folder, recipe, sample)
    return candidate


@dataclass
class Advice:
    recipe: str
    profile: str | None
    rows: int
    rows_favour: str
    ram_gib: float
    gpu_gib: float | None
    data: str
    candidates: list[Candidate]
    shortlist: list[str]  # the candidates no check ruled out
    bakeoff_spec: dict
    bakeoff_command: str

    def to_json(self) -> dict:
        return asdict(self)


def machine_ram_gib() -> float:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1)


def default_candidates(recipe: Recipe) -> list[str]:
    return list(dict.fromkeys([recipe.student.model, *EMBEDDED]))


def advise(recipe: Recipe, recipe_path: str, *, rows: int | None = None, ram_gib: float | None = None,
           gpu_gib: float | None = None, candidates: list[str] | None = None) -> Advice:
    rows = labelled_rows(recipe) if rows is None else rows
    ram_gib = machine_ram_gib() if ram_gib is None else ram_gib
    names = candidates or default_candidates(recipe)
    # a folder that is not there is a typo, not a candidate: it would be "unknown" and still go into the bake-off
    missing = [n for n in names
               if n not in EMBEDDED and n.startswith((".", "/", "~")) and not Path(n).expanduser().exists()]
    if missing:
        raise ModelError(f"{', '.join(missing)}: no such model folder (a candidate is an embedded name, a model "
                         "folder or a hub id)")
    sample, described = sample_rows(recipe)
    found = []
    with Bar("advise", total=len(names)) as bar:
        for name in names:
            bar.update(note=name)
            found.append(assess(name, recipe, rows, ram_gib, gpu_gib, sample))
            bar.update(advance=1)
    shortlist = [c.name for c in found if c.shortlisted]
    entry = {"recipe": recipe_path, **({"profile": recipe.profile} if recipe.profile else {})}
    spec = {"students": shortlist or names, "recipes": [entry]}
    command = f"xtk bakeoff bakeoffs/{recipe.name}{'-' + recipe.profile if recipe.profile else ''}.yaml"
    return Advice(recipe.name, recipe.profile, rows, rows_favour(rows), ram_gib, gpu_gib, described, found, shortlist,
                  spec, command)


def _gib(value: float | None, fits: bool | None) -> str:
    if value is None:
        return "unknown"
    return f"{value:.1f} {'fits' if fits else 'does not fit'}"


def render(advice: Advice, console) -> None:
    """The table, the notes and the bake-off that tests the short-list."""
    where = f"GPU {advice.gpu_gib:g} GiB" if advice.gpu_gib is not None else f"RAM {advice.ram_gib:g} GiB"
    table = Table(title=f"{advice.recipe}{' --profile ' + advice.profile if advice.profile else ''}: "
                        f"{advice.rows:,} labelled rows (favour {advice.rows_favour}), {where}", title_justify="left")
    table.add_column("candidate", no_wrap=True)
    for column in ("licence", "commercial use"):  # long licence texts fold rather than widen the table
        table.add_column(column, overflow="fold", max_width=16)
    for column in ("kind", "rows", "parameters", "LoRA training\nGiB", "inference\nGiB", "chat\ntemplate",
                   "tokens/record\nmean (max)"):
        table.add_column(column)
    for c in advice.candidates:
        training = None if c.training is None else c.training.total if advice.gpu_gib is None else c.training.device
        table.add_row(
            c.name, c.licence, c.commercial_use, c.kind, c.rows,
            f"{c.parameters / 1e6:.0f}M" if c.parameters else "unknown",
            _gib(training, c.training_fits), _gib(c.inference and c.inference.total, c.inference_fits),
            {True: "yes", False: "no", None: "unknown"}[c.chat_template],
            f"{c.tokens_mean:.0f} ({c.tokens_max})" if c.tokens_mean is not None else "unknown")
    console.print(table)
    console.print(f"Tokens per record: {advice.data}, with the student prompt, through each candidate's chat "
                  "template.\nLoRA training: every process of `swift sft` at the recipe's batch, max_length and dtype. "
                  "Inference: vLLM's weights, KV cache and framework.", highlight=False)
    for c in advice.candidates:
        for note in c.notes:
            console.print(f"- {note}", highlight=False)
    listed = "the short-list" if advice.shortlist else "them all (no candidate passed every check)"
    console.print(f"\nRules are no measurement: bake off {listed}. Save as {advice.bakeoff_command.split()[-1]}:\n",
                  highlight=False)
    console.print(yaml.safe_dump(advice.bakeoff_spec, sort_keys=False, allow_unicode=True).rstrip(), highlight=False,
                  markup=False)
    console.print(f"\nand run: {advice.bakeoff_command}", highlight=False)
