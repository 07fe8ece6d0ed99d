"""Classical baselines for any recipe: what a user tries before any model, named by a recipe's `baseline:` key
(a task's own baseline lives with its task, e.g. toolkit/tasks/msra_ner/baseline.py).

A baseline is a function text -> the answer's JSON text. One that learns is marked @trained: it is given the
run's training split (the very records the student trains on, never the test) and returns such a function.
"""

from __future__ import annotations

import json
from typing import Callable

from toolkit.io.errors import StageError
from toolkit.io.trust import recipe_code
from toolkit.task.fields import not_classes
from toolkit.task.recipe import Recipe

Answer = Callable[[str], str]


def trained(fit: Callable[[Recipe, list[tuple[str, dict]]], Answer]):
    """Marks a baseline `fit(recipe, examples) -> answer` that learns from (text, gold record) pairs."""
    fit.trained = True
    return fit


@recipe_code("baseline")
@trained
def tfidf_logreg(recipe: Recipe, examples: list[tuple[str, dict]]) -> Answer:
    """TF-IDF of character 1-3-grams + logistic regression, one classifier per enum field: the usual first try
    for text classification. Characters, not words: Chinese has no spaces, and no segmenter is assumed. The
    regularisation strength is chosen by 3-fold cross-validation on the training split only."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline

    others = not_classes(recipe.fields)
    if others:
        raise StageError(f"baseline tfidf_logreg classifies enum fields only; {', '.join(others)} is not enum")
    texts = [text for text, _ in examples]
    models = {}
    for spec in recipe.fields:
        labels = [str(gold.get(spec.name)) for _, gold in examples]
        if len(set(labels)) < 2:
            raise StageError(f"baseline tfidf_logreg: the training split has one class only for {spec.name}")
        models[spec.name] = make_pipeline(
            TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True),
            LogisticRegressionCV(Cs=[0.1, 1, 10, 100], cv=3, max_iter=2000, use_legacy_attributes=False),
        ).fit(texts, labels)

    def answer(text: str) -> str:
        return json.dumps({name: str(m.predict([text])[0]) for name, m in models.items()}, ensure_ascii=False)

    return answer
