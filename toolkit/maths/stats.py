"""The statistics metrics are made of: proportions with Wilson intervals, F1 from true/false positive and false
negative counts, macro-F1 over classes, and any statistic with its interval from shared bootstrap resamples."""

from __future__ import annotations

import math
from collections.abc import Callable

Counts = tuple[int, int, int]  # true positives, false positives, false negatives


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"value": k / n if n else 0.0, "k": k, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}


def total(counts: list[Counts]) -> Counts:
    return tuple(sum(c[i] for c in counts) for i in range(3))


def f1(counts: list[Counts]) -> float:
    tp, fp, fn = total(counts)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def precision(counts: list[Counts]) -> float:
    """Nothing predicted is perfect precision only where there was nothing to find (as F1 is)."""
    tp, fp, fn = total(counts)
    return tp / (tp + fp) if tp + fp else float(fn == 0)


def recall(counts: list[Counts]) -> float:
    """Nothing to find is perfect recall only where nothing was predicted either."""
    tp, fp, fn = total(counts)
    return tp / (tp + fn) if tp + fn else float(fp == 0)


def macro_f1(pairs: list[tuple[str, str | None]]) -> float:
    """Mean F1 over the classes that occur (as gold or prediction) of (gold, predicted) pairs; an invalid
    prediction (None) is a miss."""
    tally: dict[str, list[int]] = {}
    for gold, predicted in pairs:
        tally.setdefault(gold, [0, 0, 0])
        if predicted == gold:
            tally[gold][0] += 1
            continue
        tally[gold][2] += 1
        if predicted is not None:
            tally.setdefault(predicted, [0, 0, 0])[1] += 1
    return sum(2 * tp / (2 * tp + fp + fn) for tp, fp, fn in tally.values()) / len(tally) if tally else 1.0


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def with_interval(statistic: Callable[[list], float], per_record: list, samples: list[list[int]]) -> dict:
    """A statistic of the records with its 95% interval from the shared bootstrap resamples."""
    boot = sorted(statistic([per_record[i] for i in sample]) for sample in samples) or [0.0]
    value = statistic(per_record) if per_record else 0.0
    lo, hi = boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]
    return {"value": value, "ci95": [round(lo, 4), round(hi, 4)]}
