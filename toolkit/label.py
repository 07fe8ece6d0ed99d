"""label: a teacher behind any OpenAI-compatible endpoint turns raw texts into labels, never paying twice.

Every result is appended (and fsynced) to labelled.jsonl or rejects.jsonl as it arrives, keyed by a hash of
(model, prompt, input, votes): a re-run, or a run after a crash, sends no request for a finished record.
Transient faults (429 honouring Retry-After, 5xx, time-outs, dropped connections) are retried with
exponential back-off and jitter; a record that still fails is rejected as "gave up" and is tried again by
the next run. The API key is read from the environment variable the recipe names and is written nowhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.errors import StageError
from toolkit.jsonl import DataError, append_jsonl, iter_jsonl, read_jsonl, write_json, write_jsonl
from toolkit.progress import Bar
from toolkit.recipe import Recipe
from toolkit.scoring import compute_metrics, extract_json, normalise

GAVE_UP = "gave up after retries"


def read_inputs(path: str | Path) -> list[dict]:
    """Raw texts: .txt one per line (id = line number), or JSONL with a text field (and an optional id)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, "no such file")
    rows, ids = [], set()
    if path.suffix == ".txt":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                rows.append({"id": f"line-{n}", "text": line.strip()})
    else:
        for n, row in iter_jsonl(path):
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise DataError(path, n, "expected a JSON object with a non-empty text field")
            rows.append({"id": str(row.get("id", f"line-{n}")), "text": row["text"]})
    for n, r in enumerate(rows, 1):
        if r["id"] in ids:
            raise DataError(path, n, f"duplicate id {r['id']!r}")
        ids.add(r["id"])
    return rows


def cache_key(model: str, prompt: str, text: str, votes: int) -> str:
    return hashlib.sha256(json.dumps([model, prompt, text, votes], ensure_ascii=False).encode()).hexdigest()[:32]


def check_answer(recipe: Recipe, text: str, content: str) -> tuple[dict | None, str | None, str]:
    """(label, None, "") when the answer is usable, else (None, reason, detail)."""
    if not content.strip():
        return None, "empty", "the answer was empty"
    parsed = extract_json(content)
    if parsed is None:
        return None, "unparseable", "no complete JSON object in the answer"
    names = recipe.field_names
    if set(parsed) != set(names) or not all(isinstance(parsed[k], str) for k in names):
        return None, "schema", f"expected string fields {names}, got {json.dumps(parsed, ensure_ascii=False)[:200]}"
    label = {k: parsed[k] for k in names}
    if not any(v.strip() for v in label.values()):
        return None, "empty", "every field is empty"
    for f in recipe.fields:
        value = normalise(label[f.name], f.normalise)
        if f.grounded and value and value not in normalise(text, f.normalise):
            return None, "ungrounded", f"{f.name}={label[f.name]!r} does not occur in the input"
    return label, None, ""


def majority(recipe: Recipe, labels: list[dict]) -> tuple[dict | None, str]:
    """Field-wise majority of k labels; None (and the field) when a field has no strict majority."""
    out = {}
    for f in recipe.field_names:
        value, count = Counter(normalise(lb[f], ["strip"]) for lb in labels).most_common(1)[0]
        if count * 2 <= len(labels):
            return None, f
        out[f] = value
    return out, ""


@dataclass
class Summary:
    total: int = 0
    cached: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    requests: int = 0
    retries: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0

    def as_dict(self, recipe: Recipe) -> dict:
        t = recipe.teacher
        cost = (self.tokens_in * t.price_in_per_mtok + self.tokens_out * t.price_out_per_mtok) / 1e6
        new = self.accepted + sum(self.rejected.values())
        return {"total": self.total, "already_done": self.cached, "accepted": self.accepted,
                "rejected": dict(self.rejected), "requests": self.requests, "retries": self.retries,
                "tokens_in": self.tokens_in, "tokens_out": self.tokens_out, "cost": round(cost, 6),
                "seconds": round(self.seconds, 2), "records_per_s": round(new / self.seconds, 3) if self.seconds else 0}


class Teacher:
    """One OpenAI-compatible endpoint with our own retry policy (the client's is switched off)."""

    def __init__(self, recipe: Recipe, base_url: str, model: str, api_key: str, summary: Summary):
        import openai

        self.openai = openai
        t = recipe.teacher
        self.client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, timeout=t.timeout_s, max_retries=0)
        self.model, self.t, self.summary = model, t, summary
        self.rng = random.Random()

    def _delay(self, attempt: int, exc: Exception) -> float:
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                return min(float(retry_after), 120.0)
            except ValueError:
                pass
        return self.rng.uniform(0, min(30.0, 0.5 * 2 ** attempt))  # full jitter

    def _transient(self, exc: Exception) -> bool:
        o = self.openai
        if isinstance(exc, (o.APITimeoutError, o.APIConnectionError, o.RateLimitError)):
            return True
        return isinstance(exc, o.APIStatusError) and exc.status_code >= 500

    async def ask(self, messages: list[dict], temperature: float) -> str:
        """The answer's text; raises the last exception once retries are spent."""
        body = {"model": self.model, "messages": messages, "max_tokens": self.t.max_tokens,
                "temperature": temperature}
        if self.t.enable_thinking is not None:
            body["enable_thinking"] = self.t.enable_thinking
        for attempt in range(self.t.max_retries + 1):
            self.summary.requests += 1
            try:
                # The client's raw post (its documented way to custom requests: same auth, errors, time-outs):
                # the typed create() spent ~2 ms of CPU per call transforming params and building pydantic
                # models, which capped a single core at ~200 records/s.
                r = json.loads(await self.client.post("/chat/completions", cast_to=str, body=body))
            except Exception as exc:
                if isinstance(exc, self.openai.AuthenticationError):
                    raise StageError(f"the teacher endpoint refused the key ({exc.status_code}): check the "
                                     f"${self.t.api_key_env} variable") from None
                if not self._transient(exc) or attempt == self.t.max_retries:
                    raise
                self.summary.retries += 1
                await asyncio.sleep(self._delay(attempt, exc))
                continue
            usage = r.get("usage") or {}
            self.summary.tokens_in += usage.get("prompt_tokens") or 0
            self.summary.tokens_out += usage.get("completion_tokens") or 0
            choices = r.get("choices") or [{}]
            return (choices[0].get("message") or {}).get("content") or ""
        raise AssertionError("unreachable")


def _load_done(path: Path) -> list[dict]:
    """Rows already written; a torn last line (a crash mid-write) is cut off."""
    if not path.is_file():
        return []
    rows, good_bytes = [], 0
    with path.open("rb") as fh:
        for raw in fh:
            try:
                rows.append(json.loads(raw))
                good_bytes += len(raw)
            except json.JSONDecodeError:
                break
    if good_bytes != path.stat().st_size:
        with path.open("r+b") as fh:
            fh.truncate(good_bytes)
    return rows


async def _label_all(recipe: Recipe, todo: list[dict], teacher: Teacher, prompt: str, votes: int,
                     keys: dict[str, str], out_dir: Path, summary: Summary, bar: Bar) -> None:
    gate = asyncio.Semaphore(recipe.teacher.concurrency)
    temperature = recipe.teacher.temperature if votes == 1 else max(recipe.teacher.temperature, 0.7)
    with (out_dir / "labelled.jsonl").open("a", encoding="utf-8") as good, \
            (out_dir / "rejects.jsonl").open("a", encoding="utf-8") as bad:

        def reject(row: dict, reason: str, detail: str, raw: str = "") -> None:
            summary.rejected[reason] += 1
            append_jsonl(bad, {"id": row["id"], "text": row["text"], "reason": reason, "detail": detail,
                               "raw": raw[:2000], "key": keys[row["id"]]})

        async def one(row: dict) -> None:
            messages = [{"role": "system", "content": prompt}, {"role": "user", "content": row["text"]}]
            async with gate:
                try:
                    answers = [await teacher.ask(messages, temperature) for _ in range(votes)]
                except StageError:
                    raise
                except Exception as exc:
                    reject(row, GAVE_UP, f"{type(exc).__name__}: {str(exc)[:200]}")
                    bar.update(advance=1, note=f"{sum(summary.rejected.values())} rejected")
                    return
            checked = [check_answer(recipe, row["text"], a) for a in answers]
            failed = next((c for c in checked if c[0] is None), None)
            if failed:
                reject(row, failed[1], failed[2], answers[checked.index(failed)])
            else:
                label, split = majority(recipe, [c[0] for c in checked])
                if label is None:
                    reject(row, "no majority", f"the {votes} answers disagree on {split}", json.dumps(answers))
                else:
                    summary.accepted += 1
                    append_jsonl(good, {"id": row["id"], "text": row["text"], "label": label,
                                        "key": keys[row["id"]], "teacher": teacher.model})
            bar.update(advance=1, note=f"{sum(summary.rejected.values())} rejected")

        try:
            await asyncio.gather(*(one(r) for r in todo))
        finally:
            await teacher.client.close()


def run_label(recipe: Recipe, inputs: str | Path, out_dir: str | Path, *, base_url: str | None = None,
              model: str | None = None, votes: int = 1) -> dict:
    """Label every input not yet labelled in out_dir; returns the summary (also written to label_summary.json)."""
    if votes < 1:
        raise StageError("--votes must be at least 1")
    t = recipe.teacher
    api_key = os.environ.get(t.api_key_env)
    if not api_key:
        raise StageError(f"set ${t.api_key_env} to the teacher's API key (any value for a local server)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_inputs(inputs)
    prompt = recipe.prompt("teacher")
    model = model or t.model
    keys = {r["id"]: cache_key(model, prompt, r["text"], votes) for r in rows}
    labelled = _load_done(out / "labelled.jsonl")
    rejects = _load_done(out / "rejects.jsonl")
    # A record that gave up was never answered (nor paid): it is asked again; every other result is final.
    retry = [r for r in rejects if r.get("reason") == GAVE_UP]
    if retry:
        write_jsonl(out / "rejects.jsonl", [r for r in rejects if r.get("reason") != GAVE_UP])
    done = {r["key"] for r in labelled} | {r["key"] for r in rejects if r.get("reason") != GAVE_UP}
    todo = [r for r in rows if keys[r["id"]] not in done]
    summary = Summary(total=len(rows), cached=len(rows) - len(todo))
    teacher = Teacher(recipe, base_url or t.base_url, model, api_key, summary)  # imports openai: ~1 s
    start = time.perf_counter()
    with Bar("label", total=len(rows), note="0 rejected") as bar:
        bar.update(summary.cached)
        asyncio.run(_label_all(recipe, todo, teacher, prompt, votes, keys, out, summary, bar))
    summary.seconds = time.perf_counter() - start
    result = summary.as_dict(recipe)
    write_json(out / "label_summary.json", result)
    return result


def check_gold(recipe: Recipe, labelled: str | Path, gold: str | Path, out: str | Path) -> dict:
    """Score the teacher's labels against gold labels ({id, label} JSONL) with the metrics of `xtk eval`.
    Records the teacher rejected count as unparseable answers."""
    gold_by_id = {r["id"]: r["label"] for r in read_jsonl(gold)}
    got = {r["id"]: r["label"] for r in _load_done(Path(labelled))}
    rejected = {r["id"] for r in _load_done(Path(labelled).with_name("rejects.jsonl"))}
    rows = [{"parsed": got.get(i), "gold": g} for i, g in gold_by_id.items() if i in got or i in rejected]
    if not rows:
        raise DataError(gold, None, "no id in the gold file matches a labelled or rejected record")
    metrics = compute_metrics(recipe, rows)
    write_json(out, metrics)
    return metrics
