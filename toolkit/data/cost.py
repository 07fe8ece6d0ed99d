"""The teacher's money: what labelling will cost before anything is paid, what a label folder has paid, and the
budget that keeps every request under teacher.max_cost.

- The estimate counts the prompt of every record as it is sent (the teacher's rendered system prompt and the
  text): with teacher.tokenizer (a tokenizer of the teacher's family) through its chat template; without one, from
  the characters, and it says so. Answers are priced at their most (teacher.max_tokens) until answers show more.
- What was paid is kept with each answer in the folder's journal (`cost`); an answer dropped from it to be asked
  again (--retry-rejects) leaves its cost in spent.json. A resumed run counts all of it.
- The budget sends a request only when the folder's spend, a worst case for every request in flight and its own
  worst case fit under max_cost: the cap is never passed while the teacher bills no more than that worst case.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.prompt import Confirm

from toolkit.io.errors import ModelError, StageError
from toolkit.io.jsonl import write_json
from toolkit.model.thinking import request_body
from toolkit.task.schema import TeacherSpec

SPENT_FILE = "spent.json"
# Without a tokenizer: a CJK character is about a token (Qwen, DeepSeek: 1.3-1.5 characters a token, so this
# leans high), other text about 4 UTF-8 bytes a token; a chat template adds a few tokens a message.
CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
TEMPLATE_TOKENS = 16
# The budget's bound without a tokenizer: no byte-level BPE (nor SentencePiece with byte fallback) makes more
# tokens of a text than it has UTF-8 bytes; a chat template's markers and roles stay under this many more.
TEMPLATE_BOUND = 64


def cost(teacher: TeacherSpec, tokens_in: float, tokens_out: float) -> float:
    return (tokens_in * teacher.price_in_per_mtok + tokens_out * teacher.price_out_per_mtok) / 1e6


def money(teacher: TeacherSpec, amount: float) -> str:
    return f"{amount:.4g} {teacher.currency}"


@dataclass
class PromptTokens:
    """The prompt tokens of each record's chat: `typical` for the estimate, `bound` (the most a teacher could
    bill for it) for the budget; `counted_with` names the tokenizer, or is empty when estimated without one."""
    typical: list[int]
    bound: list[int]
    counted_with: str = ""


def count_prompts(teacher: TeacherSpec, prompt: str, texts: list[str], tokenizer: str | None = None) -> PromptTokens:
    """The tokens of each chat labelling sends: the system prompt, then one text. `tokenizer`: teacher.tokenizer
    as found (a folder resolved against the recipe's project)."""
    if not texts:  # nothing to ask: no tokenizer to load
        return PromptTokens([], [])
    if tokenizer := tokenizer or teacher.tokenizer:
        counts = _tokenizer_counts(teacher, tokenizer, prompt, texts)
        return PromptTokens(counts, counts, tokenizer)
    base = _estimate(prompt) + TEMPLATE_TOKENS
    bound = len(prompt.encode()) + TEMPLATE_BOUND
    return PromptTokens([base + _estimate(t) for t in texts], [bound + len(t.encode()) for t in texts])


def _estimate(text: str) -> int:
    cjk = len(CJK.findall(text))
    return cjk + math.ceil((len(text.encode()) - 3 * cjk) / 4)


def _tokenizer_counts(teacher: TeacherSpec, tokenizer: str, prompt: str, texts: list[str]) -> list[int]:
    """Exact counts with the teacher's tokenizer: its chat template rendered once around a placeholder, then every
    text encoded in place of it (one batch)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(tokenizer)
    except Exception as exc:  # transformers and the hub raise many types; all mean the same thing here
        raise ModelError(f"teacher.tokenizer {tokenizer!r}: cannot load it ({type(exc).__name__}: "
                         f"{str(exc)[:200]}); name a local tokenizer folder or a hub id, or null to estimate "
                         "without one") from None
    placeholder = "\ue000xtk-text\ue000"
    if tok.chat_template:
        chat = [{"role": "system", "content": prompt}, {"role": "user", "content": placeholder}]
        rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                           **request_body(teacher))
    else:
        rendered = f"{prompt}\n{placeholder}"
    before, _, after = rendered.partition(placeholder)
    ids = tok([before + t + after for t in texts], add_special_tokens=False)["input_ids"]
    return [len(i) for i in ids]


def folder_spent(out: Path, answers: list[dict]) -> float:
    """What the label folder has paid: the costs kept with its answers, and those of answers dropped to be asked
    again (spent.json)."""
    return _dropped(out) + sum(float(r.get("cost") or 0) for r in answers)


def keep_dropped(out: Path, answers: list[dict]) -> None:
    """Before answers leave the journal (to be asked again), their cost goes to spent.json: it stays paid."""
    paid = sum(float(r.get("cost") or 0) for r in answers)
    if paid:
        write_json(out / SPENT_FILE, {"dropped_answers": round(_dropped(out) + paid, 9)})


def _dropped(out: Path) -> float:
    path = out / SPENT_FILE
    return float(json.loads(path.read_text()).get("dropped_answers", 0)) if path.is_file() else 0.0


@dataclass
class Estimate:
    records: int  # to ask in this run
    votes: int
    tokens: PromptTokens
    spent: float  # by the folder before this run

    def figures(self, teacher: TeacherSpec) -> dict:
        requests = self.records * self.votes
        prompt_in = sum(self.tokens.typical) * self.votes
        most = cost(teacher, sum(self.tokens.bound) * self.votes, requests * teacher.max_tokens)
        return {"records": self.records, "requests": requests, "prompt_tokens": prompt_in,
                "counted_with": self.tokens.counted_with or "an estimate without a tokenizer",
                "prompts_cost": round(cost(teacher, prompt_in, 0), 6), "at_most": round(most, 6),
                "spent_before": round(self.spent, 6), "currency": teacher.currency}

    def can_spend(self, teacher: TeacherSpec) -> float:
        """The most this run can pay: its worst case, or what the cap leaves."""
        most = self.figures(teacher)["at_most"]
        return most if teacher.max_cost is None else max(0.0, min(most, teacher.max_cost - self.spent))

    def describe(self, teacher: TeacherSpec) -> str:
        f, m = self.figures(teacher), lambda x: money(teacher, x)
        how = (f"counted with {f['counted_with']}" if self.tokens.counted_with else
               "estimated without a tokenizer: a CJK character a token, 4 bytes of other text a token; name the "
               "teacher's as teacher.tokenizer to count them")
        per = f["prompt_tokens"] / f["requests"] if f["requests"] else 0
        before = f" (this folder has paid {m(self.spent)} before)" if self.spent else ""
        text = (f"label: {f['records']} records to ask{before}: {f['requests']} requests, prompts of {per:,.0f} "
                f"tokens each ({how}) ≈ {m(f['prompts_cost'])}, answers of at most {teacher.max_tokens} tokens: at "
                f"most {m(f['at_most'])} in all at teacher.price_*")
        if teacher.max_cost is not None:
            text += f"; teacher.max_cost stops this folder at {m(teacher.max_cost)}"
        return text


def confirm(estimate: Estimate, teacher: TeacherSpec, yes: bool, console: Console) -> None:
    """Print the estimate; past teacher.confirm_above, go on only when a person says so on a terminal, or --yes."""
    if not estimate.records:
        return
    if not (teacher.price_in_per_mtok or teacher.price_out_per_mtok):
        console.print(f"label: {estimate.records} records to ask; no prices set (teacher.price_*_per_mtok): the "
                      "cost is not estimated", highlight=False, soft_wrap=True)
        return
    console.print(estimate.describe(teacher), highlight=False, soft_wrap=True)
    most = estimate.can_spend(teacher)
    if yes or most <= teacher.confirm_above:
        return
    over = (f"this run may spend up to {money(teacher, most)}, over teacher.confirm_above "
            f"{money(teacher, teacher.confirm_above)}")
    if not sys.stdin.isatty():
        raise StageError(f"label: {over}: nothing was asked. Pass --yes to go on without a terminal, or lower "
                         "teacher.max_cost")
    try:
        go = Confirm.ask(f"label: {over}. Go on?", console=console, default=False)
    except EOFError:
        go = False
    if not go:
        raise StageError("label: not confirmed: nothing was asked")


class Budget:
    """teacher.max_cost for the label folder: a request is sent when what the folder paid, the worst case held for
    each request in flight and its own worst case fit under the cap; otherwise it waits for those in flight, and
    once none is left and it still does not fit, the cap is reached. A teacher that bills more than the worst case
    makes every later worst case grow by as much."""

    def __init__(self, cap: float | None, spent: float):
        self.cap, self.spent, self.held, self.scale = cap, spent, 0.0, 1.0
        self.flying = 0  # requests holding a worst case
        self.reached = False
        self.changed = asyncio.Condition()

    async def take(self, worst: float) -> float | None:
        """Hold a request's worst case; returns what is held, None once the cap is reached."""
        if self.cap is None:
            return 0.0
        async with self.changed:
            while not self.reached and self.spent + self.held + worst * self.scale > self.cap:
                if not self.flying:
                    self.reached = True
                    break
                await self.changed.wait()
            if self.reached:
                return None
            self.held += worst * self.scale
            self.flying += 1
            return worst * self.scale

    async def settle(self, held: float, worst: float, paid: float) -> None:
        """A request held `held` and paid `paid` (nothing when it got no answer)."""
        if self.cap is None:
            return
        async with self.changed:
            self.held -= held
            self.flying -= 1
            self.spent += paid
            if worst and paid > worst * self.scale:
                self.scale = paid / worst
            self.changed.notify_all()
