"""The classical baselines of toolkit/infer/classical.py, as the `rules` evaluation runs them: jieba's name tagger on
hand-checked sentences, TF-IDF + logistic regression learnt from a run's training split of the real review
data, and the errors a user meets when a learning baseline has nothing to learn from."""

import json

import pytest

from conftest import ROOT
from toolkit.data.generators import generate
from toolkit.io.errors import StageError
from toolkit.io.trust import Consent
from toolkit.infer.engines import RulesBackend
from toolkit.io.jsonl import read_jsonl
from toolkit.data.prepare import run_prepare
from toolkit.task.recipe import load_recipe
from toolkit.tasks.msra_ner.baseline import jieba_entities

SENTIMENT = ROOT / "recipes" / "review_sentiment_zh.yaml"


def test_jieba_finds_persons_locations_and_organisations_in_order_with_repeats():
    """Checked by hand: every name in these sentences, in reading order, a repeated place listed twice."""
    assert json.loads(jieba_entities("中国人民银行行长周小川昨天在上海表示，浦东新区发展迅速。")) == {
        "persons": ["周小川"], "locations": ["上海", "浦东新区"], "organizations": ["中国人民银行"]}
    assert json.loads(jieba_entities("上海很大，我爱上海。"))["locations"] == ["上海", "上海"]


def test_tfidf_logreg_learns_the_training_split_and_classifies_held_out_reviews(tmp_path):
    """Learnt from the training split `xtk prepare` writes (never the test set), it must classify the real
    held-out reviews far above the 50% of a balanced coin: a swapped or constant label mapping scores ~50%."""
    files = {p.name: p for p in generate("review_sentiment_zh", tmp_path / "data")}
    recipe = load_recipe(SENTIMENT, None, [f"data.test=[{files['test.jsonl']}]", "data.train_records=2000"],
                         Consent(paths=(str(tmp_path),)))
    gold = {r["id"]: r["label"] for r in read_jsonl(files["pool_gold.jsonl"])}
    records = [{**r, "label": gold[r["id"]]} for r in read_jsonl(files["pool.jsonl"])]
    run_prepare(recipe, records, tmp_path / "run")
    backend = RulesBackend(recipe, tmp_path / "run" / "train.jsonl")
    test = read_jsonl(files["test.jsonl"])
    answers = backend.generate([[{"role": "system", "content": "x"}, {"role": "user", "content": r["text"]}]
                                for r in test], 8)
    predicted = [json.loads(a.text)["sentiment"] for a in answers]
    assert set(predicted) == {"positive", "negative"}
    accuracy = sum(p == r["label"]["sentiment"] for p, r in zip(predicted, test)) / len(test)
    assert accuracy > 0.75, accuracy


def test_a_learning_baseline_without_a_training_split_says_to_prepare_first(tmp_path):
    recipe = load_recipe(SENTIMENT)
    with pytest.raises(StageError, match=r"learns from the training split.*run `xtk prepare` first"):
        RulesBackend(recipe, tmp_path / "train.jsonl")


def test_tfidf_logreg_refuses_fields_that_are_not_classes(tmp_path):
    recipe = load_recipe(ROOT / "recipes" / "msra_ner.yaml", None, ["baseline=toolkit.infer.classical:tfidf_logreg"])
    train = tmp_path / "train.jsonl"
    answer = json.dumps({"persons": ["张三"], "locations": [], "organizations": []}, ensure_ascii=False)
    train.write_text(json.dumps({"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "张三"},
                                              {"role": "assistant", "content": answer}]}, ensure_ascii=False) + "\n")
    with pytest.raises(StageError, match="enum fields only; persons, locations, organizations is not enum"):
        RulesBackend(recipe, train)
