"""Zero-shot by option likelihood (toolkit/infer/likelihood.py) on the real embedded student: the batched scorer
against a plain one-pair-at-a-time log-probability computed here with transformers, and the backend's choice."""

import json

import pytest
import torch

from conftest import write_recipe
from toolkit.io.errors import StageError
from toolkit.infer.likelihood import LikelihoodBackend, choice_logprobs
from toolkit.task.recipe import load_recipe

ENUMS = """\
fields:
  - {name: sentiment, type: enum, description: tone, choices: [positive, negative]}
  - {name: topic, type: enum, description: subject, choices: [phone, book, 食物]}
"""


def direct(model, tokenizer, prompt: str, continuation: str) -> float:
    """log P(continuation | prompt) the plain way: one unpadded sequence, every position's logits."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].float(), dim=-1)
    return logp[len(p) - 1:len(p) + len(c) - 1].gather(1, torch.tensor(c)[:, None]).sum().item()


@pytest.fixture(scope="module")
def backend(smollm2, tmp_path_factory):
    return LikelihoodBackend(load_recipe(write_recipe(tmp_path_factory.mktemp("enums"), ENUMS)), str(smollm2),
                             batch_size=4)


def test_batched_scores_equal_one_pair_at_a_time(backend):
    """Prompts and answers of different lengths, the shortest prompt not first, a last batch half full: padding,
    the kept-logits offset or an off-by-one in the positions would move the figures off the unbatched ones."""
    prompts = ["A much longer prompt, so that the other rows of the batch are padded on the right. Sentiment:",
               "这本书很差", "Review: great phone, works well. Sentiment:", "Topic?"]
    answers = ['{"sentiment": "positive"}', '{"sentiment": "negative"}', " positive and long-winded", " book"]
    want = [direct(backend.model, backend.tokenizer, p, a) for p, a in zip(prompts, answers)]
    for batch_size in (3, 4):
        got = choice_logprobs(backend.model, backend.tokenizer, prompts, answers, batch_size=batch_size)
        assert got == pytest.approx(want, abs=1e-4)
    assert all(w < 0 for w in want)


def test_backend_answers_the_most_likely_allowed_class(backend):
    """Each field independently gets the choice whose {field: choice} JSON is likeliest by the direct figures,
    and the answer is JSON holding exactly the recipe's fields with allowed values."""
    chats = [[{"role": "system", "content": "Answer JSON: sentiment (positive or negative), topic (phone, book, 食物)."},
              {"role": "user", "content": text}] for text in ("This phone is great, I love it!", "这本书太差了。")]
    answers = backend.generate(chats, 8)
    for chat, answer in zip(chats, answers):
        prompt, record = backend.prompt(chat), json.loads(answer.text)
        assert answer.completion_tokens == 0 and list(record) == ["sentiment", "topic"]
        for field, choices in (("sentiment", ["positive", "negative"]), ("topic", ["phone", "book", "食物"])):
            scores = {c: direct(backend.model, backend.tokenizer, prompt, json.dumps({field: c}, ensure_ascii=False))
                      for c in choices}
            assert record[field] == max(scores, key=scores.get)


def test_without_a_chat_template_the_turns_are_plain_text(backend, monkeypatch):
    """A base model's folder has no chat template: the prompt is the turns' text, each followed by a blank line."""
    monkeypatch.setattr(backend.tokenizer, "chat_template", None)
    assert backend.prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]) == "S\n\nU\n\n"


def test_fields_that_are_not_classes_are_refused(smollm2, tmp_path):
    """A free-text field has no options to score: refused with a message naming it, before any model is loaded."""
    recipe = load_recipe(write_recipe(tmp_path, ENUMS + "  - {name: note, type: str, description: free text}\n"))
    with pytest.raises(StageError, match="note is not an enum field"):
        LikelihoodBackend(recipe, str(smollm2))
