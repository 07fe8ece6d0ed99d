"""prepare: labelled records -> ms-swift `messages` JSONL (train/val), validated, de-duplicated, leak-free.

Input rows are either labelled records `{id, text, label}` (what `xtk label` writes) or ms-swift rows
`{messages: [...]}` a user brings. Either way every row is checked before anything else happens: a bad one
stops with file:line and the reason, since ms-swift would silently drop it. A recipe's test files are read here
too (`load_test`), their labels held to the same checks.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from toolkit.task.fields import canonical, disallowed
from toolkit.task.nested import leaves, shape_problem
from toolkit.io.jsonl import BadRows, iter_jsonl, read_jsonl, write_json, write_jsonl
from toolkit.io.errors import DataError
from toolkit.task.recipe import Recipe


def normalise_input(text: str) -> str:
    """Inputs equal after this are duplicates (and leaks, across train and test)."""
    return re.sub(r"\s+", "", text)


def canonical_answer(recipe: Recipe, label: dict) -> str:
    """The assistant turn: the recipe's fields in recipe order, each as its type writes it (a date in ISO 8601),
    non-ASCII kept."""
    return json.dumps({f.name: canonical(f, label[f.name]) for f in recipe.fields}, ensure_ascii=False)


def text_problem(text, max_chars: int) -> str | None:
    """Why an input text cannot be answered, trained on or scored, or None: every reader of texts asks this (prepare,
    the test files, predict; labelling's inputs). A runaway text would reach a model as one prompt (minutes of
    generation, or a paid request); an empty one asks nothing."""
    if not isinstance(text, str) or not text.strip():
        return "the input text is empty"
    if len(text) > max_chars:
        return f"text is {len(text)} characters, over data.max_input_chars={max_chars}"
    return None


def check_label(recipe: Recipe, label, path: Path, line: int) -> dict:
    if not isinstance(label, dict):
        raise DataError(path, line, f"expected the label to be a JSON object, got {type(label).__name__}")
    missing = [k for k in recipe.field_names if k not in label]
    extra = [k for k in label if k not in recipe.field_names]
    if missing or extra:
        raise DataError(path, line, f"label fields must be exactly {recipe.field_names}; "
                        f"missing {missing}, unexpected {extra}")
    for f in recipe.fields:
        if found := shape_problem(f, label[f.name]):
            raise DataError(path, line, f"field {found[0]!r} {found[1]}")
        for leaf in leaves(f, label[f.name]):  # a flat field is its own one leaf
            if outside := disallowed(leaf.spec, leaf.value, recipe.allowed_values(leaf.key)):
                raise DataError(path, line, f"{leaf.path} {outside[0]!r} is not one of the allowed values "
                                f"({recipe.choices_source(leaf.key)})")
    return label


def read_record(recipe: Recipe, row: dict, path: Path, line: int) -> dict:
    """One input row -> {id, text, label}, or DataError naming the file, line and problem."""
    if "messages" in row:
        msgs = row["messages"]
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and "role" in m and isinstance(
                m.get("content"), str) for m in msgs):
            raise DataError(path, line, "expected messages to be a list of {role, content} objects")
        users = [m["content"] for m in msgs if m["role"] == "user"]
        answers = [m["content"] for m in msgs if m["role"] == "assistant"]
        if not users:
            raise DataError(path, line, "no user turn in messages")
        if not answers:
            raise DataError(path, line, "no assistant turn in messages")
        try:
            label = json.loads(answers[-1])
        except json.JSONDecodeError:
            raise DataError(path, line, f"the assistant turn is not JSON: {answers[-1][:80]!r}") from None
        text, rid = users[-1], row.get("id", f"{path.stem}-{line}")
    else:
        for key in ("id", "text", "label"):
            if key not in row:
                raise DataError(path, line, f"expected keys id, text, label (or messages); {key!r} is missing")
        text, rid, label = row["text"], row["id"], row["label"]
    if problem := text_problem(text, recipe.data.max_input_chars):
        raise DataError(path, line, problem)
    check_label(recipe, label, path, line)
    return {"id": str(rid), "text": text, "label": label}


def read_records(recipe: Recipe, path: str | Path) -> list[dict]:
    """Every row checked; the bad ones raised together, each with its line (io/jsonl.BadRows)."""
    path = Path(path)
    records, bad = [], BadRows(path)
    for line, row in iter_jsonl(path, bad):
        try:
            records.append(read_record(recipe, row, path, line))
        except DataError as exc:
            bad.add(exc)
    bad.check()
    if not records:
        raise DataError(path, None, "no records: the file is empty or has only blank lines")
    return records


def load_test(recipe: Recipe, path: str | Path, limit: int | None = None) -> list[dict]:
    """Test rows {id, text, label}; a row without gold fields, or whose id an earlier row has (it would be
    counted twice), is an error naming its line (all such rows together, io/jsonl.BadRows)."""
    path = Path(path)
    rows, first, bad = [], {}, BadRows(path)

    def check(line: int, row: dict) -> None:
        if not isinstance(row.get("text"), str) or "id" not in row:
            raise DataError(path, line, "expected a test row with id and text")
        if problem := text_problem(row["text"], recipe.data.max_input_chars):
            raise DataError(path, line, problem)
        rid = json.dumps(row["id"])  # any JSON value: 1 and "1" are two ids
        if rid in first:
            raise DataError(path, line, f"duplicate id {row['id']!r} (first on line {first[rid]}): each test "
                            "record once, or it counts twice")
        first[rid] = line
        if "label" not in row:
            raise DataError(path, line, f"no gold label: a test row needs label with fields {recipe.field_names}")
        check_label(recipe, row["label"], path, line)

    for line, row in iter_jsonl(path, bad):
        try:
            check(line, row)
        except DataError as exc:
            bad.add(exc)
            continue
        rows.append(row)
        if limit and len(rows) >= limit:
            break
    bad.check()
    if not rows:
        raise DataError(path, None, "no test rows")
    return rows


def to_messages(recipe: Recipe, record: dict, system: str) -> dict:
    return {"id": record["id"], "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": record["text"]},
        {"role": "assistant", "content": canonical_answer(recipe, record["label"])},
    ]}


def check_messages_file(recipe: Recipe, path: str | Path) -> int:
    """Validate a prepared file just before ms-swift reads it; returns its row count."""
    path = Path(path)
    n = 0
    for line, row in iter_jsonl(path):
        roles = [m.get("role") for m in row.get("messages", []) if isinstance(m, dict)]
        if roles != ["system", "user", "assistant"]:
            raise DataError(path, line, f"expected messages with roles system, user, assistant; got {roles}")
        read_record(recipe, row, path, line)
        n += 1
    if n == 0:
        raise DataError(path, None, "no rows")
    return n


def gold_records(recipe: Recipe) -> list[dict]:
    """The generator's gold labels joined to the raw pool: the data when no teacher labels were made."""
    if not recipe.data.pool_gold:
        raise DataError(recipe.path(recipe.data.pool), None, "no teacher labels and no pool_gold file in the recipe")
    gold = {r["id"]: r["label"] for r in read_jsonl(recipe.path(recipe.data.pool_gold))}
    pool_path = recipe.path(recipe.data.pool)
    out = []
    for line, row in iter_jsonl(pool_path):
        if row.get("id") not in gold:
            raise DataError(pool_path, line, f"id {row.get('id')!r} has no gold label in {recipe.data.pool_gold}")
        out.append({"id": row["id"], "text": row["text"], "label": gold[row["id"]]})
    return out


def token_lengths(recipe: Recipe, model_ref: str, rows: list[dict]) -> list[int] | None:
    """Tokens per row under the student's chat template, or None where its tokenizer can't be had here."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_ref)
    except Exception:  # a hub id on a machine without a hub: the stats just lack lengths
        return None
    return [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"]) for r in rows]


def _summary(values: list[int]) -> dict:
    s = sorted(values)
    return {"min": s[0], "mean": round(sum(s) / len(s), 1), "p50": s[len(s) // 2],
            "p95": s[min(len(s) - 1, int(len(s) * 0.95))], "max": s[-1]}


def spread_key(record: dict, fields: list[str]) -> tuple[str, ...]:
    return tuple(str(record["label"].get(f)) for f in fields)


def spread(records: list[dict], fields: list[str]) -> list[int]:
    """Indices of records in the order that keeps each combination of the fields' label values once before any
    twice; within a round, the records' own order. No fields: the records' own order."""
    seen: Counter = Counter()
    ranked = []
    for i, r in enumerate(records):
        key = spread_key(r, fields)
        ranked.append((seen[key], i))
        seen[key] += 1
    return [i for _, i in sorted(ranked)]


def run_prepare(recipe: Recipe, records: list[dict], out_dir: str | Path, model_ref: str | None = None) -> dict:
    """Write train.jsonl, val.jsonl and stats.json into out_dir; returns the stats."""
    out = Path(out_dir)
    dropped: Counter = Counter()
    held_out = set()
    for test_file in recipe.data.test:
        held_out |= {normalise_input(r["text"]) for r in read_jsonl(recipe.path(test_file)) if "text" in r}
    seen: set[str] = set()
    kept = []
    for r in records:
        key = normalise_input(r["text"])
        if key in held_out:
            dropped["in a test file (leak)"] += 1
        elif key in seen:
            dropped["duplicate input"] += 1
        else:
            seen.add(key)
            kept.append(r)
    rng = random.Random(recipe.data.seed)
    rng.shuffle(kept)
    system = recipe.prompt("student")
    rows = [to_messages(recipe, r, system) for r in kept]
    lengths = token_lengths(recipe, model_ref, rows) if model_ref else None
    if lengths is not None:
        fits = [i for i, n in enumerate(lengths) if n <= recipe.train.max_length]
        dropped[f"longer than max_length {recipe.train.max_length}"] += len(rows) - len(fits)
        kept, rows, lengths = [kept[i] for i in fits], [rows[i] for i in fits], [lengths[i] for i in fits]
    if len(rows) > recipe.data.train_records:
        dropped["over data.train_records"] += len(rows) - recipe.data.train_records
        take = spread(kept, recipe.data.spread_over)[:recipe.data.train_records]
        if recipe.data.spread_over:  # the validation rows and the training order: a random draw of what is kept
            rng.shuffle(take)
        rows, lengths, kept = [rows[i] for i in take], lengths and [lengths[i] for i in take], [kept[i] for i in take]
    n_val = round(len(rows) * recipe.data.val_fraction)
    if n_val == 0 and recipe.data.val_fraction > 0 and len(rows) > 1:
        n_val = 1
    if len(rows) - n_val < 1:
        raise DataError(out, None, f"no training rows left after filtering ({dict(dropped)})")
    val, train = rows[:n_val], rows[n_val:]
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "val.jsonl", val)
    stats = {
        "input_records": len(records), "train": len(train), "val": len(val),
        "dropped": dict(dropped), "seed": recipe.data.seed,
        # how many combinations of the spread_over fields' values the kept rows name (training and validation)
        "spread_over": {"fields": recipe.data.spread_over,
                        "values": len({spread_key(r, recipe.data.spread_over) for r in kept})},
        "tokens": _summary(lengths) if lengths else None, "tokenizer": model_ref if lengths else None,
    }
    write_json(out / "stats.json", stats)
    return stats
