"""A bake-off's figures: each pair's evaluations read back and aligned by record across students, the rankings
(fine-tuned, base, tunability) with mean ranks and their intervals, and each student against the teacher."""

from __future__ import annotations

from pathlib import Path

from toolkit.choose.bakeoff_pairs import GUIDED, teacher_reachable
from toolkit.choose.bakeoff_spec import Bakeoff, Pair
from toolkit.io.jsonl import read_jsonl
from toolkit.maths.ranking import (Evaluation, discordant, gap_closed, mcnemar, mean_rank, paired_difference, ranks,
                                   task_scores)
from toolkit.run.context import Context
from toolkit.run.identity import evaluations_current
from toolkit.run.manifest import Manifest
from toolkit.run.roles import ROLES, role
from toolkit.task.fields import Headline
from toolkit.task.recipe import Recipe
from toolkit.task.scoring import headline


def task_metric(recipe: Recipe) -> Headline:
    """The figure a task is judged by: the headline its field types call for (toolkit/task/scoring.py)."""
    return headline(recipe.fields, recipe.choices)


# the roles (toolkit/run/roles.py) a bake-off compares -> the records each was tested on: a base model may be tested
# on fewer (eval.base_limit)
EVALUATIONS = {name: "base" if ROLES[name].base_limit else "tested" for name in ("student", "teacher", "base",
                                                                                   "base-guided")}


def read_predictions(pair: Pair, name: str) -> tuple[dict[tuple[str, str], dict] | None, str | None]:
    """{(test file, record id): prediction row} of one evaluation over every test file of the recipe, or None and
    why: missing, or made for another model or configuration than the run's now."""
    ctx = Context(pair.recipe, pair.run_dir, Manifest(pair.run_dir))
    r = role(ctx, name)
    why = evaluations_current(ctx, r, pair.recipe.data.test)
    if why:
        skipped = ctx.manifest.data["stages"].get(ROLES[name].stage or GUIDED, {}).get("skipped")
        return None, why + (f" ({skipped})" if skipped else "")
    rows: dict[tuple[str, str], dict] = {}
    for test in pair.recipe.data.test:
        for row in read_jsonl(pair.run_dir / "eval" / f"{r.folder}-{Path(test).stem}" / "predictions.jsonl"):
            rows[(Path(test).stem, str(row["id"]))] = row
    return rows, None


def collect(b: Bakeoff) -> dict:
    """Every pair's evaluations as metric units aligned by record across students (for paired resampling)."""
    tasks: dict[str, dict[str, dict[str, Evaluation]]] = {}
    teacher: dict[str, dict[str, Evaluation]] = {}  # task -> student -> the teacher on that pair's records
    exact: dict[tuple[str, str, str], dict] = {}  # (task, student, evaluation) -> {record: exact}
    units: dict[tuple[str, str, str], dict] = {}  # (task, student, evaluation) -> {record: metric unit}
    notes, records = [], {}
    for task in b.tasks:
        metric = task_metric(b.pair(task, b.students[0].name).recipe)
        found = {}
        for s in b.students:
            pair = b.pair(task, s.name)
            for name in EVALUATIONS:
                rows, why = read_predictions(pair, name)
                if rows is None:
                    if not ROLES[name].endpoint or teacher_reachable(pair.recipe):
                        notes.append(f"{task} x {s.name}: {why}")
                    continue
                found[(s.name, name)] = rows
        # Students are compared on the records every one of their evaluations of a kind shares.
        common: dict[str, list] = {}
        for (student, name), rows in found.items():
            draw = EVALUATIONS[name]
            common[draw] = [k for k in common.get(draw, rows) if k in rows]
        records[task] = {draw: len(keys) for draw, keys in common.items()}
        tasks[task] = {}
        for (student, name), rows in found.items():
            keys = common[EVALUATIONS[name]]
            e = Evaluation([metric.unit(rows[k]) for k in keys], metric.statistic, EVALUATIONS[name])
            exact[(task, student, name)] = {k: bool(rows[k]["exact"]) for k in keys}
            units[(task, student, name)] = {k: metric.unit(r) for k, r in rows.items()}
            if ROLES[name].endpoint:
                teacher.setdefault(task, {})[student] = e
            else:
                tasks[task].setdefault(student, {})[name] = e
    return {"tasks": tasks, "teacher": teacher, "exact": exact, "units": units, "notes": notes, "records": records}


def student_gap_closed(found: dict, task: str, student: str, statistic, bootstrap: int, seed: int) -> dict | None:
    """(fine-tuned - base) / (teacher - base) on the records all three answered, base the better of free and
    guided (as the base ranking takes it), with a paired bootstrap interval; None without a base."""
    got = {name: found["units"].get((task, student, name)) for name in ("student", "teacher", "base", "base-guided")}
    bases = [n for n in ("base", "base-guided") if got[n]]
    if not bases:
        return None
    best = max(bases, key=lambda n: statistic(list(got[n].values())))
    keys = [k for k in got["student"] if k in got["teacher"] and k in got[best]]
    s, t, b = (Evaluation([got[n][k] for k in keys], statistic) for n in ("student", "teacher", best))
    return {"n": len(keys), "base": best, **gap_closed(s, b, t, bootstrap, seed)} if keys else None


def _score(e: dict[str, Evaluation], name: str, draws: dict) -> float | None:
    return e[name].score(draws.get(e[name].draw)) if name in e else None


def fine_tuned(e: dict[str, Evaluation], draws: dict) -> float | None:
    return _score(e, "student", draws)


def base(e: dict[str, Evaluation], draws: dict) -> float | None:
    """The base model's better showing, free or guided: a base model is not judged on formatting alone."""
    found = [v for v in (_score(e, "base", draws), _score(e, "base-guided", draws)) if v is not None]
    return max(found) if found else None


def tunability(e: dict[str, Evaluation], draws: dict) -> float | None:
    f, b = fine_tuned(e, draws), base(e, draws)
    return None if f is None or b is None else f - b


RANKINGS = {"fine-tuned": fine_tuned, "base": base, "tunability": tunability}


def statistics(b: Bakeoff, found: dict) -> dict:
    """Per-task scores and ranks, mean ranks with intervals, the student against the teacher: bakeoff.json."""
    tasks, B, seed = found["tasks"], b.spec.bootstrap, b.spec.seed
    scores = {}
    for task, by_student in tasks.items():
        scores[task] = {}
        for student, e in by_student.items():
            row = {"fine_tuned": fine_tuned(e, {}), "base_plain": _score(e, "base", {}),
                   "base_guided": _score(e, "base-guided", {}), "base": base(e, {}), "tunability": tunability(e, {})}
            t = found["teacher"].get(task, {}).get(student)
            row["teacher"] = t.score() if t else None
            scores[task][student] = {k: None if v is None else round(v, 4) for k, v in row.items()}
    per_task = {name: {task: ranks(task_scores(by_student, scorer, {})) for task, by_student in tasks.items()}
                for name, scorer in RANKINGS.items()}
    ordered = list(tasks.values())
    mean = {name: mean_rank(ordered, scorer, B, seed) for name, scorer in RANKINGS.items()}
    versus = []
    for task, by_student in found["teacher"].items():
        for student, t in by_student.items():
            own = tasks[task].get(student, {}).get("student")  # its fine-tuned evaluation, where it has one
            if own is None:
                continue
            se, te = found["exact"][(task, student, "student")], found["exact"][(task, student, "teacher")]
            both, b_, c_ = discordant(se, te)
            versus.append({"task": task, "student": student, "n": len(both),
                           "student_exact": round(sum(se[k] for k in both) / len(both), 4) if both else None,
                           "teacher_exact": round(sum(te[k] for k in both) / len(both), 4) if both else None,
                           "b_student_only": b_, "c_teacher_only": c_, "p_mcnemar": round(mcnemar(b_, c_), 4),
                           "metric_difference": paired_difference(own, t, B, seed),
                           "gap_closed": student_gap_closed(found, task, student, t.statistic, B, seed)})
    return {"scores": scores, "ranks": per_task, "mean_rank": mean, "student_vs_teacher": versus}
