"""Inference backends by name, each declaring what it can do; `make_backend` looks one up and builds it.

A backend answers `generate(list of chat message lists) -> list of Generation`. The built-in ones live in their
own modules (engines.py, likelihood.py, head.py, llamacpp.py) and are named here by a "module:function"
reference, so that this registry imports none of them (nor torch) until one is built; a backend from elsewhere
registers itself with `register` (docs/extending.md). Every list of backend names (the CLI's choices among them)
is read here.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.io.errors import StageError
from toolkit.model.models import resolve_model
from toolkit.model.thinking import thinking_off
from toolkit.task.recipe import Recipe

Messages = list[dict[str, str]]


@dataclass
class Generation:
    text: str
    completion_tokens: int = 0


def user_text(messages: Messages) -> str | None:
    """The text a chat asks about, as the answer's schema reads it: its last user turn (toolkit/evaluate/evaluation.chat
    puts the text there as it is)."""
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), None)


class Backend:
    """One inference engine: `generate` answers a batch of chats; `close` frees what would outlive the object."""

    name = ""
    batch: int | None = None  # the most chats one generate() call gains from; None: eval.batch_size

    def generate(self, batch: list[Messages], max_tokens: int) -> list[Generation]:
        raise NotImplementedError

    def close(self) -> None:
        pass  # nothing outlives the object by default


@dataclass(frozen=True)
class Served:
    """What a backend is built to serve, decided by `make_backend` before the backend sees it."""

    recipe: Recipe
    model: str  # a model folder (resolved) where the kind serves one; else the name as given (endpoint, baseline)
    model_type: str | None = None
    template: str | None = None
    guided_json: bool = False  # decode to the recipe's JSON schema (only for a kind that can)
    thinking_off: bool = False  # a hybrid-thinking template, served with thinking off (toolkit/model/thinking.py)
    base_url: str | None = None
    api_key_env: str | None = None
    cache: Path | None = None  # where an endpoint's answers are journalled
    train: Path | None = None  # the run's training split, for a baseline that learns from it
    online: bool = False  # answers requests as they come (xtk serve), where the kind has an engine for that


@dataclass(frozen=True)
class BackendKind:
    name: str
    build: str | Callable[[Served], Backend]  # "module:function", imported when the kind is first built
    description: str
    guided: bool = False  # can constrain decoding to the recipe's JSON schema
    reads_prompt: bool = True  # False: answers from the user's text alone (the recipe's prompt is not shown)
    needs_url: bool = False  # serves through an endpoint: --base-url
    model_folder: bool = True  # loads a model folder (an embedded name, a folder or a hub id is resolved first)

    def factory(self) -> Callable[[Served], Backend]:
        if callable(self.build):
            return self.build
        module, name = self.build.split(":")
        return getattr(importlib.import_module(module), name)


BACKENDS: dict[str, BackendKind] = {}


def register(kind: BackendKind) -> BackendKind:
    """Add a backend (or replace one of the same name); `xtk eval --backend NAME` and roles may then name it."""
    BACKENDS[kind.name] = kind
    return kind


for _kind in (
    BackendKind("vllm", "toolkit.infer.engines:build_vllm", "offline batches through vLLM", guided=True),
    BackendKind("transformers", "toolkit.infer.engines:build_transformers", "ms-swift's transformers engine"),
    BackendKind("openai", "toolkit.infer.engines:build_openai", "an OpenAI-compatible endpoint", needs_url=True,
                model_folder=False),
    BackendKind("rules", "toolkit.infer.engines:build_rules", "the recipe's baseline: rules or a classical model",
                reads_prompt=False, model_folder=False),
    BackendKind("likelihood", "toolkit.infer.likelihood:build", "the likeliest allowed answer of each enum field"),
    BackendKind("head", "toolkit.infer.head:build", "a merged classification head, its class as JSON",
                reads_prompt=False),
    BackendKind("llamacpp", "toolkit.infer.llamacpp:build", "a GGUF file (xtk export) through llama.cpp", guided=True,
                model_folder=False),
):
    register(_kind)


def backend_names() -> tuple[str, ...]:
    """Every backend a user may name, "auto" first (vllm where it imports, else transformers)."""
    return ("auto", *BACKENDS)


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def pick_backend(requested: str) -> str:
    if requested != "auto":
        return requested
    return "vllm" if vllm_available() else "transformers"


def backend_kind(name: str) -> BackendKind:
    kind = BACKENDS.get(pick_backend(name))
    if kind is None:
        raise StageError(f"no backend {name!r}; backends: {', '.join(backend_names())}")
    return kind


def make_backend(recipe: Recipe, backend: str, model: str, *, base_url: str | None = None,
                 api_key_env: str | None = None, guided_json: bool = False, cache: Path | None = None,
                 train: Path | None = None, online: bool = False) -> Backend:
    """Build the backend `backend` names to serve `model`; `cache` journals an endpoint's answers; `train` is the
    run's training split, for a baseline that learns from it; `online`: for requests as they come (xtk serve)."""
    kind = backend_kind(backend)
    if guided_json and not kind.guided:
        able = [k.name for k in BACKENDS.values() if k.guided]
        raise StageError(f"guided decoding (eval.guided_json, --guided-json) needs the {' or '.join(able)} backend, "
                         f"not {kind.name}: use --backend {able[0]}, or set eval.guided_json=false")
    if kind.needs_url and not base_url:
        raise StageError(f"the {kind.name} backend needs --base-url (e.g. http://127.0.0.1:8000/v1)")
    model_type = template = None
    if kind.model_folder:
        s = recipe.student
        resolved = resolve_model(model, s.model_type if model == s.model else None,
                                 s.template if model == s.model else None, s.trust_remote_code)
        if resolved.local and not Path(resolved.ref, "config.json").is_file():
            raise StageError(f"{resolved.ref}: not a model folder (no config.json)")
        model, model_type, template = resolved.ref, resolved.model_type, resolved.template
    served = Served(recipe, model, model_type, template, guided_json, thinking_off(model_type, template, model),
                    base_url, api_key_env, cache, train, online)
    return kind.factory()(served)
