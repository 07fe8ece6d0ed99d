"""The statistics of a bake-off: ranks within a task, mean rank over tasks with a 95% interval (a bootstrap over
tasks and, within each task, over test records), and paired tests of a student against the teacher (McNemar's
exact test on record exact match, a paired bootstrap on the task metric)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The level every paired verdict is read at: a difference is "shown" where its test's p-value is below it.
ALPHA = 0.05


def ranks(scores: dict[str, float]) -> dict[str, float]:
    """Rank 1 for the highest score; tied scores share the mean of the ranks they span ([0.9, 0.9] -> 1.5)."""
    ordered = sorted(scores, key=lambda k: -scores[k])
    out: dict[str, float] = {}
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and scores[ordered[j + 1]] == scores[ordered[i]]:
            j += 1
        for k in ordered[i:j + 1]:
            out[k] = (i + j) / 2 + 1
        i = j + 1
    return out


def percentile_interval(values: list[float]) -> list[float]:
    """The 2.5th and 97.5th percentiles, as toolkit/maths/stats.py takes them from its bootstrap."""
    boot = sorted(values)
    return [boot[int(0.025 * len(boot))], boot[int(0.975 * len(boot)) - 1]]


@dataclass
class Evaluation:
    """One evaluation's test records, each as the unit its task metric is computed from, and that metric. `draw`
    names the set of records it was tested on: evaluations of one task with the same `draw` list the same records
    in the same order (whatever the student), and a bootstrap sample resamples them together: paired."""

    units: Sequence[Any]
    statistic: Callable[[list], float]
    draw: str = "records"

    def score(self, index: Sequence[int] | None = None) -> float:
        return self.statistic(list(self.units) if index is None else [self.units[i] for i in index])


# A ranking scores a student on one task from its evaluations ({name: Evaluation}), each resampled by the draw
# of its records (`draws[e.draw]`, None: all records once): e.g. fine-tuned, or fine-tuned minus base. None: the
# student has no such score.
Scorer = Callable[[dict[str, Evaluation], dict[str, Sequence[int] | None]], float | None]


def task_scores(task: dict[str, dict[str, Evaluation]], scorer: Scorer,
                draws: dict[str, Sequence[int] | None]) -> dict[str, float]:
    """{student: score} on one task for the students it can score."""
    out = {}
    for student, evaluations in task.items():
        value = scorer(evaluations, draws)
        if value is not None:
            out[student] = value
    return out


def _mean_ranks(tasks: list[dict[str, dict[str, Evaluation]]], draws: list[dict[str, Sequence[int]]],
                scorer: Scorer) -> dict[str, float]:
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for task, draw in zip(tasks, draws):
        for student, r in ranks(task_scores(task, scorer, draw)).items():
            total[student] = total.get(student, 0.0) + r
            count[student] = count.get(student, 0) + 1
    return {s: total[s] / count[s] for s in total}


def record_counts(task: dict[str, dict[str, Evaluation]]) -> dict[str, int]:
    """Records per draw in a task."""
    counts: dict[str, int] = {}
    for evaluations in task.values():
        for e in evaluations.values():
            if counts.setdefault(e.draw, len(e.units)) != len(e.units):
                raise ValueError(f"evaluations of draw {e.draw!r} differ in their records")
    return counts


def mean_rank(tasks: list[dict[str, dict[str, Evaluation]]], scorer: Scorer, bootstrap: int = 1000,
              seed: int = 0) -> dict[str, dict]:
    """Each student's mean rank over the tasks it was scored on, with a 95% interval: every bootstrap sample draws
    the tasks with replacement and, within each drawn task, its test records with replacement (once per set of
    records, shared by every student and evaluation tested on them: paired), re-ranks and averages. `tasks[i]`
    is {student: {evaluation name: Evaluation}}."""
    point = _mean_ranks(tasks, [{} for _ in tasks], scorer)
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {s: [] for s in point}
    for _ in range(bootstrap):
        picked = [tasks[rng.randrange(len(tasks))] for _ in tasks]
        draws = [{draw: [rng.randrange(n) for _ in range(n)] for draw, n in record_counts(task).items()}
                 for task in picked]  # a task drawn twice gets two record draws
        for student, value in _mean_ranks(picked, draws, scorer).items():
            samples[student].append(value)
    return {s: {"value": round(point[s], 4),
                "ci95": [round(v, 4) for v in percentile_interval(samples[s])] if samples[s] else [point[s]] * 2}
            for s in point}


def mcnemar(b: int, c: int) -> float:
    """McNemar's exact test, two-sided: of the b + c discordant records (b: only the first right, c: only the
    second right), how likely a split at least this uneven is when either is equally likely to be right."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def discordant(first: dict[Any, bool], second: dict[Any, bool]) -> tuple[list, int, int]:
    """What McNemar's test reads of two evaluations' record exact match ({record: exact}): the records both were
    tested on, how many of them only the first got right (b) and how many only the second (c)."""
    both = [k for k in first if k in second]
    return both, sum(first[k] and not second[k] for k in both), sum(second[k] and not first[k] for k in both)


def verdict(ahead: bool, behind: bool) -> str:
    """A paired test's reading of "first against second": "beats" or "below" only where the test shows it at the
    chosen level, else "not shown" (a difference the records cannot tell from chance)."""
    return "beats" if ahead else "below" if behind else "not shown"


def paired_difference(first: Evaluation, second: Evaluation, bootstrap: int = 1000, seed: int = 0) -> dict:
    """first's metric minus second's on the same records, with a 95% interval from resampling those records
    (one draw for both: paired)."""
    n = len(first.units)
    if n != len(second.units):
        raise ValueError(f"paired evaluations need the same records, got {n} and {len(second.units)}")
    rng = random.Random(seed)
    diffs = []
    for _ in range(bootstrap):
        index = [rng.randrange(n) for _ in range(n)]
        diffs.append(first.score(index) - second.score(index))
    value = first.score() - second.score()
    return {"value": round(value, 4), "ci95": [round(v, 4) for v in percentile_interval(diffs)] if diffs else
            [round(value, 4)] * 2}


def gap_closed(student: Evaluation, base: Evaluation, teacher: Evaluation, bootstrap: int = 1000,
               seed: int = 0) -> dict:
    """(student − base) / (teacher − base) on the same records: the share of the base-to-teacher gap the student
    closed, with a 95% interval from resampling those records (one draw for all three: paired). A resample
    where the teacher is no better than the base has no gap to close and is left out; value None: none at all."""
    n = len(student.units)
    if not n == len(base.units) == len(teacher.units):
        raise ValueError(f"paired evaluations need the same records, got {n}, {len(base.units)}, {len(teacher.units)}")

    def ratio(index: Sequence[int] | None) -> float | None:
        b = base.score(index)
        gap = teacher.score(index) - b
        return (student.score(index) - b) / gap if gap > 0 else None

    rng = random.Random(seed)
    values = [v for _ in range(bootstrap) if (v := ratio([rng.randrange(n) for _ in range(n)])) is not None]
    value = ratio(None)
    if value is None:
        return {"value": None, "ci95": None}
    return {"value": round(value, 4), "ci95": [round(v, 4) for v in percentile_interval(values)] if values else
            [round(value, 4)] * 2}
