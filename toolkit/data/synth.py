"""`xtk synth`: the teacher writes new raw inputs in the style of ten or more of your examples, for a pool to label.

Each request shows the teacher a draw of your examples and asks for `synth.per_request` new inputs, steered in
turn by the recipe's `synth` block (topics, lengths, formats, noise, and an even spread over one field's choices).
A smoke batch (`synth.smoke` inputs) comes first and is shown; only `--yes` pays for the rest. Every answer is
journalled (synth-answers.jsonl) as it arrives, keyed by what was asked: a re-run asks for nothing it has.
Near-duplicates, copies of an example and inputs that occur in a test file (or nearly) are removed, with the
reason, to removed.jsonl; pool.jsonl is the result, a `data.pool` the gate and labelling take as usual, and
diversity.json beside it says how varied it is (length spread, distinct n-grams, nearest-example similarity).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import statistics
from collections import Counter
from pathlib import Path

from toolkit.model.endpoint import Endpoint, GaveUp, request_key
from toolkit.model.thinking import request_body
from toolkit.io.errors import StageError
from toolkit.io.journal import load_journal
from toolkit.io.jsonl import append_jsonl, open_append, write_json, write_jsonl
from toolkit.io.errors import DataError
from toolkit.io.locks import folder_lock
from toolkit.io.progress import Bar
from toolkit.data.label import read_inputs
from toolkit.data.prepare import load_test
from toolkit.task.recipe import Recipe

MIN_EXAMPLES = 10
EXTRA_ROUNDS = 2  # rounds of requests after the planned ones, when removals leave fewer than asked for
SYSTEM = ("You write realistic raw inputs for a text-extraction task. Answer with a JSON array of strings only: each "
          "string one new input, in the language and style of the examples, never a copy of one.")


def shingles(text: str, n: int = 3) -> frozenset[str]:
    t = " ".join(text.split())
    return frozenset(t[i:i + n] for i in range(max(1, len(t) - n + 1)))


class NearIndex:
    """Texts by their character trigrams: the most similar one to a new text (Jaccard), found through the
    trigrams they share rather than against every text."""

    def __init__(self):
        self.sets: list[frozenset[str]] = []
        self.names: list[str] = []
        self.postings: dict[str, list[int]] = {}

    def add(self, text: str, name: str) -> None:
        s = shingles(text)
        for g in s:
            self.postings.setdefault(g, []).append(len(self.sets))
        self.sets.append(s)
        self.names.append(name)

    def nearest(self, text: str) -> tuple[float, str | None]:
        s = shingles(text)
        shared = Counter(i for g in s for i in self.postings.get(g, ()))
        best = max(shared, key=lambda i: shared[i] / (len(s) + len(self.sets[i]) - shared[i]), default=None)
        if best is None:
            return 0.0, None
        return shared[best] / (len(s) + len(self.sets[best]) - shared[best]), self.names[best]


def plan(recipe: Recipe, examples: list[str], i: int) -> list[dict]:
    """The messages of request i: a draw of the examples, and the i-th turn of each steering list."""
    s = recipe.synth
    rng = random.Random(f"{recipe.data.seed}-{i}")
    shown = rng.sample(examples, min(s.examples_shown, len(examples)))
    asks = [f"{what}: {values[i % len(values)]}" for what, values in (
        ("Topic", s.topics), ("Length", s.lengths), ("Format", s.formats), ("Imperfections", s.noise)) if values]
    if s.balance:
        choices = recipe.choices(s.balance)
        asks.append(f"Each input's {s.balance} must be: {choices[i % len(choices)]}")
    user = (f"Examples:\n{json.dumps(shown, ensure_ascii=False, indent=0)}\n\n" + "".join(f"{a}\n" for a in asks)
            + f"Write {s.per_request} new inputs as a JSON array of strings.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_inputs(content: str) -> list[str]:
    """New inputs from an answer: its JSON array of strings, else its non-empty lines without list markers."""
    start, end = content.find("["), content.rfind("]")
    if 0 <= start < end:
        try:
            items = json.loads(content[start:end + 1])
            if isinstance(items, list) and all(isinstance(x, str) for x in items):
                return [x.strip() for x in items if x.strip()]
        except ValueError:
            pass
    lines = (re.sub(r"^\s*(?:[-*•]|\d+[.)、])\s*", "", line).strip().strip('"') for line in content.splitlines())
    return [line for line in lines if line and not line.startswith(("```", "[", "]"))]


def diversity(texts: list[str], examples: list[str]) -> dict:
    """How varied the inputs are beside your examples: lengths, distinct character n-grams, nearest example."""

    def lengths(ts: list[str]) -> dict:
        n = sorted(len(t) for t in ts)
        at = lambda q: n[min(len(n) - 1, int(q * len(n)))]  # noqa: E731
        return {"min": n[0], "p10": at(0.1), "median": at(0.5), "p90": at(0.9), "max": n[-1],
                "stdev": round(statistics.pstdev(n), 2)}

    def distinct(ts: list[str], k: int) -> float:
        grams = [t[i:i + k] for t in ts for i in range(len(t) - k + 1)]
        return round(len(set(grams)) / len(grams), 4) if grams else 0.0

    index = NearIndex()
    for j, e in enumerate(examples):
        index.add(e, str(j))
    near = sorted(index.nearest(t)[0] for t in texts)
    return {"n": len(texts), "length_chars": lengths(texts), "examples_length_chars": lengths(examples),
            "distinct_2grams": distinct(texts, 2), "distinct_3grams": distinct(texts, 3),
            "examples_distinct_2grams": distinct(examples, 2),
            "nearest_example_similarity": {"mean": round(sum(near) / len(near), 4), "median": near[len(near) // 2],
                                           "max": near[-1]} if near else None}


def filtered(recipe: Recipe, answers: list[list[str]], examples: list[str],
             tests: list[tuple[str, str]]) -> tuple[list, list]:
    """(kept [{id, text}], removed [{text, reason, detail}]) from the answers in request order; `tests` are
    (where, text) of every test record."""
    limit, cap = recipe.synth.max_similarity, recipe.data.max_input_chars
    test_index, example_index, kept_index = NearIndex(), NearIndex(), NearIndex()
    for where, t in tests:
        test_index.add(t, where)
    for j, e in enumerate(examples):
        example_index.add(e, f"example {j + 1}")
    kept, removed = [], []
    for text in (t for texts in answers for t in texts):
        if len(text) > cap:
            removed.append({"text": text, "reason": "too long", "detail": f"over data.max_input_chars={cap}"})
            continue
        for index, reason in ((test_index, "in a test file"), (example_index, "copies an example"),
                              (kept_index, "near-duplicate")):
            similarity, name = index.nearest(text)
            if similarity >= limit:
                removed.append({"text": text, "reason": reason, "detail": f"{name}, similarity {similarity:.2f}"})
                break
        else:
            rid = f"synth-{len(kept) + 1:05d}"
            kept_index.add(text, rid)
            kept.append({"id": rid, "text": text})
    return kept, removed


async def _ask(recipe: Recipe, endpoint: Endpoint, todo: list[tuple[int, str, list[dict]]], journal: Path,
               done: dict[str, list[str]], bar: Bar) -> None:
    gate = asyncio.Semaphore(recipe.teacher.concurrency)
    with open_append(journal) as fh:
        async def one(i: int, key: str, messages: list[dict]) -> None:
            async with gate:
                try:
                    answer = await endpoint.ask(messages, recipe.teacher.max_tokens, recipe.synth.temperature)
                except GaveUp:  # never answered, nothing paid: the next run asks it again
                    bar.update(advance=1)
                    return
            texts = parse_inputs(answer.content or "")
            append_jsonl(fh, {"key": key, "request": i, "inputs": texts, "raw": endpoint.redact(
                (answer.content or answer.raw)[:4000]), "tokens": [answer.prompt_tokens, answer.completion_tokens]})
            done[key] = texts
            bar.update(advance=1)

        try:
            await asyncio.gather(*(one(*t) for t in todo))
        finally:
            await endpoint.aclose()


def run_synth(recipe: Recipe, examples_path: str | Path, n: int, out_dir: str | Path, *, yes: bool = False,
              base_url: str | None = None, model: str | None = None) -> dict:
    """Write pool.jsonl (n inputs, or the smoke batch alone without `yes`), removed.jsonl, diversity.json and
    synth_summary.json into out_dir; returns the summary."""
    t, s = recipe.teacher, recipe.synth
    examples = [r["text"] for r in read_inputs(examples_path, recipe.data.max_input_chars)]
    if len(examples) < MIN_EXAMPLES:
        raise DataError(examples_path, None, f"{len(examples)} examples: give at least {MIN_EXAMPLES} inputs of the "
                        "kind the new ones should be like")
    api_key = os.environ.get(t.api_key_env)
    if not api_key:
        raise StageError(f"set ${t.api_key_env} to the teacher's API key (any value for a local server)")
    tests = [(f"{Path(f).name} id {r['id']}", r["text"])
             for f in recipe.data.test for r in load_test(recipe, recipe.path(f))]
    out, model = Path(out_dir), model or t.model
    journal = out / "synth-answers.jsonl"
    target = n if yes else min(n, s.smoke)
    with folder_lock(out, "synth"):
        done = {r["key"]: r["inputs"] for r in load_journal(journal)}
        keys: list[str] = []  # every request's key, in request order
        kept: list[dict] = []
        for round_ in range(1 + EXTRA_ROUNDS):  # more rounds only where removals left fewer than asked for
            more = math.ceil((target - len(kept)) / s.per_request)
            new = [(i, plan(recipe, examples, i)) for i in range(len(keys), len(keys) + more)]
            new = [(i, request_key(model, m, s.temperature, t.max_tokens), m) for i, m in new]
            keys += [k for _, k, _ in new]
            todo = [x for x in new if x[1] not in done]
            if todo:
                endpoint = Endpoint(base_url or t.base_url, model, api_key, t.api_key_env, t.timeout_s,
                                    t.max_retries, request_body(t))  # imports openai: ~1 s
                with Bar(f"synth round {round_ + 1}", total=len(todo)) as bar:
                    asyncio.run(_ask(recipe, endpoint, todo, journal, done, bar))
            kept, removed = filtered(recipe, [done.get(k, []) for k in keys], examples, tests)
            if len(kept) >= target:
                break
        kept = kept[:target]
        if not kept:
            raise StageError(f"the teacher wrote no usable input in {len(keys)} requests: see {journal}")
        tokens = [r["tokens"] for r in load_journal(journal)]
        summary = {"asked_for": target, "written": len(kept), "removed": dict(Counter(r["reason"] for r in removed)),
                   "requests": len(keys), "unanswered": sum(k not in done for k in keys),
                   "cost": round(sum(a * t.price_in_per_mtok + b * t.price_out_per_mtok for a, b in tokens) / 1e6, 6),
                   "smoke": not yes}
        write_jsonl(out / ("pool.jsonl" if yes else "smoke.jsonl"), kept)
        write_jsonl(out / "removed.jsonl", removed)
        write_json(out / "diversity.json", diversity([r["text"] for r in kept], examples))
        write_json(out / "synth_summary.json", summary)
    return summary
