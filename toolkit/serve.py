"""serve: the student behind HTTP, answering as it was evaluated. `POST /extract` runs the texts through
toolkit.evaluate.extract (the recipe's prompt, the model's chat template, guided decoding where the recipe
decodes guided, parsing and checks), the same function and the same engine `xtk predict` uses; `GET /health`.

One engine answers every request: a worker thread takes whatever requests are waiting (up to eval.batch_size
texts) and answers them as one batch, so concurrent clients share forward passes as an offline batch does.
A request that is not JSON, whose text is not a string or a list of strings, is empty, or is longer than the
model's context gets a 4xx with a JSON `error`; the server keeps serving.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

from fastapi import Request  # at module level: FastAPI resolves the handler's annotations from its globals

from toolkit.recipe import Recipe


class Batcher:
    """The engine's one thread: requests queue up and are answered together, in arrival order."""

    def __init__(self, recipe: Recipe, backend, system: str):
        self.recipe, self.backend, self.system = recipe, backend, system
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="xtk-serve-engine", daemon=True)
        self.thread.start()

    def submit(self, texts: list[str]) -> Future:
        future: Future = Future()
        self.queue.put((texts, future))
        return future

    def _loop(self) -> None:
        from toolkit.evaluate import extract

        size = self.recipe.eval.batch_size
        while True:
            waiting = [self.queue.get()]
            n = len(waiting[0][0])
            while n < size:
                try:
                    waiting.append(self.queue.get_nowait())
                except queue.Empty:
                    break
                n += len(waiting[-1][0])
            texts = [t for ts, _ in waiting for t in ts]
            try:
                answers = extract(self.recipe, self.backend, self.system, texts, self.recipe.eval.max_new_tokens)
            except Exception as exc:  # the engine failed: every waiting request learns it, the thread goes on
                for _, future in waiting:
                    future.set_exception(exc)
                continue
            i = 0
            for ts, future in waiting:
                future.set_result(answers[i:i + len(ts)])
                i += len(ts)


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


def make_app(recipe: Recipe, backend, r):
    """The FastAPI app around one engine (`backend`, built for role `r` by toolkit.predict.student_backend)."""
    import asyncio
    import json

    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    batcher = Batcher(recipe, backend, recipe.prompt(r.prompt))
    app = FastAPI(title=f"xtk serve {recipe.name}")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "recipe": recipe.name, "model": r.model, "fields": recipe.field_names}

    @app.post("/extract")
    async def extract(request: Request):
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError) as exc:
            return error(400, f"the body is not JSON ({exc})")
        problem = request_problem(body, recipe.data.max_input_chars)
        if problem:
            return error(*problem)
        texts = body["text"] if isinstance(body["text"], list) else [body["text"]]
        answers = await asyncio.wrap_future(batcher.submit(texts))
        refused = [(i, x.refused) for i, x in enumerate(answers) if x.refused]
        if refused:
            i, why = refused[0]
            where = f"text[{i}]" if isinstance(body["text"], list) else "text"
            return error(413, f"{where} is longer than the model's context: {why}")
        out = [answer_json(recipe, x) for x in answers]
        return out if isinstance(body["text"], list) else out[0]

    return app
