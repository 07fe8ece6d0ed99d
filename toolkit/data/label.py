"""label: a teacher behind any OpenAI-compatible endpoint turns raw texts into labels, never paying twice.

Every answer is appended (and fsynced) to labelled.jsonl or, when unusable, to rejects.jsonl with its reason,
as it arrives (a label whose fields bound to a recipe's table name no row of it is repaired where the table makes
that unique, and the row records `repaired`; else it is rejected as "not in the table"), keyed by a hash of (model, prompt, input, votes): a re-run, or a run after a crash, sends no
request for a record that was answered. Only a record that never got an answer ("gave up" after the
endpoint's retries) is asked again by the next run; rejected answers are re-asked only with
`--retry-rejects`. Before the first request the cost is estimated from the prompts as they will be sent, and a
large one is confirmed (toolkit/data/cost.py); each answer keeps what it cost, and `teacher.max_cost` bounds what
the folder pays over all its runs: a request is sent only while its worst case fits. A teacher that stops
answering, or records left without an answer, end the run with Unanswered (exit 3): the next run asks only what
was never answered. One `xtk label` per output folder. The API key is read from the environment variable the
recipe names, and is redacted from every text written or printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from toolkit.data.cost import Budget, Estimate, confirm, cost, count_prompts, folder_spent, keep_dropped, money
from toolkit.model.endpoint import Answer, Endpoint, EndpointError, GaveUp, Usage, request_key
from toolkit.model.thinking import request_body
from toolkit.io.errors import StageError, Unanswered
from toolkit.task.fields import disallowed, is_empty, normalise, ungrounded, vote_key, voted_value
from toolkit.task.nested import leaves, shape_problem
from toolkit.io.journal import load_journal
from toolkit.io.jsonl import BadRows, append_jsonl, iter_jsonl, iter_lines, open_append, read_jsonl, write_json, write_jsonl
from toolkit.io.errors import DataError
from toolkit.io.locks import folder_lock
from toolkit.io.progress import Bar
from toolkit.task.recipe import Recipe
from toolkit.task.scoring import compute_metrics, extract_json
from toolkit.task.tables import NOT_IN_TABLE

GAVE_UP = "gave up after retries"
# The cost estimate is made from the token counts of this many first answers (real ones, of this pool).
ESTIMATE_AFTER = 20
# Nothing answered among this many first records, all failing alike: the endpoint, not the records, is wrong.
FAIL_FAST_AFTER = 8


class BudgetStop(StageError):
    """teacher.max_cost was reached for the folder: labelling stopped before passing it, what was answered is
    kept."""


def read_inputs(path: str | Path, max_chars: int) -> list[dict]:
    """Raw texts: .txt one per line (id = line number), or JSONL with a text field (and an optional id).
    A text over max_chars is refused: it would go to the teacher, and be paid for, as one request."""
    path = Path(path)
    rows, first_line, bad = [], {}, BadRows(path)

    def check(n: int, item: str | dict) -> dict:
        if isinstance(item, str):  # a .txt line
            row = {"id": f"line-{n}", "text": item.strip()}
        elif not isinstance(item.get("text"), str) or not item["text"].strip():
            raise DataError(path, n, "expected a JSON object with a non-empty text field")
        else:
            row = {"id": str(item.get("id", f"line-{n}")), "text": item["text"]}
        if row["id"] in first_line:
            raise DataError(path, n, f"duplicate id {row['id']!r} (first on line {first_line[row['id']]})")
        if len(row["text"]) > max_chars:
            raise DataError(path, n, f"text is {len(row['text'])} characters, over data.max_input_chars={max_chars}")
        first_line[row["id"]] = n
        return row

    for n, item in iter_lines(path, "a text file") if path.suffix == ".txt" else iter_jsonl(path, bad):
        if isinstance(item, str) and not item.strip():
            continue
        try:
            rows.append(check(n, item))
        except DataError as exc:
            bad.add(exc)
    bad.check()  # every bad row at once, each with its line
    if not rows:
        raise DataError(path, None, "no texts: the file is empty or has only blank lines")
    return rows


def cache_key(model: str, prompt: str, text: str, votes: int) -> str:
    return request_key(model, prompt, text, votes)


def check_answer(recipe: Recipe, text: str, answer: Answer) -> tuple[dict | None, str | None, str]:
    """(label, None, "") when the answer is usable, else (None, reason, detail)."""
    if answer.content is None:
        return None, "malformed", answer.problem or "not a chat completion"
    content = answer.content
    if not content.strip():
        return None, "empty", "the answer was empty"
    parsed = extract_json(content)
    if parsed is None:
        return None, "unparseable", "no complete JSON object in the answer"
    names = recipe.field_names
    found = [shape_problem(f, parsed[f.name]) for f in recipe.fields if f.name in parsed]
    problems = [f"{where} {problem}" for where, problem in filter(None, found)]
    if set(parsed) != set(names) or problems:
        return None, "schema", (f"expected fields {names}{': ' + '; '.join(problems) if problems else ''}, got "
                                f"{json.dumps(parsed, ensure_ascii=False)[:200]}")
    label = {k: parsed[k] for k in names}
    if all(is_empty(f, label[f.name]) for f in recipe.fields):
        return None, "empty", "every field is empty"
    for f in recipe.fields:
        for leaf in leaves(f, label[f.name]):  # a flat field is its own one leaf
            # a field bound to a table is checked against the table's rows after the votes, and repaired there
            if recipe.table_of(f.name) is None and (
                    outside := disallowed(leaf.spec, leaf.value, recipe.allowed_values(leaf.key))):
                return None, "not allowed", f"{leaf.path}={outside[0]!r} is not one of the recipe's allowed values"
            if missing := ungrounded(leaf.spec, leaf.value, text):
                return None, "ungrounded", f"{leaf.path}={missing[0]}"
    return label, None, ""


def repair_label(recipe: Recipe, text: str, label: dict) -> tuple[dict | None, dict[str, list], str]:
    """The label with the fields bound to each of the recipe's tables made one of its combinations (values
    normalised with their fields' steps first), the fields it changed (field -> [as answered, as repaired]), and
    why it could not be repaired (label None) where the table leaves more than one combination, or none."""
    repaired: dict[str, list] = {}
    for table in recipe.loaded_tables():
        bound = {c: normalise(label[c], recipe.field(c).normalise) if isinstance(label[c], str) else label[c]
                 for c in table.columns}
        fixed = table.repair(bound, text)
        if fixed.answer is None:
            return None, {}, fixed.reason
        repaired.update({c: [label[c], now] for c, (_, now) in fixed.changed.items()})
        label = {**label, **{c: fixed.answer[c] for c in table.columns}}
    return label, repaired, ""


def majority(recipe: Recipe, labels: list[dict]) -> tuple[dict | None, str]:
    """Field-wise majority of k labels; None (and the field) when a field has no strict majority."""
    out = {}
    for f in recipe.fields:
        keys = [vote_key(f, lb[f.name]) for lb in labels]
        key, count = Counter(keys).most_common(1)[0]
        if count * 2 <= len(labels):
            return None, f.name
        out[f.name] = voted_value(f, labels[keys.index(key)][f.name])
    return out, ""


@dataclass
class Summary:
    total: int = 0
    cached: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    paid: float = 0.0  # by this run: its answers at the prices (an answer without usage: at its worst case)
    spent_before: float = 0.0  # by the folder's earlier runs

    stopped: str = ""  # why labelling stopped before every record was asked (teacher.max_cost)
    planned: dict = field(default_factory=dict)  # the estimate before the first request
    estimate: dict = field(default_factory=dict)  # the estimate from the first answers

    def as_dict(self, recipe: Recipe) -> dict:
        u = self.usage
        new = self.accepted + sum(self.rejected.values())
        return {"total": self.total, "already_done": self.cached, "accepted": self.accepted,
                "rejected": dict(self.rejected), "requests": u.requests, "retries": u.retries,
                "tokens_in": u.tokens_in, "tokens_out": u.tokens_out, "cost": round(self.paid, 6),
                "spent_by_folder": round(self.spent_before + self.paid, 6), "currency": recipe.teacher.currency,
                "seconds": round(self.seconds, 2), "records_per_s": round(new / self.seconds, 3) if self.seconds else 0,
                **({"planned": self.planned} if self.planned else {}),
                **({"estimate": self.estimate} if self.estimate else {}),
                **({"stopped": self.stopped} if self.stopped else {})}


class _FailFast:
    """Stops the run when the first records all gave up the same way and nothing was ever answered."""

    def __init__(self, endpoint: Endpoint, todo: int):
        self.endpoint, self.need, self.reasons = endpoint, min(FAIL_FAST_AFTER, todo), Counter()

    def gave_up(self, reason: str) -> None:
        if self.endpoint.usage.answered:
            return
        self.reasons[reason] += 1
        if sum(self.reasons.values()) >= self.need and len(self.reasons) == 1:
            self.endpoint.fatal = EndpointError(f"the first {self.need} records all failed without a single "
                                                f"answer from {self.endpoint.base_url}: {reason}")
            raise self.endpoint.fatal


async def _label_all(recipe: Recipe, todo: list[dict], endpoint: Endpoint, prompt: str, votes: int,
                     keys: dict[str, str], out_dir: Path, summary: Summary, bar: Bar, worst: dict[str, float]) -> None:
    """Ask for every record of `todo`; `worst` is each record's worst case a request, what the budget holds."""
    t = recipe.teacher
    gate = asyncio.Semaphore(t.concurrency)
    budget = Budget(t.max_cost, summary.spent_before)
    temperature = t.temperature if votes == 1 else max(t.temperature, 0.7)
    fail_fast = _FailFast(endpoint, len(todo))
    with open_append(out_dir / "labelled.jsonl") as good, open_append(out_dir / "rejects.jsonl") as bad:

        def reject(row: dict, reason: str, detail: str, paid: float, raw: str = "") -> None:
            summary.rejected[reason] += 1
            append_jsonl(bad, {"id": row["id"], "text": row["text"], "reason": reason,
                               "detail": endpoint.redact(detail), "raw": endpoint.redact(raw[:2000]),
                               "key": keys[row["id"]], "cost": round(paid, 9)})

        def paid_for(answer: Answer, most: float) -> float:  # a teacher that reports no usage: at the worst case
            tokens = (answer.prompt_tokens, answer.completion_tokens)
            return cost(t, *tokens) if any(tokens) else most

        async def one(row: dict) -> None:
            messages = [{"role": "system", "content": prompt}, {"role": "user", "content": row["text"]}]
            most = worst[row["id"]]
            async with gate:
                held = await budget.take(most * votes)
                if held is None:  # not asked: a run with a higher cap asks it
                    summary.stopped = f"teacher.max_cost {money(t, t.max_cost)} reached"
                    return
                answers: list[Answer] = []
                try:
                    for _ in range(votes):
                        answers.append(await endpoint.ask(messages, t.max_tokens, temperature))
                except GaveUp as exc:  # the votes answered before are paid: the reject keeps their cost
                    reject(row, GAVE_UP, str(exc), sum(paid_for(a, most) for a in answers))
                    bar.update(advance=1, note=f"{sum(summary.rejected.values())} rejected")
                    fail_fast.gave_up(str(exc))
                    return
                finally:
                    paid = sum(paid_for(a, most) for a in answers)
                    summary.paid += paid
                    await budget.settle(held, most * votes, paid)
            checked = [check_answer(recipe, row["text"], a) for a in answers]
            failed = next((c for c in checked if c[0] is None), None)
            if failed:
                at = checked.index(failed)
                reject(row, failed[1], failed[2], paid, answers[at].content or answers[at].raw)
            else:
                label, split = majority(recipe, [c[0] for c in checked])
                if label is None:
                    reject(row, "no majority", f"the {votes} answers disagree on {split}", paid,
                           json.dumps([a.content for a in answers], ensure_ascii=False))
                else:
                    label, repaired, why = repair_label(recipe, row["text"], label)
                    if label is None:
                        reject(row, NOT_IN_TABLE, why, paid, answers[0].content or answers[0].raw)
                    else:
                        summary.accepted += 1
                        append_jsonl(good, {"id": row["id"], "text": row["text"], "label": label,
                                            **({"repaired": repaired} if repaired else {}), "key": keys[row["id"]],
                                            "teacher": endpoint.model, "cost": round(paid, 9)})
            bar.update(advance=1, note=f"{sum(summary.rejected.values())} rejected")
            if not summary.estimate and endpoint.usage.answered >= ESTIMATE_AFTER:
                estimate(recipe, summary, len(todo), bar)

        try:
            await asyncio.gather(*(one(r) for r in todo))
            if not summary.estimate:  # fewer answers than ESTIMATE_AFTER in all
                estimate(recipe, summary, len(todo), bar)
        finally:
            await endpoint.aclose()


def estimate(recipe: Recipe, summary: Summary, todo: int, bar: Bar) -> None:
    """The cost of labelling `todo` records, from the answers so far (their token counts at teacher.price_*):
    printed above the progress bar and kept in the summary."""
    answered = summary.usage.answered
    if not answered:
        return
    u, t = summary.usage, recipe.teacher
    per = {"tokens_in": u.tokens_in / answered, "tokens_out": u.tokens_out / answered}
    summary.estimate = {"from_answers": answered, "records": todo, **{k: round(v, 1) for k, v in per.items()},
                        "cost": round(summary.paid / answered * todo, 4), "currency": t.currency}
    over = t.max_cost is not None and summary.spent_before + summary.estimate["cost"] > t.max_cost
    cap = f"; teacher.max_cost {money(t, t.max_cost)} stops it" if over else ""
    bar.console.print(
        f"label: estimate from the first {answered} answers: {per['tokens_in']:.0f} tokens in, {per['tokens_out']:.0f} "
        f"out a record; {todo} records ≈ {money(t, summary.estimate['cost'])} at teacher.price_*{cap}",
        highlight=False, soft_wrap=True)


def teacher_key(recipe: Recipe, votes: int = 1) -> str:
    """The teacher's API key, from the variable the recipe names, once the request is known to be askable."""
    if votes < 1:
        raise StageError("--votes must be at least 1")
    api_key = os.environ.get(recipe.teacher.api_key_env)
    if not api_key:
        raise StageError(f"set ${recipe.teacher.api_key_env} to the teacher's API key (any value for a local server)")
    return api_key


def run_label(recipe: Recipe, inputs: str | Path | list[dict], out_dir: str | Path, *, base_url: str | None = None,
              model: str | None = None, votes: int = 1, retry_rejects: bool = False, yes: bool = False) -> dict:
    """Label every input (a file, or rows read_inputs read) not yet answered in out_dir; returns the summary (also
    written to label_summary.json). `retry_rejects` asks again for the records whose answers were rejected (they
    are paid for again). The estimate is printed first; `yes` goes on past teacher.confirm_above without asking."""
    t, api_key = recipe.teacher, teacher_key(recipe, votes)
    out = Path(out_dir)
    rows = inputs if isinstance(inputs, list) else read_inputs(inputs, recipe.data.max_input_chars)
    prompt = recipe.prompt("teacher")
    model = model or t.model
    keys = {r["id"]: cache_key(model, prompt, r["text"], votes) for r in rows}
    with folder_lock(out, "label"):
        labelled = load_journal(out / "labelled.jsonl")
        rejects = load_journal(out / "rejects.jsonl")
        # A record that gave up was never answered: it is asked again. A rejected answer was paid for: it is final
        # unless the user asks for it again. What a dropped row paid stays counted (spent.json).
        final = [r for r in rejects if r.get("reason") != GAVE_UP and not retry_rejects]
        if len(final) != len(rejects):
            keep_dropped(out, [r for r in rejects if r.get("reason") == GAVE_UP or retry_rejects])
            write_jsonl(out / "rejects.jsonl", final)
        done = {r.get("key") for r in labelled} | {r.get("key") for r in final}
        todo = [r for r in rows if keys[r["id"]] not in done]
        folder = recipe.path(t.tokenizer) if t.tokenizer else None  # a folder of the project, or a hub id
        tokens = count_prompts(t, prompt, [r["text"] for r in todo],
                               str(folder) if folder and folder.is_dir() else None)
        plan = Estimate(len(todo), votes, tokens, folder_spent(out, labelled + final))
        confirm(plan, t, yes, Console(stderr=True))
        worst = {r["id"]: cost(t, n, t.max_tokens) for r, n in zip(todo, tokens.bound)}
        summary = Summary(total=len(rows), cached=len(rows) - len(todo), spent_before=plan.spent,
                          planned=plan.figures(t) if todo else {})
        endpoint = Endpoint(base_url or t.base_url, model, api_key, t.api_key_env, t.timeout_s, t.max_retries,
                            request_body(t), summary.usage)  # imports openai: ~1 s
        start, down = time.perf_counter(), None
        with Bar("label", total=len(rows), note="0 rejected") as bar:
            bar.update(summary.cached)
            try:
                asyncio.run(_label_all(recipe, todo, endpoint, prompt, votes, keys, out, summary, bar, worst))
            except Unanswered as exc:  # the teacher stopped answering: what it answered is kept and counted
                down = exc
        summary.seconds = time.perf_counter() - start
        # this run's counts cover only its new answers: the folder's, over every run, are what a re-run reports
        mine = set(keys.values())
        held = {"accepted": sum(r.get("key") in mine for r in load_journal(out / "labelled.jsonl")),
                "rejected": dict(Counter(r.get("reason") for r in load_journal(out / "rejects.jsonl")
                                         if r.get("key") in mine))}
        result = {**summary.as_dict(recipe), "journal": held}
        write_json(out / "label_summary.json", result)
    finished = held["accepted"] + sum(n for reason, n in held["rejected"].items() if reason != GAVE_UP)
    resume = (f"{finished} of {len(rows)} records are answered and kept in {out}; run the same command again to "
              f"ask the {len(rows) - finished} others (nothing answered is paid for again)")
    if down is not None:
        raise Unanswered(f"label: {down}. {resume}") from None
    if summary.stopped:
        raise BudgetStop(f"label: {summary.stopped}: the folder has paid {money(t, result['spent_by_folder'])} "
                         f"and the next request's worst case would pass it. {finished} of {len(rows)} records are "
                         f"answered; raise teacher.max_cost and run again to ask the {len(rows) - finished} others "
                         f"({out / 'label_summary.json'})")
    if gave_up := summary.rejected[GAVE_UP]:
        raise Unanswered(f"label: {gave_up} records got no answer after {t.max_retries} retries each (kept as "
                         f"{GAVE_UP!r} in rejects.jsonl). {resume}")
    return result


def check_gold(recipe: Recipe, labelled: str | Path, gold: str | Path, out: str | Path) -> dict:
    """Score the teacher's labels against gold labels ({id, label} JSONL) with the metrics of `xtk eval`.
    Records the teacher rejected count as unparseable answers."""
    gold_by_id = {r["id"]: r["label"] for r in read_jsonl(gold)}
    got = {r["id"]: r["label"] for r in load_journal(Path(labelled))}
    rejected = {r["id"] for r in load_journal(Path(labelled).with_name("rejects.jsonl"))}
    rows = [{"parsed": got.get(i), "gold": g} for i, g in gold_by_id.items() if i in got or i in rejected]
    if not rows:
        raise DataError(gold, None, "no id in the gold file matches a labelled or rejected record")
    metrics = compute_metrics(recipe, rows)
    write_json(out, metrics)
    return metrics
