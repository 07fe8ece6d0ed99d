"""serve: the student behind HTTP, answering as it was evaluated. `POST /extract` runs the texts through
toolkit.evaluate.evaluation.extract (the recipe's prompt, the model's chat template, guided decoding where the recipe
decodes guided, parsing and checks), the same function and the same engine `xtk predict` uses; `GET /health`;
and OpenAI-compatible `GET /v1/models` and `POST /v1/chat/completions` over that engine (docs/predict.md).

One engine answers every request: a worker thread takes whatever requests are waiting (up to eval.batch_size
texts) and answers them as one batch, so concurrent clients share forward passes as an offline batch does.
A request that is not JSON, whose text is not a string or a list of strings, is empty, or is longer than the
model's context gets a 4xx with a JSON `error`; the server keeps serving.
"""

import asyncio
import json
import queue
import threading
import time
import uuid
from concurrent.futures import Future

from toolkit.evaluate.evaluation import extract, refused
from toolkit.task.recipe import Recipe

# No `from __future__ import annotations` here: FastAPI reads a route's annotations to inject the Request, and
# an annotation left as text would be looked up in this module's globals, where fastapi (imported by make_app
# only: `xtk serve` alone needs it) is not.


class Batcher:
    """The engine's one thread: requests queue up and are answered together, in arrival order. Texts for
    /extract share a batch; a chat of /v1/chat/completions (its own messages) runs as a batch of one."""

    def __init__(self, recipe: Recipe, backend, system: str):
        self.recipe, self.backend, self.system = recipe, backend, system
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="xtk-serve-engine", daemon=True)
        self.thread.start()

    def submit(self, texts: list[str]) -> Future:
        """The texts' Extractions (toolkit.evaluate.evaluation.extract), in order."""
        future: Future = Future()
        self.queue.put((texts, None, future))
        return future

    def chat(self, messages: list[dict], max_tokens: int) -> Future:
        """The engine's Generation for one chat, as the backend answers it (template, guided decoding)."""
        future: Future = Future()
        self.queue.put((None, (messages, max_tokens), future))
        return future

    def _loop(self) -> None:
        size = self.recipe.eval.batch_size
        held = None  # a chat met while gathering texts: answered right after their batch
        while True:
            first = held or self.queue.get()
            held = None
            if first[1] is not None:
                messages, max_tokens = first[1]
                self._answer([first], lambda: self.backend.generate([messages], max_tokens), 1)
                continue
            waiting = [first]
            n = len(first[0])
            while n < size:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item[1] is not None:
                    held = item
                    break
                waiting.append(item)
                n += len(item[0])
            texts = [t for ts, _, _ in waiting for t in ts]
            self._answer(waiting, lambda: extract(self.recipe, self.backend, self.system, texts,
                                                  self.recipe.eval.max_new_tokens), None)

    @staticmethod
    def _answer(waiting: list, run, each: int | None) -> None:
        """Run the batch; each waiting request gets its share of the answers (`each`, or as many as its texts),
        or, where the engine failed, the error (the thread goes on)."""
        try:
            answers = run()
        except Exception as exc:
            for *_, future in waiting:
                future.set_exception(exc)
            return
        i = 0
        for texts, _, future in waiting:
            k = each or len(texts)
            future.set_result(answers[i:i + k])
            i += k


def answer_json(recipe: Recipe, x) -> dict:
    """An answer as /extract returns it: the fields (None where the answer has none), valid, problems, raw."""
    parsed = x.parsed or {}
    return {"fields": {f: parsed.get(f) for f in recipe.field_names}, "valid": not x.problems,
            "problems": x.problems, "raw": x.raw}


def request_problem(body, max_chars: int) -> tuple[int, str] | None:
    """(HTTP status, why) for a body /extract cannot answer, None for {"text": str} or {"text": [str, ...]}."""
    if not isinstance(body, dict) or "text" not in body:
        return 422, 'expected a JSON object {"text": "..."} or {"text": ["...", ...]}'
    texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
    if not texts:
        return 422, "text is an empty list"
    for i, t in enumerate(texts):
        where = f"text[{i}]" if isinstance(body["text"], list) else "text"
        if not isinstance(t, str):
            return 422, f"{where} must be a string, got {type(t).__name__}"
        if not t.strip():
            return 422, f"{where} is empty"
        if len(t) > max_chars:
            return 413, f"{where} is {len(t)} characters, over data.max_input_chars={max_chars}"
    return None


def chat_problem(body, max_chars: int, max_tokens: int) -> tuple[int, str] | None:
    """(HTTP status, why) for a /v1/chat/completions body this server cannot answer as asked, None otherwise.
    The student answers greedily, one choice, no stream, as it was evaluated: a request for anything else is
    refused rather than answered otherwise than it asked."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        return 422, 'expected a JSON object with "messages": [{"role": ..., "content": ...}, ...]'
    for i, m in enumerate(body["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            return 422, f"messages[{i}] must be {{\"role\": \"system\"|\"user\"|\"assistant\", \"content\": a string}}"
    if sum(len(m["content"]) for m in body["messages"]) > max_chars:
        return 413, f"the messages are over data.max_input_chars={max_chars} characters"
    if body.get("stream"):
        return 400, "stream is not served: ask without it"
    if body.get("n", 1) != 1:
        return 400, "n must be 1: the student answers greedily, one choice"
    if body.get("temperature") not in (None, 0, 0.0):
        return 400, "temperature must be 0 (or left out): the student is served greedy, as it was evaluated"
    limit = body.get("max_tokens", body.get("max_completion_tokens"))
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= max_tokens):
        return 400, f"max_tokens must be an integer from 1 to {max_tokens} (eval.max_new_tokens)"
    return None


def make_app(recipe: Recipe, backend, r):
    """The FastAPI app around one engine (`backend`, built for role `r` by toolkit.deploy.predict.student_backend)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    batcher = Batcher(recipe, backend, recipe.prompt(r.prompt))
    app = FastAPI(title=f"xtk serve {recipe.name}")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def checked(request: Request, problem) -> tuple[object, JSONResponse | None]:
        """The request's JSON body, and the 4xx answer where it is not JSON or `problem(body)` refuses it."""
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return None, error(400, f"the body is not JSON ({exc})")
        why = problem(body)
        return body, error(*why) if why else None

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "recipe": recipe.name, "model": r.model, "fields": recipe.field_names}

    @app.post("/extract")
    async def extract(request: Request):
        body, refusal = await checked(request, lambda b: request_problem(b, recipe.data.max_input_chars))
        if refusal:
            return refusal
        texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
        answers = await asyncio.wrap_future(batcher.submit(texts))
        too_long = [(i, x.refused) for i, x in enumerate(answers) if x.refused]
        if too_long:
            i, why = too_long[0]
            where = f"text[{i}]" if isinstance(body["text"], list) else "text"
            return error(413, f"{where} is longer than the model's context: {why}")
        out = [answer_json(recipe, x) for x in answers]
        return out if isinstance(body["text"], list) else out[0]

    # OpenAI-compatible routes over the same engine, for clients that speak that API (the openai SDK, or
    # `xtk eval --backend openai --base-url http://HOST:PORT/v1`): a chat is answered with the model's chat
    # template and, where the recipe decodes guided, the recipe's schema, exactly as /extract's `raw` is.
    served = r.name or r.who

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": served, "object": "model", "owned_by": "xtk", "root": r.model}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        cap = recipe.eval.max_new_tokens
        body, refusal = await checked(request, lambda b: chat_problem(b, recipe.data.max_input_chars, cap))
        if refusal:
            return refusal
        if body.get("model") not in (None, served, r.model):
            return error(404, f"model {body['model']!r} is not served here; /v1/models lists {served!r}")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens")) or cap
        try:
            [g] = await asyncio.wrap_future(batcher.chat(body["messages"], max_tokens))
        except Exception as exc:
            if refused(exc):
                return error(413, f"the messages are longer than the model's context: {exc}")
            raise
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served, "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                                              "finish_reason": "length" if g.completion_tokens >= max_tokens
                                              else "stop"}],
                "usage": {"completion_tokens": g.completion_tokens}}

    return app
