"""Zero-shot classification by option likelihood: instead of letting a small model write free text (which it
often does not shape into JSON), score every allowed answer's log-probability after the prompt and pick the
best. The answer scored for choice c of field f is what a model is trained to answer: json.dumps({f: c}).
Several enum fields are scored each on its own and joined into one record; a recipe with any other field type
is refused. A model folder without a chat template (a base model) reads the turns as plain text instead."""

from __future__ import annotations

import json

from toolkit.io.errors import StageError
from toolkit.infer.backends import Backend, Generation, Messages, Served
from toolkit.model.thinking import template_kwargs
from toolkit.task.fields import not_classes
from toolkit.task.recipe import Recipe


def choice_logprobs(model, tokenizer, prompts: list[str], continuations: list[str], batch_size: int = 8) -> list[float]:
    """log P(continuation | prompt) for each pair: the sum over the continuation's tokens (a sum, not a mean:
    the probability of the whole answer; a mean would favour a choice split into many likely pieces).
    Prompt and continuation are tokenised apart and joined, so a choice is the same tokens whatever precedes it
    (tokenised together, a boundary merge could score one choice on other tokens than its rivals).

    Pairs are batched by length and left-padded, with position ids counted from each row's first real token, so
    every continuation ends at the batch's last position: the vocabulary projection, which dominates the cost
    (49k-150k outputs a position), runs only on the few last positions that predict answer tokens."""
    import torch

    pairs = [(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"])
             for p, c in zip(prompts, continuations)]
    if any(not p for p, _ in pairs):
        raise ValueError("an empty prompt: its continuation's first token has no position to be predicted from")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = [0.0] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))  # less padding
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(pairs[i][0]) + len(pairs[i][1]) for i in chunk)
        keep = max(len(pairs[i][1]) for i in chunk) + 1  # the last positions: those predicting continuations
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            p, c = pairs[i]
            ids[row, width - len(p) - len(c):] = torch.tensor(p + c)
            mask[row, width - len(p) - len(c):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as unpadded: the first real token is position 0
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        for row, i in enumerate(chunk):
            c = pairs[i][1]
            at = torch.arange(keep - len(c) - 1, keep - 1)  # token t is predicted at position t - 1
            logp = torch.log_softmax(logits[row, at].float(), dim=-1)
            scores[i] = logp.gather(1, torch.tensor(c)[:, None]).sum().item()
    return scores


class LikelihoodBackend(Backend):
    """`generate` answers each chat with the likeliest allowed record as JSON; max_tokens is not used (nothing is
    generated) and completion_tokens is 0."""

    name = "likelihood"

    def __init__(self, recipe: Recipe, model: str, thinking_off: bool = False, batch_size: int = 8):
        others = not_classes(recipe.fields)
        if others:
            raise StageError(f"option likelihood chooses among classes: {', '.join(others)} is not an enum field")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        trust = recipe.student.trust_remote_code
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust)
        # float32: no native bf16 on the CPUs this runs on (as vllm_kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype="float32", trust_remote_code=trust).eval()
        self.options = {f.name: recipe.choices(f.name) for f in recipe.fields}
        self.template_kwargs = template_kwargs(thinking_off)
        self.batch_size = batch_size

    def prompt(self, messages: Messages) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      **self.template_kwargs)
        # A base model without a chat template: the turns' text ("system\n\nuser\n\n"), the answer to follow.
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def generate(self, batch: list[Messages], max_tokens: int) -> list[Generation]:
        prompts = [self.prompt(m) for m in batch]
        answers = [{} for _ in batch]
        for field, choices in self.options.items():  # each field on its own: no cartesian product of classes
            texts = [json.dumps({field: c}, ensure_ascii=False) for c in choices]
            scores = choice_logprobs(self.model, self.tokenizer, [p for p in prompts for _ in texts],
                                     texts * len(prompts), self.batch_size)
            for i, answer in enumerate(answers):
                mine = scores[i * len(texts):(i + 1) * len(texts)]
                answer[field] = choices[mine.index(max(mine))]
        return [Generation(json.dumps(a, ensure_ascii=False)) for a in answers]


def build(s: Served) -> LikelihoodBackend:
    return LikelihoodBackend(s.recipe, s.model, s.thinking_off)
