"""Zero-shot by option likelihood (toolkit/likelihood.py) on the real embedded student: the batched scorer
against a plain one-pair-at-a-time log-probability computed here with transformers, and the backend's choice."""

import json

import pytest
import torch

from conftest import ROOT
from toolkit.errors import StageError
from toolkit.likelihood import LikelihoodBackend, choice_logprobs
from toolkit.recipe import load_recipe

SENTIMENT = ROOT / "recipes" / "review_sentiment_zh.yaml"


def direct(model, tokenizer, prompt: str, continuation: str) -> float:
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        logits = model(torch.tensor([p + c])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return sum(logp[len(p) - 1 + i, t].item() for i, t in enumerate(c))


@pytest.fixture(scope="module")
def backend(smollm2):
    return LikelihoodBackend(load_recipe(SENTIMENT), str(smollm2), batch_size=3)


def test_batched_scores_equal_one_pair_at_a_time(backend):
    """Prompts and answers of different lengths in one padded batch: padding or an off-by-one in the positions
    would move the figures away from the unbatched computation."""
    prompts = ["Review: great phone, works well. Sentiment:", "这本书很差",
               "A much longer prompt, so that the other rows of the batch are padded on the right. Sentiment:"]
    answers = ['{"sentiment": "positive"}', '{"sentiment": "negative"}', " positive and long-winded"]
    got = choice_logprobs(backend.model, backend.tokenizer, prompts, answers, batch_size=3)
    want = [direct(backend.model, backend.tokenizer, p, a) for p, a in zip(prompts, answers)]
    assert got == pytest.approx(want, abs=1e-3)
    assert all(w < 0 for w in want)


def test_backend_answers_the_most_likely_allowed_class(backend):
    chats = [[{"role": "system", "content": "评论情感为JSON：sentiment（positive或negative）。"},
              {"role": "user", "content": text}] for text in ("非常好，很满意！", "太差了，退货。")]
    answers = backend.generate(chats, 8)
    for chat, answer in zip(chats, answers):
        prompt = backend.prompt(chat)
        scores = {c: direct(backend.model, backend.tokenizer, prompt, json.dumps({"sentiment": c}))
                  for c in ("positive", "negative")}
        assert json.loads(answer.text) == {"sentiment": max(scores, key=scores.get)}


def test_fields_that_are_not_classes_are_refused(smollm2):
    with pytest.raises(StageError, match="persons, locations, organizations is not an enum field"):
        LikelihoodBackend(load_recipe(ROOT / "recipes" / "msra_ner.yaml"), str(smollm2))
