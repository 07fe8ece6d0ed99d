"""serve: the student behind HTTP, answering as it was evaluated. `POST /extract` runs the texts through
toolkit.evaluate.evaluation.extract (the recipe's prompt, the model's chat template, guided decoding where the recipe
decodes guided, parsing and checks), the same prompt, parsing and model `xtk predict` uses; `GET /health`;
and OpenAI-compatible `GET /v1/models` and `POST /v1/chat/completions` over that engine (docs/predict.md).

One engine answers every request. On vLLM it is vLLM's AsyncLLM: each text is a request to its scheduler, which
batches whatever is running at each step, so concurrent clients share forward passes with no batcher of ours.
Another engine (llama.cpp, ms-swift's transformers) answers one request at a time in a worker thread.
A request that is not JSON, whose text is not a string or a list of strings, is empty, or is longer than the
model's context gets a 4xx with a JSON `error`; the server keeps serving.

What a request may ask and how long it may take are its Limits: a body over its size or more texts than
max_records gets 413, a body not received within read_seconds 408 (the connection closed), a request that waits
queue_seconds without reaching the engine 503 with Retry-After (it leaves the queue), and a client that leaves
takes its request out of the queue (an answer under way is aborted in vLLM, discarded elsewhere). After SIGTERM, uvicorn stops accepting,
lets the requests in flight finish for up to drain_seconds, and returns.
"""

import asyncio
import json
import math
import os
import queue
import socket
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass

from toolkit.evaluate.evaluation import extract, extract_async, refused
from toolkit.task.recipe import Recipe

# No `from __future__ import annotations` here: FastAPI reads a route's annotations to inject the Request, and
# an annotation left as text would be looked up in this module's globals, where fastapi (imported by make_app
# only: `xtk serve` alone needs it) is not.


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server and how long it may take (xtk serve's flags)."""
    max_records: int = 64  # texts in one /extract request
    read_seconds: float = 30.0  # to receive a request's body: a client sending slower gets 408 and is dropped
    queue_seconds: float = 60.0  # to reach the engine: past it, 503 with Retry-After and the request is dropped
    drain_seconds: float = 5.0  # after SIGTERM, for the requests in flight (uvicorn's timeout_graceful_shutdown)

    def max_body_bytes(self, max_chars: int) -> int:
        """The largest body worth reading: max_records texts of `max_chars` characters, each character written
        as the longest JSON escape (a surrogate pair, 12 bytes), and room for the rest of the object."""
        return self.max_records * max_chars * 12 + 65536


class Worker:
    """One daemon thread running calls in order: an engine without a way to take requests as they come answers
    one at a time, off the event loop. A call whose future was cancelled before it began (its client gave up, or
    it waited too long) never runs. Daemon: a call still running when the server has drained past its deadline
    does not keep the process alive."""

    def __init__(self):
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._loop, name="xtk-serve-engine", daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self.calls.put((future, fn, args))
        return future

    def _loop(self) -> None:
        while True:
            future, fn, args = self.calls.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # the request gets the engine's error; the thread goes on
                    future.set_exception(exc)


class Engine:
    """How the server asks its engine. An engine that takes requests as they come (`agenerate`: vLLM's AsyncLLM,
    toolkit/infer/engines.py) gets each as it arrives, and its own scheduler batches whatever is running; any other
    engine answers one request at a time (a request's texts as one batch) in a Worker. Either way `started` is set
    once a request has reached the engine: until then it is waiting, and cancelling it takes it out."""

    def __init__(self, recipe: Recipe, backend, system: str):
        self.recipe, self.backend, self.system = recipe, backend, system
        self.worker = None if hasattr(backend, "agenerate") else Worker()

    async def extract(self, texts: list[str], started: asyncio.Event) -> list:
        """The texts' Extractions (toolkit.evaluate.evaluation.extract), in order."""
        cap = self.recipe.eval.max_new_tokens
        if self.worker is None:
            return await extract_async(self.recipe, self.backend, self.system, texts, cap, started)
        return await self._in_worker(started, extract, self.recipe, self.backend, self.system, texts, cap)

    async def chat(self, messages: list[dict], max_tokens: int, started: asyncio.Event) -> list:
        """The engine's Generation for one chat, as the backend answers it (template, guided decoding), in a list."""
        if self.worker is None:
            return await self.backend.agenerate([messages], max_tokens, started)
        return await self._in_worker(started, self.backend.generate, [messages], max_tokens)

    async def _in_worker(self, started: asyncio.Event, fn, *args):
        loop = asyncio.get_running_loop()

        def run():
            loop.call_soon_threadsafe(started.set)
            return fn(*args)

        return await asyncio.wrap_future(self.worker.submit(run))  # cancelled: the Worker's future is too


def answer_json(recipe: Recipe, x) -> dict:
    """An answer as /extract returns it: the fields (None where the answer has none), valid, problems, raw."""
    parsed = x.parsed or {}
    return {"fields": {f: parsed.get(f) for f in recipe.field_names}, "valid": not x.problems,
            "problems": x.problems, "raw": x.raw}


def unicode_problem(text: str) -> str | None:
    """Why `text` cannot be answered as Unicode (a lone surrogate, which JSON's \\ud800 escape can carry but no
    tokenizer or UTF-8 answer can), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"is not valid Unicode ({exc.reason} at character {exc.start})"
    return None


def request_problem(body, max_chars: int, max_records: int) -> tuple[int, str] | None:
    """(HTTP status, why) for a body /extract cannot answer, None for {"text": str} or {"text": [str, ...]}."""
    if not isinstance(body, dict) or "text" not in body:
        return 422, 'expected a JSON object {"text": "..."} or {"text": ["...", ...]}'
    texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
    if not texts:
        return 422, "text is an empty list"
    if len(texts) > max_records:
        return 413, f"text has {len(texts)} texts, over this server's --max-records={max_records}: send them in parts"
    for i, t in enumerate(texts):
        where = f"text[{i}]" if isinstance(body["text"], list) else "text"
        if not isinstance(t, str):
            return 422, f"{where} must be a string, got {type(t).__name__}"
        if not t.strip():
            return 422, f"{where} is empty"
        if len(t) > max_chars:
            return 413, f"{where} is {len(t)} characters, over data.max_input_chars={max_chars}"
        if why := unicode_problem(t):
            return 422, f"{where} {why}"
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
        if why := unicode_problem(m["content"]):
            return 422, f"messages[{i}].content {why}"
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


def make_app(recipe: Recipe, backend, r, limits: Limits = Limits()):
    """The FastAPI app around one engine (`backend`, built for role `r` by toolkit.deploy.predict.student_backend)."""
    from fastapi import FastAPI, Request, Response
    from fastapi.responses import JSONResponse

    engine = Engine(recipe, backend, recipe.prompt(r.prompt))
    waiting: set[asyncio.Event] = set()  # each request's `started`, while it is answered
    app = FastAPI(title=f"xtk serve {recipe.name}")
    max_chars, max_body = recipe.data.max_input_chars, limits.max_body_bytes(recipe.data.max_input_chars)

    def left() -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    def error(status: int, message: str, **headers: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def body_of(request: Request) -> tuple[bytes, Response | None]:
        """The request's body, or the answer for one that is too large (413) or too slow (408); both close the
        connection, as the rest of the body is never read."""
        def too_large() -> JSONResponse:
            return error(413, f"the body is over this server's limit of {max_body} bytes", Connection="close")

        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body:
            return b"", too_large()
        body = bytearray()
        try:
            async with asyncio.timeout(limits.read_seconds):
                while True:  # the ASGI messages Request.stream() reads, with the size checked as they come
                    message = await request.receive()
                    if message["type"] == "http.disconnect":
                        return b"", left()
                    body += message.get("body", b"")
                    if len(body) > max_body:
                        return b"", too_large()
                    if not message.get("more_body"):
                        return bytes(body), None
        except TimeoutError:
            return b"", error(408, f"the body did not arrive within {limits.read_seconds:g} s", Connection="close")

    async def checked(request: Request, problem) -> tuple[object, Response | None]:
        """The request's JSON body, and the 4xx answer where it is not JSON or `problem(body)` refuses it."""
        raw, refusal = await body_of(request)
        if refusal:
            return None, refusal
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: [[[[... nested too deep
            return None, error(400, f"the body is not JSON ({str(exc)[:200]})")
        why = problem(body)
        return body, error(*why) if why else None

    async def answered(request: Request, ask) -> tuple[object, Response | None]:
        """The engine's answer to `ask(started)` (its error raised), or the answer for a request that got none:
        503 with Retry-After where it waited limits.queue_seconds without reaching the engine, 499 where the
        client left first; either way the request is cancelled (it leaves the queue; an answer under way is
        aborted in vLLM, discarded elsewhere)."""
        started = asyncio.Event()
        waiting.add(started)
        work = asyncio.ensure_future(ask(started))
        gone = asyncio.ensure_future(request.receive())  # after the body, the next message is http.disconnect
        try:
            done, _ = await asyncio.wait({work, gone}, timeout=limits.queue_seconds,
                                         return_when=asyncio.FIRST_COMPLETED)
            if not done and started.is_set():  # the engine took it in time: its answer is worth waiting for
                done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also where this handler is cancelled (a drain past its deadline)
            waiting.discard(started)
            gone.cancel()
            if not work.done():
                work.cancel()
        if work in done:
            return work.result(), None
        if done:
            return None, left()
        return None, error(503, f"the engine is busy: this request waited {limits.queue_seconds:g} s without "
                                "reaching it; retry later", **{"Retry-After": str(math.ceil(limits.queue_seconds))})

    replica = f"{socket.gethostname()}:{os.getpid()}"  # which server answered, where several share an address

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "recipe": recipe.name, "model": r.model, "fields": recipe.field_names,
                "queued": sum(not started.is_set() for started in waiting), "replica": replica}

    @app.post("/extract")
    async def extract(request: Request):
        body, refusal = await checked(request, lambda b: request_problem(b, max_chars, limits.max_records))
        if refusal:
            return refusal
        texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
        answers, refusal = await answered(request, lambda started: engine.extract(texts, started))
        if refusal:
            return refusal
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
        body, refusal = await checked(request, lambda b: chat_problem(b, max_chars, cap))
        if refusal:
            return refusal
        if body.get("model") not in (None, served, r.model):
            return error(404, f"model {body['model']!r} is not served here; /v1/models lists {served!r}")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens")) or cap
        try:
            answers, refusal = await answered(request, lambda started: engine.chat(body["messages"], max_tokens,
                                                                                   started))
        except Exception as exc:
            if refused(exc):
                return error(413, f"the messages are longer than the model's context: {exc}")
            raise
        if refusal:
            return refusal
        [g] = answers
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served, "choices": [{"index": 0, "message": {"role": "assistant", "content": g.text},
                                              "finish_reason": "length" if g.completion_tokens >= max_tokens
                                              else "stop"}],
                "usage": {"completion_tokens": g.completion_tokens}}

    return app


def server(app, host: str, port: int, limits: Limits = Limits()):
    """The uvicorn server for `app`: SIGTERM (or Ctrl-C) stops accepting and drains the requests in flight for
    limits.drain_seconds; an idle keep-alive connection is closed after 5 s. `.run()` serves until then."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_keep_alive=5,
                                         timeout_graceful_shutdown=limits.drain_seconds))
