"""The evaluation roles, each declared once: which model it evaluates, with which prompt and backend, whether
guided decoding applies, how the report describes it, the stage that makes it, when it does not apply, and its
traits (trained in this run, served at an endpoint, the rule baseline, the model predict and export default to).
The stages, the report's rows and their order, the bake-off's evaluations and the CLI's choices are read from
ROLES; what identifies an evaluation, and whether it is still current, is toolkit/run/identity.py's. Code outside
this module asks a role for its traits, never compares its name.

    ROLES["student"].describe              # "fine-tuned student, prompt {prompt}": the recipe's prompt file
    role(ctx, "student")                   # the evaluation to make now: a Role
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.infer.backends import make_backend, vllm_available
from toolkit.io.errors import StageError
from toolkit.run.context import Context
from toolkit.task.fields import not_classes


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
    not_applicable: Callable[[Context], str | None] = lambda ctx: None
    needs: tuple[str, ...] = ()  # the stages its stage reads the outputs of (pipeline.Stage.needs)
    config: tuple[str, ...] = ()  # recipe sections beside identity.EVAL_CONFIG whose change makes its stage stale
    base_limit: bool = False  # the base model's few records (eval.base_limit), else eval.limit
    endpoint: bool = False  # served at the teacher's endpoint, with its key
    training: str | None = None  # the stage that trains its model, a folder of this run (None: not trained here)
    baseline: bool = False  # the recipe's rule baseline, no model
    deployed: bool = False  # the run's fine-tuned student: what predict, serve and export take by default

    @property
    def fine_tuned(self) -> bool:
        """Its model is the recipe's student fine-tuned in this run (the report names the student)."""
        return self.training is not None


def not_all_enum(ctx: Context) -> str | None:
    if not_classes(ctx.recipe.fields):
        return "option likelihood chooses among classes, and not every field is enum"
    return None


def no_head(ctx: Context) -> str | None:
    return None if ctx.recipe.classification_head else "the recipe asks for no classification head"


def no_baseline(ctx: Context) -> str | None:
    return "the recipe names no rule baseline" if ctx.recipe.baseline is None else None


def no_teacher_key(ctx: Context) -> str | None:
    env = ctx.recipe.teacher.api_key_env
    return None if os.environ.get(env) else f"${env} is not set, the teacher is not evaluated"


def no_vllm(ctx: Context) -> str | None:
    return None if vllm_available() else "guided decoding needs vLLM, which is not installed here"


def _student_model(ctx: Context) -> str:
    return ctx.recipe.student.model


def _merged(ctx: Context) -> str:
    return str(ctx.merged_dir)


# Row order in the report: the story of the tutorial, then anything else by name.
ROLES: dict[str, RoleSpec] = {r.name: r for r in (
    RoleSpec("base", "base student, prompt {prompt}", "eval_base", _student_model, "base", None, None,
             config=("student",), base_limit=True),
    RoleSpec("base-guided", "base student, prompt {prompt}, decoding guided to the recipe's JSON schema", None,
             _student_model, "base", "vllm", True, no_vllm, config=("student",), base_limit=True),
    # the base model again, zero-shot, but choosing among the allowed answers: always well-formed, never guided
    RoleSpec("likelihood", "base student, prompt {prompt}, the likeliest allowed answer", "eval_likelihood",
             _student_model, "base", "likelihood", False, not_all_enum, config=("student",)),
    RoleSpec("student", "fine-tuned student, prompt {prompt}", "eval_student", _merged, "student", None, None,
             needs=("merge",), training="train", deployed=True),
    # reads the text alone (the prompt is not shown to it) and answers one of its classes: never guided
    RoleSpec("head", "fine-tuned classification head, the text alone", "eval_head",
             lambda ctx: str(ctx.head_dir / "merged"), "student", "head", False, no_head, needs=("train_head",),
             training="train_head"),
    RoleSpec("teacher", "teacher", "eval_teacher", lambda ctx: ctx.recipe.teacher.model, "teacher", "openai", False,
             no_teacher_key, config=("teacher",), endpoint=True),
    RoleSpec("rules", "baseline, no model", "eval_rules", lambda ctx: ctx.recipe.baseline or "rules", "student",
             "rules", False, no_baseline, needs=("prepare",), config=("baseline",), baseline=True),
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


def engine(recipe, r: Role, run_dir: Path | None = None, online: bool = False):
    """The engine that runs evaluation `r`: built this one way wherever a model answers (evaluation, predict,
    serve, the Ray workers), so each gets the same backend, guided decoding and thinking setting. With the run
    folder, an endpoint's answers are journalled there and a baseline that learns reads its training split;
    `online`: the same model's engine for requests as they come (xtk serve)."""
    run = Path(run_dir) if run_dir is not None else None
    return make_backend(recipe, r.backend, r.model, base_url=r.base_url, api_key_env=r.api_key_env,
                        guided_json=r.guided_json, cache=run / "cache" / "endpoint-answers.jsonl" if run else None,
                        train=run / "data" / "train.jsonl" if run else None, online=online)


def named_model(ctx: Context, model: str, backend: str | None = None, name: str = "") -> Role:
    """A model a user names (an embedded name, a folder, a hub id or a served model name): the student's prompt,
    the recipe's backend and guided decoding."""
    e = ctx.recipe.eval
    return Role("model", model, "student", backend or e.backend, guided_json=e.guided_json, limit=e.limit,
                name=name)
