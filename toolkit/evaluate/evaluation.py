"""eval: a model x a test file x a prompt -> predictions.jsonl (joined to inputs by id) and metrics.json."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.io.errors import StageError
from toolkit.task.fields import disallowed, ungrounded
from toolkit.task.nested import leaves, shape_problem
from toolkit.io.jsonl import write_json, write_jsonl
from toolkit.data.prepare import load_test
from toolkit.io.progress import Bar
from toolkit.task.recipe import Recipe
from toolkit.task.scoring import compute_metrics, extract_json, score_record


@dataclass
class Extraction:
    """A model's answer to one text: what it said, the JSON object in it, and what is wrong with it."""

    raw: str
    parsed: dict | None
    problems: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    refused: str | None = None  # why the engine would not run this text at all (e.g. longer than its context)


def answer_problems(recipe: Recipe, text: str, parsed: dict | None) -> list[str]:
    """Everything wrong with an answer to `text`: unparseable, a missing or unexpected key, a value of the wrong
    type, outside its closed set, or not found in the text for a grounded field. [] for a valid answer."""
    if parsed is None:
        return ["unparseable: no complete JSON object in the answer"]
    problems = [f"unexpected field {k!r}" for k in parsed if k not in recipe.field_names]
    for f in recipe.fields:
        if f.name not in parsed:
            problems.append(f"{f.name}: missing")
        elif found := shape_problem(f, parsed[f.name]):
            problems.append(f"{found[0]}: {found[1]}")
        else:
            for leaf in leaves(f, parsed[f.name]):  # a flat field is its own one leaf
                outside = disallowed(leaf.spec, leaf.value, recipe.allowed_values(leaf.key))
                problems += [f"{leaf.path}: {v!r} is not in the closed set" for v in outside]
                problems += [f"{leaf.path}: {why}" for why in ungrounded(leaf.spec, leaf.value, text)]
    return problems


def chat(system: str, text: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def refused(exc: Exception) -> bool:
    """An error the engine raises for the request itself before running anything (vLLM: a prompt longer than
    the model's context, an empty one; ms-swift's transformers engine: a prompt over the same context): that
    text is answered as refused, the others in its batch still run."""
    vllm, swift = sys.modules.get("vllm.exceptions"), sys.modules.get("swift.template.base")
    return (vllm is not None and isinstance(exc, vllm.VLLMClientError)) or \
        (swift is not None and isinstance(exc, swift.MaxLengthError))


def extract(recipe: Recipe, backend, system: str, texts: list[str], max_tokens: int) -> list[Extraction]:
    """The one way a text becomes an answer, for eval, predict and serve alike: the recipe's prompt as the
    system turn, the text as the user turn (the backend applies the model's chat template and, where set,
    guided decoding), then the JSON object parsed out of the answer and checked against the recipe."""
    try:
        generations = backend.generate([chat(system, t) for t in texts], max_tokens)
    except Exception as exc:
        if not refused(exc):
            raise
        if len(texts) == 1:
            return [refusal(exc)]
        return [x for t in texts for x in extract(recipe, backend, system, [t], max_tokens)]
    if len(generations) != len(texts):
        raise StageError(f"{backend.name} returned {len(generations)} answers for {len(texts)} texts")
    return [extraction(recipe, text, g) for text, g in zip(texts, generations)]


async def extract_async(recipe: Recipe, backend, system: str, texts: list[str], max_tokens: int,
                        started: asyncio.Event | None = None) -> list[Extraction]:
    """extract() on an engine that takes requests as they come (its `agenerate`, xtk serve's vLLM): each text its
    own request, so a text the engine refuses leaves the others running; `started` as agenerate sets it."""
    async def one(text: str) -> Extraction:
        try:
            [g] = await backend.agenerate([chat(system, text)], max_tokens, started)
        except Exception as exc:
            if not refused(exc):
                raise
            return refusal(exc)
        return extraction(recipe, text, g)

    return list(await asyncio.gather(*(one(t) for t in texts)))


def extraction(recipe: Recipe, text: str, g) -> Extraction:
    """The engine's Generation `g` for `text`, parsed and checked."""
    parsed = extract_json(g.text)
    return Extraction(g.text, parsed, answer_problems(recipe, text, parsed), g.completion_tokens)


def refusal(exc: Exception) -> Extraction:
    """The answer to a text the engine refused (refused(exc))."""
    return Extraction("", None, [f"refused: {exc}"], refused=str(exc))


def prediction(recipe: Recipe, rid, text: str, gold: dict, raw: str, parsed: dict | None) -> dict:
    """One row of predictions.jsonl: the input, gold and answer joined by id, scored field by field, with what
    is wrong with the answer."""
    correct = score_record(recipe, parsed, gold)
    return {"id": rid, "input": text, "gold": gold, "raw": raw, "parsed": parsed, "correct": correct,
            "exact": all(correct.values()), "problems": answer_problems(recipe, text, parsed)}


def run_eval(recipe: Recipe, backend, test_path: str | Path, prompt: str, out_dir: str | Path,
             model_label: str, limit: int | None = None, load_seconds: float = 0.0, extra: dict | None = None,
             rows: list[dict] | None = None) -> dict:
    """Generate for every test row in batches, score, and write predictions.jsonl and metrics.json (with
    `extra`: what was evaluated, for the report). `rows`: only these of the file's rows (a sample of them, already
    read with load_test), else the file's first `limit`."""
    out = Path(out_dir)
    rows = load_test(recipe, test_path, limit) if rows is None else rows
    system = recipe.prompt(prompt)
    size = getattr(backend, "batch", None) or recipe.eval.batch_size
    answers: list[Extraction] = []
    start = time.perf_counter()
    with Bar(f"eval {out.name}", total=len(rows)) as bar:
        for i in range(0, len(rows), size):
            answers += extract(recipe, backend, system, [r["text"] for r in rows[i:i + size]],
                               recipe.eval.max_new_tokens)
            bar.update(len(answers))
    seconds = time.perf_counter() - start
    tokens = sum(a.completion_tokens for a in answers)
    predictions = [prediction(recipe, row["id"], row["text"], row["label"], a.raw, a.parsed)
                   for row, a in zip(rows, answers)]
    write_jsonl(out / "predictions.jsonl", predictions)
    metrics = compute_metrics(recipe, predictions)
    metrics.update(model=model_label, backend=backend.name, prompt=prompt, test_file=str(test_path),
                   seconds=round(seconds, 2), load_seconds=round(load_seconds, 2),
                   records_per_s=round(len(rows) / seconds, 3) if seconds else None,
                   tokens_per_s=round(tokens / seconds, 2) if seconds and tokens else None,
                   completion_tokens=tokens, **(extra or {}))
    write_json(out / "metrics.json", metrics)
    return metrics
