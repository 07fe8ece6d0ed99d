"""bakeoff: which student to distil into? Every (student, recipe) pair of a spec is an ordinary xtk run, ranked
across tasks as in distil labs' study of 12 students x 8 tasks.

    xtk bakeoff bakeoffs/cpu.yaml            # runs/bakeoff/cpu/: bakeoff.md, bakeoff.json, bakeoff.png

A pair is `xtk run RECIPE --profile P OVERRIDES student.model=STUDENT` in `<out>/runs/<task>/<student>/`, plus
the base model once more with JSON-schema guided decoding (a base model cannot be judged on formatting alone).
Finished stages are skipped by the run itself, so a finished pair trains nothing again and an interrupted
bake-off resumes where it stopped. Pairs run one after another, or one per GPU side by side where several are
visible. Each task is scored by one metric (task_metric), and the students are ranked per task on the fine-tuned
score, the base score and tunability (fine-tuned minus base), with mean ranks over tasks and their 95%
intervals (toolkit/maths/ranking.py), and each fine-tuned student is tested against the teacher where one was
evaluated.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from toolkit.flow.check import check_files
from toolkit.io.errors import StageError
from toolkit.task.fields import Headline
from toolkit.io.jsonl import open_append, read_jsonl, save_figure, write_json, write_text
from toolkit.maths.ranking import (Evaluation, discordant, gap_closed, mcnemar, mean_rank, paired_difference, ranks,
                             task_scores)
from toolkit.io.yamlfile import describe, key_lines, read_yaml_mapping
from toolkit.task.recipe import Recipe, load_recipe
from toolkit.task.scoring import headline
from toolkit.task.schema import Strict
from toolkit.io.errors import RecipeError
from toolkit.run.roles import ROLES
from toolkit.io.trust import Consent


class SpecError(RecipeError):
    """A bake-off spec that cannot be used; the message names the spec file, the key and its line."""


class StudentEntry(Strict):
    model: str  # an embedded name (`xtk models list`), a model folder, or a hub id
    name: str | None = None  # as the tables show it (default: model as written)
    # ms-swift's model type and template; default: the embedded model's, or the recipe's own where the student is
    # the recipe's student, else what ms-swift picks for the model.
    model_type: str | None = None
    template: str | None = None
    trust_remote_code: bool = False


class RecipeEntry(Strict):
    recipe: str  # a recipe file, relative to the project root
    name: str | None = None  # the task's name (default: the recipe's name)
    profile: str | None = None
    overrides: list[str] = Field(default_factory=list)


class Spec(Strict):
    students: list[StudentEntry] = Field(min_length=1)
    recipes: list[RecipeEntry] = Field(min_length=1)
    bootstrap: int = Field(default=1000, gt=0)  # samples behind every interval
    seed: int = 0

    @field_validator("students", mode="before")
    @classmethod
    def _names_alone(cls, students: Any) -> Any:
        """A student may be given by its model alone: `- gemma3-270m`."""
        return [{"model": s} if isinstance(s, str) else s for s in students] if isinstance(students, list) else students


@dataclass(frozen=True)
class Student:
    name: str
    model: str  # as handed to the recipe: an embedded name, an absolute folder, a hub id


@dataclass(frozen=True)
class Pair:
    task: str
    student: Student
    recipe: Recipe
    run_dir: Path


@dataclass
class Bakeoff:
    spec_path: Path
    spec: Spec
    out: Path
    students: list[Student]
    tasks: list[str]
    pairs: list[Pair]  # task-major: every student of the first task, then of the next
    entries: dict[str, RecipeEntry] = field(default_factory=dict)
    consent: Consent = Consent()  # the command line's, handed on to every pair's process

    def pair(self, task: str, student: str) -> Pair:
        return next(p for p in self.pairs if p.task == task and p.student.name == student)


# --- the spec --------------------------------------------------------------------------------------------------

def _where(path: Path, loc: tuple, lines: dict[tuple, int]) -> str:
    """`spec.yaml:7: key 'recipes.0.recipe'`, the line of the key or of the nearest section that holds it."""
    dotted = ".".join(str(p) for p in loc)
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return f"{path}:{lines[loc[:n]]}: key '{dotted}'"
    return f"{path}: key '{dotted}'"


def _student_model(entry: StudentEntry, root: Path, where: str) -> str:
    """The student's model as a recipe takes it; a folder becomes absolute (relative to the project root)."""
    from toolkit.model.models import EMBEDDED

    if entry.model in EMBEDDED:
        return entry.model
    path = Path(entry.model).expanduser()
    path = path if path.is_absolute() else root / path
    if entry.model.startswith((".", "/", "~")) or path.exists():
        if not path.is_dir():
            raise SpecError(f"{where}: {path}: no such model folder")
        return str(path.resolve())
    if entry.model.count("/") != 1:
        raise SpecError(f"{where}: {entry.model!r} is neither an embedded model ({', '.join(EMBEDDED)}), a folder, "
                        "nor a hub id like Qwen/Qwen3-0.6B")
    return entry.model


def student_overrides(entry: StudentEntry, model: str, recipe: Recipe) -> list[str]:
    """`student.*=...` for a pair. Type and template: the spec's, else the embedded model's, else the recipe's when
    it is the recipe's own student; else none, for ms-swift to pick (never another model's)."""
    from toolkit.model.models import EMBEDDED

    own = model == recipe.student.model
    model_type = entry.model_type or (EMBEDDED[model].model_type if model in EMBEDDED else
                                      recipe.student.model_type if own else None)
    template = entry.template or (EMBEDDED[model].template if model in EMBEDDED else
                                  recipe.student.template if own else None)
    trust = entry.trust_remote_code or (own and recipe.student.trust_remote_code)
    return [f"student.model={json.dumps(model)}", f"student.model_type={json.dumps(model_type)}",
            f"student.template={json.dumps(template)}", f"student.trust_remote_code={json.dumps(trust)}"]


def load_spec(path: str | Path, out: str | Path | None = None, consent: Consent | None = None) -> Bakeoff:
    """Read and check a spec: every recipe loads with its profile and overrides for every student, before anything
    runs, under the command line's `consent` (a spec grants none itself). Errors name the spec file, the key and
    its line."""
    from toolkit.run.manifest import slug

    path = Path(path)
    text, raw = read_yaml_mapping(path, "bake-off spec", "a mapping with students and recipes", SpecError)
    lines = key_lines(text)
    try:
        spec = Spec(**raw)
    except ValidationError as exc:
        raise SpecError("invalid bake-off spec\n  " + "\n  ".join(
            f"{_where(path, tuple(e['loc']), lines)}: {describe(e)}" for e in exc.errors())) from None
    # Paths in a spec are relative to the project root: the parent of bakeoffs/.
    folder = path.resolve().parent
    root = folder.parent if folder.name == "bakeoffs" else folder
    out = Path(out) if out else Path("runs") / "bakeoff" / path.stem

    consent = consent or Consent()
    students = []
    for i, s in enumerate(spec.students):
        if s.trust_remote_code and not consent.remote_code:
            raise SpecError(f"{_where(path, ('students', i, 'trust_remote_code'), lines)}: a spec cannot grant trust "
                            "itself: model code runs only with --trust-remote-code on the command line (only for "
                            "model folders you trust)")
        model = _student_model(s, root, _where(path, ("students", i, "model"), lines))
        students.append(Student(s.name or s.model, model))
    _unique(path, lines, "students", [s.name for s in students], "name")
    _unique(path, lines, "students", [slug(s.model) for s in students], "model")

    pairs, tasks, entries = [], [], {}
    for i, entry in enumerate(spec.recipes):
        where = _where(path, ("recipes", i), lines)
        recipe_path = Path(entry.recipe).expanduser()
        recipe_path = recipe_path if recipe_path.is_absolute() else root / recipe_path
        if not recipe_path.is_file():
            raise SpecError(f"{_where(path, ('recipes', i, 'recipe'), lines)}: {recipe_path}: no such recipe file")
        try:
            own = load_recipe(recipe_path, entry.profile, entry.overrides, consent)
            check_files(own)
        except RecipeError as exc:
            raise SpecError(f"{where}: {exc}") from None
        task = entry.name or own.name
        tasks.append(task)
        entries[task] = entry
        for j, s in enumerate(spec.students):
            student = students[j]
            try:
                # Free decoding unless the spec asks: `base` is the free answer, `base-guided` the guided one,
                # and every student is scored the same way whatever its recipe's profile decodes with.
                recipe = load_recipe(recipe_path, entry.profile, ["eval.guided_json=false", *entry.overrides,
                                                                  *student_overrides(s, student.model, own)], consent)
            except RecipeError as exc:
                raise SpecError(f"{where}, with student {student.name}: {exc}") from None
            pairs.append(Pair(task, student, recipe, out / "runs" / slug(task) / slug(student.model)))
    _unique(path, lines, "recipes", [slug(t) for t in tasks], "name")
    return Bakeoff(path, spec, out, students, tasks, pairs, entries, consent)


def _unique(path: Path, lines: dict, section: str, values: list[str], key: str) -> None:
    seen: dict[str, int] = {}
    for i, v in enumerate(values):
        if v in seen:
            raise SpecError(f"{_where(path, (section, i), lines)}: {section} {seen[v]} and {i} are both {v!r}: give "
                            f"each a distinct {key}")
        seen[v] = i


# --- one pair ----------------------------------------------------------------------------------------------------

GUIDED = "eval_base_guided"  # the manifest entry of the guided base evaluation


def eval_base_guided(ctx) -> None:
    """The base model with the detailed prompt again, decoding constrained to the recipe's JSON schema (vLLM), as
    eval/base-guided-<test>/ (the role base-guided). Skipped while every one of them is current."""
    from toolkit.flow.pipeline import console, evaluate_model, skip
    from toolkit.run.identity import evaluations_current
    from toolkit.run.roles import ROLES, role

    guided = role(ctx, "base-guided")
    if evaluations_current(ctx, guided, ctx.recipe.data.test) is None:
        console.print(f"[dim]{GUIDED}: complete, skipped[/]")
        return
    console.print(f"[bold cyan]stage {GUIDED}[/]")  # as `xtk run` announces its stages (and the bar shows them)
    why = ROLES["base-guided"].not_applicable(ctx)
    if why:
        skip(ctx, GUIDED, why)
        return
    ctx.manifest.start(GUIDED)
    ctx.manifest.done(GUIDED, evaluate_model(ctx, guided))


SHARED = ("data/labelled.jsonl", "data/rejects.jsonl", "cache/endpoint-answers.jsonl")


def share_teacher_answers(first: Path, run_dir: Path) -> None:
    """The teacher's labels and answers from the task's first pair: they do not depend on the student, and each
    was paid for (both files are journals keyed by what was asked, so nothing is asked twice)."""
    for rel in SHARED:
        if (first / rel).is_file() and not (run_dir / rel).exists():
            (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(first / rel, run_dir / rel)


def teacher_reachable(recipe: Recipe) -> bool:
    return bool(os.environ.get(recipe.teacher.api_key_env))


def run_pair(b: Bakeoff, index: int) -> list[str]:
    """One pair, in this process: `xtk run`'s stages (finished ones skipped) with the guided base evaluation
    after the plain one (the data stage may first have to build the test files). Returns the stages that ran."""
    from toolkit.flow.pipeline import open_run, run_all

    if not 0 <= index < len(b.pairs):
        raise StageError(f"--pair {index}: the spec has pairs 0 to {len(b.pairs) - 1}")
    pair = b.pairs[index]
    first = b.pairs[b.tasks.index(pair.task) * len(b.students)]
    with open_run(pair.recipe, pair.run_dir) as ctx:
        if first is not pair and teacher_reachable(pair.recipe):
            share_teacher_answers(first.run_dir, ctx.run_dir)
        return run_all(ctx, after={"eval_base": eval_base_guided})


# --- all pairs ---------------------------------------------------------------------------------------------------

def gpu_slots() -> list[str | None]:
    """One slot per visible GPU (its CUDA_VISIBLE_DEVICES value) where there are several, else one slot."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n <= 1:
        return [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (visible.split(",") if visible else [str(i) for i in range(n)])[:n]


def _last_stage(log: Path) -> str:
    import re

    with log.open("rb") as fh:
        fh.seek(max(0, log.stat().st_size - 65536))
        found = re.findall(r"^stage (\w+)$", fh.read().decode("utf-8", "replace"), re.M)
    return found[-1] if found else "starting"


def run_pairs(b: Bakeoff) -> list[tuple[Pair, Path]]:
    """Every pair in a child process (`xtk bakeoff SPEC --pair N`), its output in <run>/bakeoff.log, one per slot
    at a time; where a teacher is reachable, a task's other pairs wait for its first one, whose teacher labels
    and answers they reuse. Returns the pairs that failed, with their logs."""
    from toolkit.model.models import EMBEDDED, pull_embedded
    from toolkit.io.progress import Bar

    for s in b.students:  # once, before children that would each build it at the same time
        if s.model in EMBEDDED:
            pull_embedded(s.model)
    slots = gpu_slots()
    first = {i: b.tasks.index(p.task) * len(b.students) for i, p in enumerate(b.pairs)}
    waits = {i: first[i] for i, p in enumerate(b.pairs) if first[i] != i and teacher_reachable(p.recipe)}
    pending, running, finished, failed = list(range(len(b.pairs))), {}, set(), []
    try:
        with Bar("bake-off", total=len(b.pairs)) as bar:
            while pending or running:
                for i, (proc, slot, log, fh) in list(running.items()):
                    if proc.poll() is not None:
                        fh.close()
                        del running[i]
                        finished.add(i)
                        if proc.returncode != 0:
                            failed.append((b.pairs[i], log))
                free = [s for s in slots if s not in {r[1] for r in running.values()}]
                for slot in free:
                    ready = next((i for i in pending if waits.get(i, i) == i or waits[i] in finished), None)
                    if ready is None:
                        break
                    pending.remove(ready)
                    running[ready] = _start(b, ready, slot)
                bar.update(len(finished), note="; ".join(
                    f"{b.pairs[i].task} x {b.pairs[i].student.name}: {_last_stage(r[2])}" for i, r in running.items()))
                time.sleep(1)
    finally:
        for proc, _, _, fh in running.values():  # interrupted: stop the children this started
            _stop(proc)
            fh.close()
    return failed


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the child itself once it exits, so that only live processes count
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen, grace: tuple[float, float, float] = (60, 10, 5)) -> None:
    """Stop a child and everything it started (vLLM's engine processes, ms-swift's trainers: its process group).
    SIGINT first, on which a child closes its engine as on Ctrl-C; a vLLM engine still starting up ignores SIGINT
    and SIGTERM alike (seen here), so what is left after the grace periods is killed."""
    for sig, seconds in zip((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), grace):
        if not _group_alive(proc):
            break
        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.5)
    proc.wait()


def _start(b: Bakeoff, index: int, slot: str | None):
    pair = b.pairs[index]
    pair.run_dir.mkdir(parents=True, exist_ok=True)
    log = pair.run_dir / "bakeoff.log"
    fh = open_append(log)
    fh.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} pair {index}: {pair.task} x {pair.student.name}\n")
    fh.flush()
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": slot} if slot is not None else {})}
    argv = [sys.executable, "-m", "toolkit", "bakeoff", str(b.spec_path), "--out", str(b.out), "--pair", str(index),
            *b.consent.argv()]
    # a process group of its own, so that an interruption stops all of it (_stop) and nothing is left running
    proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, slot, log, fh


def run_bakeoff(b: Bakeoff) -> list[Path]:
    """Run (or resume) every pair, then rank: bakeoff.json, bakeoff.md and bakeoff.png in the bake-off folder."""
    from toolkit.io.locks import folder_lock
    from toolkit.io.runner import tail

    with folder_lock(b.out, "bakeoff"):
        failed = run_pairs(b)
        if failed:
            raise StageError("pairs that failed (re-run the same command to resume; finished pairs are reused):\n"
                             + "\n".join(f"  {p.task} x {p.student.name}: {log}\n{tail(log, 25)}" for p, log in failed))
        return write_outputs(b, collect(b))


# --- scores ------------------------------------------------------------------------------------------------------

def task_metric(recipe: Recipe) -> Headline:
    """The figure a task is judged by: the headline its field types call for (toolkit/task/fields.py)."""
    return headline(recipe.fields, recipe.choices)


# the roles (toolkit/run/roles.py) a bake-off compares -> the records each was tested on: a base model may be tested
# on fewer (eval.base_limit)
EVALUATIONS = {name: "base" if ROLES[name].base_limit else "tested" for name in ("student", "teacher", "base",
                                                                                   "base-guided")}


def read_predictions(pair: Pair, name: str) -> tuple[dict[tuple[str, str], dict] | None, str | None]:
    """{(test file, record id): prediction row} of one evaluation over every test file of the recipe, or None and
    why: missing, or made for another model or configuration than the run's now."""
    from toolkit.run.manifest import Manifest
    from toolkit.flow.pipeline import Context
    from toolkit.run.identity import evaluations_current
    from toolkit.run.roles import role

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


# --- outputs -----------------------------------------------------------------------------------------------------

def write_outputs(b: Bakeoff, found: dict) -> list[Path]:
    stats = statistics(b, found)
    result = {
        "spec": str(b.spec_path), "bootstrap": b.spec.bootstrap, "seed": b.spec.seed,
        "students": [{"name": s.name, "model": s.model} for s in b.students],
        "tasks": [{"name": t, "recipe": b.entries[t].recipe, "profile": b.entries[t].profile,
                   "overrides": b.entries[t].overrides,
                   "metric": task_metric(b.pair(t, b.students[0].name).recipe).name,
                   "records": found["records"][t]} for t in b.tasks],
        **stats,
        "missing": found["notes"],
        # relative to the folder bakeoff.json is in, so that the folder can move (or be committed) whole
        "runs": {t: {s.name: b.pair(t, s.name).run_dir.relative_to(b.out).as_posix() for s in b.students}
                 for t in b.tasks},
    }
    png = plot_mean_ranks(stats["mean_rank"], [s.name for s in b.students], b.out / "bakeoff.png")
    md = write_text(b.out / "bakeoff.md", markdown(b, result))
    return [md, write_json(b.out / "bakeoff.json", result), png]


def gap_cell(g: dict | None) -> str:
    from toolkit.evaluate.teacher import reading

    if not g or g["value"] is None:
        return "—"
    return f"{g['value']:.2f} [{g['ci95'][0]:.2f}–{g['ci95'][1]:.2f}] {reading(g['value'])}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _rank(r: dict) -> str:
    return f"{r['value']:.2f} [{r['ci95'][0]:.2f}–{r['ci95'][1]:.2f}]"


def _ranked(r: dict, task: str, student: str, key: str, ranking: str) -> str:
    """A score in % with its rank in brackets."""
    rank = r["ranks"][ranking][task].get(student)
    return _pct(r["scores"][task][student][key]) + (f" ({rank:g})" if rank is not None else "")


def markdown(b: Bakeoff, r: dict) -> str:
    students = [s.name for s in b.students]
    lines = [f"# Bake-off: {b.spec_path.stem}", "",
             (f"{len(students)} students x {len(b.tasks)} tasks from `{b.spec_path}`. Each task is scored by one "
              "metric, the headline its field types call for, on the records of its test files together:"), "",
             "| task | recipe | profile | metric | records (fine-tuned, teacher) | records (base) |",
             "|---|---|---|---|---|---|"]
    for t in r["tasks"]:
        lines.append(f"| {t['name']} | `{t['recipe']}` | {t['profile'] or '—'} | {t['metric']} | "
                     f"{t['records'].get('tested', '—')} | {t['records'].get('base', '—')} |")
    lines += ["", ("Rankings: **fine-tuned** (the short prompt, after training), **base** (the detailed prompt, the "
                   "better of free and JSON-schema guided decoding: a base model is not judged on formatting alone) "
                   "and **tunability** (fine-tuned minus base). Rank 1 is the highest score; ties share the mean of "
                   f"their ranks. Intervals are 95%, from {b.spec.bootstrap} bootstrap samples that draw the tasks "
                   "and, within each, the test records with replacement (the same records for every student)."), "",
              "## Mean rank", "", "| student | " + " | ".join(RANKINGS) + " |", "|---" * (len(RANKINGS) + 1) + "|"]
    order = sorted(students, key=lambda s: r["mean_rank"]["fine-tuned"].get(s, {}).get("value", float("inf")))
    for s in order:
        lines.append(f"| {s} | " + " | ".join(_rank(r["mean_rank"][k][s]) if s in r["mean_rank"][k] else "—"
                                            for k in RANKINGS) + " |")
    lines += ["", "![mean rank](bakeoff.png)", "", "## Per task", "",
              "Scores in % of the task's metric; ranks in brackets.", "",
              "| task | student | fine-tuned | base, free | base, guided | base | tunability | teacher |",
              "|---|---|---|---|---|---|---|---|"]
    for t in b.tasks:
        for s in students:
            sc = r["scores"].get(t, {}).get(s)
            if sc is None:
                lines.append(f"| {t} | {s} | — | — | — | — | — | — |")
                continue
            lines.append(f"| {t} | {s} | {_ranked(r, t, s, 'fine_tuned', 'fine-tuned')} | {_pct(sc['base_plain'])} | "
                         f"{_pct(sc['base_guided'])} | {_ranked(r, t, s, 'base', 'base')} | "
                         f"{_ranked(r, t, s, 'tunability', 'tunability')} | {_pct(sc['teacher'])} |")
    lines += ["", "## Fine-tuned student against the teacher", ""]
    if r["student_vs_teacher"]:
        lines += [("McNemar's exact test on whole-record exact match over the records both answered (b: only the "
                   "student right, c: only the teacher right), and the difference in the task's metric (student "
                   "minus teacher) with a paired bootstrap 95% interval; the gap closed, (fine-tuned − base) / "
                   "(teacher − base) on the task's metric over the records all three answered, with its paired "
                   "bootstrap interval and distil labs' reading (≥ 0.8 deploy, 0.4–0.8 iterate, below "
                   "rethink)."), "",
                  ("| task | student | n | student exact % | teacher exact % | b | c | McNemar p | "
                   "metric difference % | gap closed |"),
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for v in r["student_vs_teacher"]:
            d = v["metric_difference"]
            lines.append(f"| {v['task']} | {v['student']} | {v['n']} | {_pct(v['student_exact'])} | "
                         f"{_pct(v['teacher_exact'])} | {v['b_student_only']} | {v['c_teacher_only']} | "
                         f"{v['p_mcnemar']:.4f} | {100 * d['value']:+.1f} [{100 * d['ci95'][0]:+.1f}, "
                         f"{100 * d['ci95'][1]:+.1f}] | {gap_cell(v['gap_closed'])} |")
    else:
        keys = sorted({b.pair(t, students[0]).recipe.teacher.api_key_env for t in b.tasks})
        lines.append(f"No teacher was evaluated (no key in ${', $'.join(keys)}).")
    if r["missing"]:
        lines += ["", "Missing evaluations (left out of the rankings): " + "; ".join(r["missing"]) + "."]
    lines += ["", "## Runs", "", "Each pair is an ordinary run with its own `report.md`, in this folder:", "",
              "| task | " + " | ".join(students) + " |", "|---" * (len(students) + 1) + "|"]
    for t in b.tasks:
        lines.append(f"| {t} | " + " | ".join(f"`{r['runs'][t][s]}`" for s in students) + " |")
    return "\n".join(lines) + "\n"


def plot_mean_ranks(mean: dict[str, dict], students: list[str], out_png: Path) -> Path:
    """One panel per ranking: each student's mean rank with its 95% interval (rank 1 best, at the left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(students, key=lambda s: mean["fine-tuned"].get(s, {}).get("value", float("inf")))
    fig, axes = plt.subplots(1, len(mean), figsize=(4 * len(mean), 1.2 + 0.45 * len(students)), dpi=120,
                             sharey=True, squeeze=False)
    for ax, (name, by_student) in zip(axes[0], mean.items()):
        ys = [i for i, s in enumerate(order) if s in by_student]
        values = [by_student[order[i]]["value"] for i in ys]
        lo = [v - by_student[order[i]]["ci95"][0] for i, v in zip(ys, values)]
        hi = [by_student[order[i]]["ci95"][1] - v for i, v in zip(ys, values)]
        ax.errorbar(values, ys, xerr=[lo, hi], fmt="o", capsize=3)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(0.5, len(students) + 0.5)
        ax.set_xticks(range(1, len(students) + 1))
        ax.set_xlabel("mean rank (1 = best), 95% interval", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(order)), order, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out_png)
