"""eval: a model x a test file x a prompt -> predictions.jsonl (joined to inputs by id) and metrics.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

from toolkit.jsonl import DataError, iter_jsonl, write_json, write_jsonl
from toolkit.prepare import check_label
from toolkit.progress import Bar
from toolkit.recipe import Recipe
from toolkit.scoring import compute_metrics, extract_json, score_record


def load_test(recipe: Recipe, path: str | Path, limit: int | None = None) -> list[dict]:
    """Test rows {id, text, label}; a row without gold fields, or whose id an earlier row has (it would be
    counted twice), is an error naming its line."""
    path = Path(path)
    rows, first = [], {}
    for line, row in iter_jsonl(path):
        if not isinstance(row.get("text"), str) or "id" not in row:
            raise DataError(path, line, "expected a test row with id and text")
        rid = json.dumps(row["id"])  # any JSON value: 1 and "1" are two ids
        if rid in first:
            raise DataError(path, line, f"duplicate id {row['id']!r} (first on line {first[rid]}): each test "
                            "record once, or it counts twice")
        first[rid] = line
        if "label" not in row:
            raise DataError(path, line, f"no gold label: a test row needs label with fields {recipe.field_names}")
        check_label(recipe, row["label"], path, line)
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise DataError(path, None, "no test rows")
    return rows


def prediction(recipe: Recipe, rid, text: str, gold: dict, raw: str, parsed: dict | None) -> dict:
    """One row of predictions.jsonl: the input, gold and answer joined by id, scored field by field."""
    correct = score_record(recipe, parsed, gold)
    return {"id": rid, "input": text, "gold": gold, "raw": raw, "parsed": parsed, "correct": correct,
            "exact": all(correct.values())}


def run_resolved(recipe: Recipe, resolve, source: Path, out: Path, extra: dict) -> dict:
    """Another evaluation's answers passed through the recipe's resolver (text, parsed answer -> answer) and
    scored again: no new inference. Its records/s count the source's generation time too."""
    from toolkit.jsonl import read_jsonl

    src = json.loads((source / "metrics.json").read_text(encoding="utf-8"))
    start = time.perf_counter()
    predictions = [prediction(recipe, r["id"], r["input"], r["gold"], r["raw"], resolve(r["input"], r["parsed"]))
                   for r in read_jsonl(source / "predictions.jsonl")]
    seconds = (src.get("seconds") or 0) + time.perf_counter() - start
    write_jsonl(out / "predictions.jsonl", predictions)
    metrics = compute_metrics(recipe, predictions)
    metrics.update(model=src["model"], backend=f"{src['backend']} + resolver", prompt=src["prompt"],
                   test_file=src["test_file"], seconds=round(seconds, 2), load_seconds=src.get("load_seconds"),
                   records_per_s=round(len(predictions) / seconds, 3) if seconds else None, source=source.name,
                   **extra)
    write_json(out / "metrics.json", metrics)
    return metrics


def run_eval(recipe: Recipe, backend, test_path: str | Path, prompt: str, out_dir: str | Path,
             model_label: str, limit: int | None = None, load_seconds: float = 0.0, extra: dict | None = None) -> dict:
    """Generate for every test row in batches, score, and write predictions.jsonl and metrics.json (with
    `extra`: what was evaluated, for the report)."""
    out = Path(out_dir)
    rows = load_test(recipe, test_path, limit)
    system = recipe.prompt(prompt)
    size = recipe.eval.batch_size
    texts, tokens = [], 0
    start = time.perf_counter()
    with Bar(f"eval {out.name}", total=len(rows)) as bar:
        for i in range(0, len(rows), size):
            batch = [[{"role": "system", "content": system}, {"role": "user", "content": r["text"]}]
                     for r in rows[i:i + size]]
            for g in backend.generate(batch, recipe.eval.max_new_tokens):
                texts.append(g.text)
                tokens += g.completion_tokens
            bar.update(len(texts))
    seconds = time.perf_counter() - start
    if len(texts) != len(rows):
        raise DataError(test_path, None, f"the backend returned {len(texts)} answers for {len(rows)} rows")
    predictions = [prediction(recipe, row["id"], row["text"], row["label"], text, extract_json(text))
                   for row, text in zip(rows, texts)]
    write_jsonl(out / "predictions.jsonl", predictions)
    metrics = compute_metrics(recipe, predictions)
    metrics.update(model=model_label, backend=backend.name, prompt=prompt, test_file=str(test_path),
                   seconds=round(seconds, 2), load_seconds=round(load_seconds, 2),
                   records_per_s=round(len(rows) / seconds, 3) if seconds else None,
                   tokens_per_s=round(tokens / seconds, 2) if seconds and tokens else None,
                   completion_tokens=tokens, **(extra or {}))
    write_json(out / "metrics.json", metrics)
    return metrics
