"""Zero-shot classification by option likelihood: instead of letting a small model write free text (which it
often does not shape into JSON), score every allowed answer's log-probability after the prompt and pick the
best. The answer scored for choice c of field f is what a model is trained to answer: {"f": "c"}."""

from __future__ import annotations

import json

from toolkit.errors import StageError
from toolkit.infer import Backend, Generation, Messages
from toolkit.recipe import Recipe


def choice_logprobs(model, tokenizer, prompts: list[str], continuations: list[str], batch_size: int = 8) -> list[float]:
    """log P(continuation | prompt) for each pair: the sum over the continuation's tokens (a sum, not a mean:
    the probability of the whole answer, so a choice gains nothing from being tokenised into more pieces).
    Prompt and continuation are tokenised apart and joined, so a choice is the same tokens whatever precedes it."""
    import torch

    pairs = [(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(c, add_special_tokens=False)["input_ids"])
             for p, c in zip(prompts, continuations)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (p, c) in enumerate(chunk):  # right padding: positions of real tokens are as unbatched
            ids[row, :len(p) + len(c)] = torch.tensor(p + c)
            mask[row, :len(p) + len(c)] = 1
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, (p, c) in enumerate(chunk):
            # token t is predicted at position t - 1
            at = torch.arange(len(p) - 1, len(p) + len(c) - 1)
            scores.append(logp[row, at, torch.tensor(c)].sum().item())
    return scores


class LikelihoodBackend(Backend):
    name = "likelihood"

    def __init__(self, recipe: Recipe, model: str, thinking_off: bool = False, batch_size: int = 8):
        others = [f.name for f in recipe.fields if f.type != "enum"]
        if others:
            raise StageError(f"option likelihood chooses among classes: {', '.join(others)} is not an enum field")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype="float32").eval()
        self.options = {f.name: recipe.choices(f.name) for f in recipe.fields}
        self.template_kwargs = {"enable_thinking": False} if thinking_off else {}
        self.batch_size = batch_size

    def prompt(self, messages: Messages) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      **self.template_kwargs)
        # a base model without a chat template: the turns as plain text, the answer to follow
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
