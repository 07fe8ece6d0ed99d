"""The evaluation roles, each declared once: which model it evaluates, with which prompt and backend, whether
guided decoding applies, what identifies it, how the report describes it, the stage that makes it and when it
does not apply. The stages, the report's rows and their order, the bake-off's evaluations and the CLI's
choices are read from ROLES; `not_current` alone says whether an evaluation still describes this run.

    ROLES["student"].describe              # "fine-tuned student, prompt {prompt}": the recipe's prompt file
    role(ctx, "student")                   # the evaluation to make now: a Role
    not_current(ctx, metrics)              # None, or why these metrics no longer describe what their name says
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.run.context import Context
from toolkit.io.errors import StageError
from toolkit.task.fields import not_classes
from toolkit.run.manifest import config_digest
from toolkit.io.markers import trained_key

EVAL_CONFIG = ("eval", "prompts", "fields", "data.test")  # the recipe sections every evaluation depends on


@dataclass(frozen=True)
class Role:
    """One evaluation to make: a role's settings for this run, or a model a user names (who="model")."""

    who: str
    model: str
    prompt: str
    backend: str
    base_url: str | None = None
    api_key_env: str | None = None
    guided_json: bool = False
    limit: int | None = None
    name: str = ""  # the evaluation's folder name under eval/ (default: who)

    @property
    def folder(self) -> str:
        return self.name or self.who


@dataclass(frozen=True)
class RoleSpec:
    name: str
    describe: str  # as the report's table describes it; {prompt}: the file name of the recipe's prompt it is shown
    stage: str | None  # the stage of `xtk run` that makes it (None: made outside the run's stages)
    model: Callable[[Context], str]
    prompt: str  # which recipe prompt it is shown
    backend: str | None  # None: the recipe's eval.backend
    guided: bool | None  # decode to the recipe's schema: True always, False never, None as eval.guided_json says
    identity: Callable[[Context, Role], dict]  # what it evaluates; the evaluation settings are added to it
    not_applicable: Callable[[Context], str | None] = lambda ctx: None
    needs: tuple[str, ...] = ()  # the stages its stage reads the outputs of (pipeline.Stage.needs)
    config: tuple[str, ...] = ()  # recipe sections beside EVAL_CONFIG whose change makes its stage stale
    base_limit: bool = False  # the base model's few records (eval.base_limit), else eval.limit
    endpoint: bool = False  # served at the teacher's endpoint, with its key
    rescores: str | None = None  # re-scores another role's answers: no inference of its own
    fine_tuned: bool = False  # its model is the recipe's student fine-tuned in this run (the report names the student)


def _base(ctx: Context, r: Role) -> dict:
    s = ctx.recipe.student
    return {"student": s.model, "model_type": s.model_type, "template": s.template}


def _rules(ctx: Context, r: Role) -> dict:
    """The baseline, and for one that learns, the training split it learnt from."""
    from toolkit.run.manifest import file_digest
    from toolkit.task.recipe import load_ref

    ref, train = ctx.recipe.baseline, ctx.data_dir / "train.jsonl"
    if ref and getattr(load_ref(ref, "baseline"), "trained", False) and train.is_file():
        return {"rules": ref, "train_data": file_digest(train)}
    return {"rules": ref}


def not_all_enum(ctx: Context) -> str | None:
    if not_classes(ctx.recipe.fields):
        return "option likelihood chooses among classes, and not every field is enum"
    return None


def no_resolver(ctx: Context) -> str | None:
    return "the recipe names no resolver" if ctx.recipe.resolver is None else None


def no_head(ctx: Context) -> str | None:
    return None if ctx.recipe.classification_head else "the recipe asks for no classification head"


def no_baseline(ctx: Context) -> str | None:
    return "the recipe names no rule baseline" if ctx.recipe.baseline is None else None


def no_teacher_key(ctx: Context) -> str | None:
    env = ctx.recipe.teacher.api_key_env
    return None if os.environ.get(env) else f"${env} is not set, the teacher is not evaluated"


def no_vllm(ctx: Context) -> str | None:
    from toolkit.infer.backends import vllm_available

    return None if vllm_available() else "guided decoding needs vLLM, which is not installed here"


def _student_model(ctx: Context) -> str:
    return ctx.recipe.student.model


def _merged(ctx: Context) -> str:
    return str(ctx.merged_dir)


# Row order in the report: the story of the tutorial, then anything else by name.
ROLES: dict[str, RoleSpec] = {r.name: r for r in (
    RoleSpec("base", "base student, prompt {prompt}", "eval_base", _student_model, "base", None, None, _base,
             config=("student",), base_limit=True),
    RoleSpec("base-guided", "base student, prompt {prompt}, decoding guided to the recipe's JSON schema", None,
             _student_model, "base", "vllm", True, _base, no_vllm, config=("student",), base_limit=True),
    # the base model again, zero-shot, but choosing among the allowed answers: always well-formed, never guided
    RoleSpec("likelihood", "base student, prompt {prompt}, the likeliest allowed answer", "eval_likelihood",
             _student_model, "base", "likelihood", False, _base, not_all_enum, config=("student",)),
    RoleSpec("student", "fine-tuned student, prompt {prompt}", "eval_student", _merged, "student", None, None,
             lambda ctx, r: {"train_key": trained_key(ctx.merged_dir)}, needs=("merge",), fine_tuned=True),
    RoleSpec("resolved", "fine-tuned student + the recipe's resolver, not the student alone", "eval_resolved",
             _merged, "student", None, None, lambda ctx, r: {"resolver": ctx.recipe.resolver}, no_resolver,
             needs=("eval_student",), config=("resolver",), rescores="student", fine_tuned=True),
    # reads the text alone (the prompt is not shown to it) and answers one of its classes: never guided
    RoleSpec("head", "fine-tuned classification head, the text alone", "eval_head",
             lambda ctx: str(ctx.head_dir / "merged"), "student", "head", False,
             lambda ctx, r: {"train_key": trained_key(ctx.head_dir / "merged")}, no_head, needs=("train_head",),
             fine_tuned=True),
    RoleSpec("teacher", "teacher", "eval_teacher", lambda ctx: ctx.recipe.teacher.model, "teacher", "openai", False,
             lambda ctx, r: {"base_url": r.base_url, "model": r.model}, no_teacher_key, config=("teacher",),
             endpoint=True),
    RoleSpec("rules", "baseline, no model", "eval_rules", lambda ctx: ctx.recipe.baseline or "rules", "student",
             "rules", False, _rules, no_baseline, needs=("prepare",), config=("baseline",)),
)}


def role(ctx: Context, who: str) -> Role:
    """The evaluation a role makes in this run."""
    spec = ROLES.get(who)
    if spec is None:
        raise StageError(f"no role {who!r}; roles: {', '.join(ROLES)}")
    e, t = ctx.recipe.eval, ctx.recipe.teacher
    limit = e.limit
    if spec.base_limit and e.base_limit:
        limit = min(x for x in (e.limit, e.base_limit) if x)
    return Role(who, spec.model(ctx), spec.prompt, spec.backend or e.backend,
                t.base_url if spec.endpoint else None, t.api_key_env if spec.endpoint else None,
                e.guided_json if spec.guided is None else spec.guided, limit)


def engine(recipe, r: Role, run_dir: Path | None = None):
    """The engine that runs evaluation `r`: built this one way wherever a model answers (evaluation, predict,
    serve, the Ray workers), so each gets the same backend, guided decoding and thinking setting. With the run
    folder, an endpoint's answers are journalled there and a baseline that learns reads its training split."""
    from toolkit.infer.backends import make_backend

    run = Path(run_dir) if run_dir is not None else None
    return make_backend(recipe, r.backend, r.model, base_url=r.base_url, api_key_env=r.api_key_env,
                        guided_json=r.guided_json, cache=run / "cache" / "endpoint-answers.jsonl" if run else None,
                        train=run / "data" / "train.jsonl" if run else None)


def named_model(ctx: Context, model: str, backend: str | None = None, name: str = "") -> Role:
    """A model a user names (an embedded name, a folder, a hub id or a served model name): the student's prompt,
    the recipe's backend and guided decoding."""
    e = ctx.recipe.eval
    return Role("model", model, "student", backend or e.backend, guided_json=e.guided_json, limit=e.limit,
                name=name)


def identity(ctx: Context, r: Role) -> dict:
    """What an evaluation evaluated, under which evaluation settings: kept in its metrics.json."""
    spec = ROLES.get(r.who)
    if spec and spec.rescores:
        return {**identity(ctx, role(ctx, spec.rescores)), **spec.identity(ctx, r)}
    if spec:
        model = spec.identity(ctx, r)
    else:
        model = {"model": r.model, "base_url": r.base_url}
        if (key := trained_key(r.model)) is not None:  # a model folder xtk merged: which training made it
            model["train_key"] = key
    return {**model, "prompt": r.prompt, "backend": None if spec else r.backend,
            "eval_config": config_digest(ctx.recipe, EVAL_CONFIG)}


def read_metrics(folder: Path) -> dict | None:
    path = folder / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def not_current(ctx: Context, metrics: dict | None, r: Role | None = None) -> str | None:
    """Whether an evaluation (its metrics.json) still describes what its name says in this run: None, or why not.
    `r` is the evaluation it should be; by default the role its metrics name, or for a model a user named, that
    model (and for a folder xtk merged, its training now) under the run's evaluation settings now."""
    if metrics is None:
        return "not made yet"
    was = metrics.get("identity") or {}
    if r is not None:
        now = identity(ctx, r)
    elif metrics.get("role") in ROLES:
        now = identity(ctx, role(ctx, metrics["role"]))
    else:
        now = _as_now(ctx, was)
    if was != now:
        changed = sorted(k for k in {*was, *now} if was.get(k) != now.get(k))
        return f"made with other settings ({', '.join(changed)} changed since)"
    return None


def _as_now(ctx: Context, was: dict) -> dict:
    """The identity an evaluation of a model a user named would have now: the same model under the run's
    evaluation settings now, for a folder xtk merged its training now, and for a file exported from a model
    (xtk export) that model as it is now: the run's student (no "model" in its identity) or a named one."""
    now = {**was, "eval_config": config_digest(ctx.recipe, EVAL_CONFIG)}
    if "train_key" in was:
        now["train_key"] = trained_key(was.get("model") or "")
    if isinstance(source := was.get("source"), dict):
        now["source"] = _as_now(ctx, source) if "model" in source else identity(ctx, role(ctx, "student"))
    return now


def evaluations_current(ctx: Context, r: Role, tests: list[str]) -> str | None:
    """None when the evaluation `r` of every test file is in the run folder and current, else why not."""
    for test in tests:
        folder = ctx.run_dir / "eval" / f"{r.folder}-{Path(test).stem}"
        metrics = read_metrics(folder)
        if metrics is None:
            return f"no {folder.name}"
        why = not_current(ctx, metrics, r)
        if why:
            return f"{folder.name}: {why}"
    return None
