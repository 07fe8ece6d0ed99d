"""llama.cpp, one pinned release for both ends of an export: the `llamacpp` inference backend (a GGUF file through
llama-cpp-python) and llama.cpp's own HF -> GGUF converter and quantiser from the same commit (llama-cpp-python's
sdist vendors llama.cpp, `convert_hf_to_gguf.py` and gguf-py included), so the file written is the file read.

The backend answers the chats evaluation builds (toolkit/evaluate.run_eval) the way llama-cpp-python's own chat
completion does with the GGUF's chat template (rendered by jinja2 as transformers renders it, tokenised without an
added BOS), greedy, and, where the recipe decodes guided, under its JSON schema as a llama.cpp grammar.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from toolkit.io.errors import StageError
from toolkit.io.jsonl import open_own
from toolkit.infer.backends import Backend, Generation, Messages, Served, user_text
from toolkit.model.models import ModelError, cache_dir
from toolkit.model.thinking import template_kwargs, thinking_off
from toolkit.task.recipe import Recipe

# llama-cpp-python's release: its runtime and the converter extracted from its sdist (setup.sh builds it).
LLAMA_CPP_PYTHON = "0.3.36"
# What export runs of the sdist: the converter, its per-architecture modules and the gguf-py it imports first.
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise StageError(f"llama-cpp-python is not installed: `bash setup.sh` builds it (or pip install "
                         f"llama-cpp-python=={LLAMA_CPP_PYTHON})") from None
    return llama_cpp


@dataclass(frozen=True)
class Threads:
    """How many threads llama.cpp computes with (n_threads and n_threads_batch), and why."""

    count: int
    why: str


def choose_threads(omp: str | None, usable: int, quota: float | None, idle: float) -> Threads:
    """The one rule for llama.cpp's threads. OMP_NUM_THREADS where set (sft.sh and the tests set 1; its first
    level where it lists several), else one thread per core this process may use (its CPU affinity, within its
    cgroup's quota) that is idle now. llama.cpp's threads spin at a barrier after every operation, waiting for the
    slowest: on 2 cores a training keeps busy, 2 threads answered a record in 30-60 s and 1 thread in 3-4 s."""
    if omp:
        first = omp.split(",")[0].strip()
        if not first.isdigit() or int(first) < 1:
            raise StageError(f"OMP_NUM_THREADS={omp!r}: expected a whole number of threads above 0")
        return Threads(int(first), f"{int(first)} thread{'s' * (int(first) != 1)}, OMP_NUM_THREADS")
    cores = usable if quota is None else max(1, min(usable, int(quota)))
    count = max(1, min(cores, round(idle)))
    return Threads(count, f"{count} thread{'s' * (count != 1)}: {min(idle, cores):.1f} of the {cores} cores this "
                          "process may use idle")


def cgroup_cores(cgroup: Path = Path("/proc/self/cgroup"), root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota (cgroup v2 cpu.max: a container's --cpus) of this process's group or the tightest of its
    parents', in cores; None where there is none or no cgroup v2. A container's affinity lists every core of its
    host, its quota how many it may keep busy."""
    try:
        group = Path(cgroup.read_text(encoding="utf-8").split("::", 1)[1].strip().lstrip("/"))
    except (OSError, IndexError):
        return None
    quotas = []
    for folder in (group, *group.parents):
        try:
            quota, period = (root / folder / "cpu.max").read_text(encoding="utf-8").split()
        except (OSError, ValueError):
            continue
        if quota != "max":
            quotas.append(int(quota) / int(period))
    return min(quotas, default=None)


def threads() -> Threads:
    """llama.cpp's threads on this machine now (choose_threads): how busy each usable core is, over half a second."""
    cpus = os.sched_getaffinity(0)
    omp = os.environ.get("OMP_NUM_THREADS")
    use = [] if omp else psutil.cpu_percent(interval=0.5, percpu=True)
    idle = sum(1 - use[c] / 100 for c in cpus if c < len(use))
    return choose_threads(omp, len(cpus), cgroup_cores(), idle)


def json_grammar(schema: dict) -> str:
    """The recipe's JSON schema as llama.cpp GBNF, properties in the schema's order, with llama.cpp's own (C++)
    whitespace rule: nothing, one space, or a newline and up to 20 indent characters. llama-cpp-python's Python
    converter allows one optional space only, which would forbid the indented JSON vLLM's guided decoding lets the
    student write here (measured: `{\\n    "district": ...`). A recipe with tables gives an `anyOf` of objects, one
    per branch of its tables: each is an alternative of the root rule. No prop_order: the converter would put a
    nested object's key that a top-level key shares first in that object; without it, every object keeps its own
    order."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    objects = schema.get("anyOf", [schema])
    gbnf = json_schema_to_gbnf(json.dumps(schema, ensure_ascii=False))
    spaced, found = re.subn(r"^space ::= .*$", lambda _: SPACE_RULE, gbnf, flags=re.M)  # taken as written
    # The answer ends at its closing brace, as under vLLM (else the model writes a newline after it first).
    ends = r"root" if "anyOf" not in schema else r"alternative-\d+"
    ended, closed = re.subn(rf"^({ends} ::= .*) space$", r"\1", spaced, flags=re.M)
    if found != 1 or closed != len(objects):
        raise StageError(f"llama-cpp-python {LLAMA_CPP_PYTHON}'s grammar has no single `space` and `root` rule")
    return ended


SPACE_RULE = 'space ::= | " " | "\\n" [ \\t]{0,20}'
GRAMMARS_KEPT = 8  # a table's "none written" grammar is reused; each place's own is small and cheap to make


class LlamaCppBackend(Backend):
    """A GGUF file through llama-cpp-python: one chat at a time (its high-level API has no batch), greedy."""

    name = "llamacpp"
    batch = 1  # one chat at a time anyway: an evaluation's progress bar moves, and says time left, per record

    def __init__(self, recipe: Recipe, gguf: str | Path, guided_json: bool = False):
        llama_cpp = _llama_cpp()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        gguf = Path(gguf)
        if not gguf.is_file():
            raise ModelError(f"{gguf}: no such GGUF file")
        # The evaluated context length; all layers on a GPU if the build has one (a CPU build ignores it).
        self.threads = threads()
        self.llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=recipe.eval.vllm.max_model_len,
                                   n_threads=self.threads.count, n_threads_batch=self.threads.count, n_gpu_layers=-1,
                                   seed=0, verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{gguf}: the GGUF has no tokenizer.chat_template: export it with `xtk export`, "
                             "which writes the template the student was evaluated with")

        def text(token: int) -> str:
            return self.llm.detokenize([token], special=True).decode("utf-8") if token >= 0 else ""

        # As llama-cpp-python builds the chat format of a GGUF with a template (Llama.__init__).
        self.formatter = Jinja2ChatFormatter(template=template, eos_token=text(self.llm.token_eos()),
                                             bos_token=text(self.llm.token_bos()))
        # thinking off as vLLM serves the same template: the GGUF's architecture stands for ms-swift's model type
        self.template_kwargs = template_kwargs(thinking_off(self.llm.metadata.get("general.architecture"), None))
        self.recipe, self.guided_json = recipe, guided_json
        self.grammars: dict[str, GreedyGrammar] = {}  # by schema, the most recently used last

    def prompt_tokens(self, messages: Messages) -> list[int]:
        """The chat rendered by the GGUF's template and tokenised as llama-cpp-python's chat completion does:
        special tokens parsed, no BOS added (a template that wants one writes it)."""
        prompt = self.formatter(messages=messages, **self.template_kwargs).prompt
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)

    def generate(self, batch: list[Messages], max_tokens: int) -> list[Generation]:
        out = []
        for messages in batch:
            grammar = self.grammar(messages) if self.guided_json else None
            done = self.llm.create_completion(self.prompt_tokens(messages), max_tokens=max_tokens, temperature=0.0,
                                              repeat_penalty=1.0, logits_processor=[grammar] if grammar else None)
            out.append(Generation(done["choices"][0]["text"], done["usage"]["completion_tokens"]))
        return out

    def grammar(self, messages: Messages) -> GreedyGrammar:
        """The grammar of the schema this chat's text is answered under (the same for every text but where a table
        is declared `written`), at its start; kept for the next texts under the same schema (a few at a time)."""
        key = json.dumps(self.recipe.json_schema(user_text(messages)), ensure_ascii=False)
        grammar = self.grammars.pop(key, None) or GreedyGrammar(self.llm, json_grammar(json.loads(key)))
        self.grammars[key] = grammar
        while len(self.grammars) > GRAMMARS_KEPT:
            self.grammars.pop(next(iter(self.grammars))).close()
        grammar.reset()
        return grammar

    def close(self) -> None:
        for grammar in self.grammars.values():
            grammar.close()
        self.llm.close()


class GreedyGrammar:
    """Greedy decoding under a llama.cpp grammar, as llama.cpp's own sampler (common_sampler) does it: the model's
    best token is checked against the grammar alone, and the grammar runs over the whole vocabulary only when it
    rejects that token. The token chosen is the one llama-cpp-python's grammar-then-greedy chain chooses (the best
    token the grammar allows, the first of equals), but that chain runs the grammar over every token of the
    vocabulary at every step: with Gemma's 262k tokens and logistics_zh's schema, this check answered 2.3x faster
    (benchmarks/results/guided_llamacpp.json).

    A logits processor for create_completion: it returns the scores with every token but the chosen one at -inf,
    so the greedy sampler after it takes that token, and advances its grammar by it."""

    def __init__(self, llm, gbnf: str):
        llama_cpp = _llama_cpp()
        self.llama_cpp = llama_cpp
        # llama-cpp-python's own add_grammar makes the same sampler, from the model's vocabulary (pinned release).
        self.sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode("utf-8"), b"root")
        if not self.sampler:
            raise StageError("llama.cpp could not parse the recipe's JSON grammar")
        self.one = (llama_cpp.llama_token_data * 1)()
        self.checked = 0  # this answer's tokens, and of those how many the grammar chose over the vocabulary
        self.searched = 0

    def reset(self) -> None:
        """Back to the grammar's start, for the next answer."""
        self.llama_cpp.llama_sampler_reset(self.sampler)
        self.checked = self.searched = 0

    def _apply(self, data, size: int) -> None:
        cur = self.llama_cpp.llama_token_data_array(data=data, size=size, selected=-1, sorted=False)
        self.llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(cur))

    def __call__(self, input_ids, scores):
        best = int(np.argmax(scores))  # the first of equals, as llama.cpp's greedy sampler
        self.one[0].id, self.one[0].logit, self.one[0].p = best, float(scores[best]), 0.0
        self._apply(self.one, 1)
        if self.one[0].logit == -np.inf:  # rejected: the grammar decides over every token
            self.searched += 1
            cur = np.zeros(len(scores), dtype=np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)],
                                                        align=True))
            cur["id"] = np.arange(len(scores))
            cur["logit"] = scores
            self._apply(cur.ctypes.data_as(self.llama_cpp.llama_token_data_p), len(cur))
            best = int(np.argmax(cur["logit"]))
        self.checked += 1
        self.llama_cpp.llama_sampler_accept(self.sampler, best)
        chosen = np.full_like(scores, -np.inf)
        chosen[best] = scores[best]
        return chosen

    def close(self) -> None:
        if self.sampler:
            self.llama_cpp.llama_sampler_free(self.sampler)
            self.sampler = None


# --- the converter and the quantiser --------------------------------------------------------------------------

def sdist_path() -> Path:
    """Where setup.sh keeps llama-cpp-python's sdist (it builds the wheel from it)."""
    return cache_dir() / "wheels" / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"


def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py of the pinned release, extracted once from its sdist into the cache
    (downloaded first if setup.sh has not left it there). Only the converter's own files are taken, as plain
    files inside the target folder."""
    target = cache_dir() / "llama.cpp" / LLAMA_CPP_PYTHON
    script = target / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    sdist = sdist_path()
    if not sdist.is_file():
        sdist.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                "-d", str(sdist.parent), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not sdist.is_file():
            raise StageError(f"could not download llama-cpp-python=={LLAMA_CPP_PYTHON}'s sdist (llama.cpp's "
                             f"converter ships in it) into {sdist.parent}: is PyPI reachable?\n  {' '.join(argv)}\n  "
                             + (done.stderr.strip().splitlines() or ["(no error text)"])[-1])
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".partial-") as tmp:
        work = Path(tmp) / LLAMA_CPP_PYTHON
        try:
            with tarfile.open(sdist) as tar:
                members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(prefix)
                           and any(m.name[len(prefix):].startswith(f) for f in CONVERTER_FILES)]
                for m in members:
                    m.name = m.name[len(prefix):]
                tar.extractall(work, members=members, filter="data")  # "data": no links, nothing outside `work`
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise StageError(f"{sdist}: cannot read llama.cpp's converter from it ({exc}); delete it to download "
                             "it anew") from None
        if not (work / "convert_hf_to_gguf.py").is_file():
            raise StageError(f"{sdist}: has no vendor/llama.cpp/convert_hf_to_gguf.py; delete it to download it anew")
        os.replace(work, target)
    return script


# convert_hf_to_gguf.py writes these itself; q4_k_m is quantised by llama.cpp from an f16 file.
CONVERTER_TYPES = {"f16": "f16", "q8_0": "q8_0"}
QUANTS = ("f16", "q8_0", "q4_k_m")


def convert(model_dir: Path, out: Path, outtype: str, log: Path) -> list[str]:
    """convert_hf_to_gguf.py MODEL --outfile OUT --outtype T, its output kept in `log`; StageError with its last
    lines when it fails. Returns the argv."""
    argv = [sys.executable, str(converter()), str(model_dir), "--outfile", str(out), "--outtype", outtype]
    with os.fdopen(open_own(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8") as fh:
        done = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0 or not out.is_file():
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
        raise StageError(f"llama.cpp's converter failed (exit {done.returncode}); its log: {log}\n  "
                         + "\n  ".join(tail))
    return argv


def quantize(src: Path, out: Path, quant: str) -> None:
    """llama.cpp's quantiser (llama_model_quantize)."""
    llama_cpp = _llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    params.nthread = threads().count
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise StageError(f"llama.cpp could not quantise {src} to {quant} (llama_model_quantize returned {rc})")


def gguf_metadata(path: Path, keys: tuple[str, ...]) -> dict:
    """String and number values of some GGUF metadata keys, read with gguf-py (no model load)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    out = {}
    for key in keys:
        field = reader.get_field(key)
        if field is not None:
            out[key] = field.contents()
    return out


def build(s: Served) -> LlamaCppBackend:
    return LlamaCppBackend(s.recipe, s.model, s.guided_json)
