"""The stages of a run and the order `xtk run` chains them in. Each stage reads and writes files in one run
folder and records itself in the manifest; a stage whose recorded outputs are intact is skipped."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from toolkit.errors import StageError
from toolkit.manifest import Manifest
from toolkit.recipe import Recipe

console = Console(stderr=True)


@dataclass
class Context:
    recipe: Recipe
    run_dir: Path
    manifest: Manifest
    labelled: Path | None = None  # `xtk prepare --labelled FILE`: records from elsewhere than the data stage
    fresh_train: bool = False  # `xtk run --from train` (or earlier): train afresh, even under the same settings
    fresh_head: bool = False  # the same for the classification head

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    @property
    def train_dir(self) -> Path:
        return self.run_dir / "train"

    @property
    def merged_dir(self) -> Path:
        return self.run_dir / "merged"

    @property
    def head_dir(self) -> Path:
        """The classification head's data/, train/ and merged/."""
        return self.run_dir / "head"

    def student(self):
        from toolkit.models import resolve_model

        s = self.recipe.student
        return resolve_model(s.model, s.model_type, s.template, s.trust_remote_code)


@contextmanager
def open_run(recipe: Recipe, run_dir: str | Path) -> Iterator[Context]:
    """The run folder, held for as long as a command writes into it: one writer per run folder."""
    from toolkit.locks import folder_lock

    with folder_lock(Path(run_dir), "run"):
        ctx = Context(recipe, Path(run_dir), Manifest(run_dir))
        ctx.manifest.set_recipe(recipe)
        yield ctx


# --- stages ------------------------------------------------------------------------------------------------

def stage_data(ctx: Context) -> list[Path]:
    """data/labelled.jsonl from the first source that applies: the recipe's data.labelled (your own labels),
    the teacher's labels of data.pool when its key is set, data.pool_gold (the generator's labels). Data files
    that are missing are built first by the recipe's data.generator, where it has one."""
    from toolkit.jsonl import write_jsonl
    from toolkit.prepare import gold_records, read_records

    d, t = ctx.recipe.data, ctx.recipe.teacher
    missing = [name for name in (d.labelled, d.pool, d.pool_gold, *d.test)
               if name and not ctx.recipe.path(name).exists()]
    if d.generator and missing:  # built on this machine (a data set's licence may keep it out of git)
        from toolkit.datagen import write_data

        console.print(f"data: {', '.join(missing)} missing: building them with {d.generator}")
        write_data(ctx.recipe)
    out = ctx.data_dir / "labelled.jsonl"
    if d.labelled:
        write_jsonl(out, read_records(ctx.recipe, ctx.recipe.path(d.labelled)))
        ctx.manifest.record("data", source=f"your labelled data ({d.labelled})")
        return [out]
    if d.pool and os.environ.get(t.api_key_env):
        from toolkit.label import run_label

        summary = run_label(ctx.recipe, ctx.recipe.path(d.pool), ctx.data_dir)
        ctx.manifest.record("data", source=f"teacher {t.model}", summary=summary)
        return [out, ctx.data_dir / "rejects.jsonl"]
    if not d.pool_gold:
        raise StageError(f"no training labels: set ${t.api_key_env} for the teacher to label {d.pool}, or name "
                         "your labelled JSONL as data.labelled in the recipe")
    write_jsonl(out, gold_records(ctx.recipe))
    ctx.manifest.record("data", source=f"generator gold labels (no teacher key in ${t.api_key_env})")
    return [out]


def stage_prepare(ctx: Context) -> list[Path]:
    from toolkit.prepare import read_records, run_prepare

    labelled = ctx.labelled or ctx.data_dir / "labelled.jsonl"
    if not labelled.is_file() and ctx.labelled is None:
        stage_data(ctx)
    records = read_records(ctx.recipe, labelled)
    stats = run_prepare(ctx.recipe, records, ctx.data_dir, ctx.student().ref)
    ctx.manifest.record("prepare", stats=stats)
    console.print(f"prepare: {stats['train']} train / {stats['val']} val rows, dropped {stats['dropped']}")
    return [ctx.data_dir / n for n in ("train.jsonl", "val.jsonl", "stats.json")]


def current_train_key(ctx: Context) -> str:
    from toolkit.train import train_key

    val = ctx.data_dir / "val.jsonl"
    return train_key(ctx.recipe, ctx.student(), ctx.data_dir / "train.jsonl",
                     val if val.is_file() and val.stat().st_size > 0 else None)


def stage_train(ctx: Context) -> list[Path]:
    from toolkit.losschart import plot_loss
    from toolkit.manifest import versions
    from toolkit.train import read_log, run_train

    if not (ctx.data_dir / "train.jsonl").is_file():
        stage_prepare(ctx)
    result = run_train(ctx.recipe, ctx.student(), ctx.data_dir, ctx.train_dir, fresh=ctx.fresh_train)
    ctx.fresh_train = False
    verdict = plot_loss(read_log(ctx.train_dir), ctx.run_dir / "loss.png")
    info = {"checkpoint": str(result.checkpoint), "key": result.key, "diagnosis": verdict, "versions": versions()}
    if result.argv:
        info.update(argv=result.argv, resumed_from=str(result.resumed_from) if result.resumed_from else None,
                    train_rows_seen_by_swift=result.train_rows,
                    moved_aside=str(result.moved_aside) if result.moved_aside else None)
    ctx.manifest.record("train", **info)
    console.print(f"train: {result.checkpoint}\n  {verdict}")
    return [result.checkpoint, ctx.run_dir / "loss.png"]


def merged_key(ctx: Context) -> str | None:
    """The training key of the model in merged/, or None when there is none."""
    from toolkit.models import MARKER

    marker = ctx.merged_dir / MARKER
    return json.loads(marker.read_text()).get("train_key") if marker.is_file() else None


def stage_merge(ctx: Context) -> list[Path]:
    from toolkit.models import MARKER
    from toolkit.train import run_merge, trained_checkpoint

    key = current_train_key(ctx) if (ctx.data_dir / "train.jsonl").is_file() else None
    best = ctx.recipe.train.early_stop_evals is not None
    ckpt = trained_checkpoint(ctx.train_dir, key, best) if key else None
    if ckpt is None:  # nothing trained under these settings yet
        stage_train(ctx)
        key = current_train_key(ctx)
        ckpt = trained_checkpoint(ctx.train_dir, key, best)
    argv = run_merge(ckpt, ctx.merged_dir, ctx.run_dir / "merge.log")
    student = ctx.student()
    # What ms-swift and xtk need to serve it again: type and template survive the merge here; the training key
    # says which training it is, so no evaluation or report takes an older model for it.
    (ctx.merged_dir / MARKER).write_text(json.dumps(
        {"name": f"{ctx.recipe.name} student", "base": student.ref, "checkpoint": str(ckpt),
         "train_key": key, "model_type": student.model_type, "template": student.template},
        indent=2) + "\n")
    ctx.manifest.record("merge", argv=argv)
    console.print(f"merge: {ctx.merged_dir}")
    return [ctx.merged_dir]


def current_head_key(ctx: Context) -> str:
    from toolkit.seqcls import head_labels
    from toolkit.train import train_key

    data, labels = ctx.head_dir / "data", head_labels(ctx.recipe)[1]
    val = data / "val.jsonl"
    return train_key(ctx.recipe, ctx.student(), data / "train.jsonl",
                     val if val.is_file() and val.stat().st_size > 0 else None, len(labels))


def head_key(ctx: Context) -> str | None:
    """The training key of the head in head/merged/, or None when there is none."""
    from toolkit.models import MARKER

    marker = ctx.head_dir / "merged" / MARKER
    return json.loads(marker.read_text()).get("train_key") if marker.is_file() else None


def stage_train_head(ctx: Context) -> list[Path]:
    """The classification head (recipe.classification_head): seq_cls rows from the prepared split, `swift sft
    --task_type seq_cls` with the student's training settings, merged into head/merged/."""
    from toolkit.losschart import plot_loss
    from toolkit.models import MARKER
    from toolkit.seqcls import head_labels, write_head_data
    from toolkit.train import read_log, run_merge, run_train

    if not (ctx.data_dir / "train.jsonl").is_file():
        stage_prepare(ctx)
    data, train, merged = ctx.head_dir / "data", ctx.head_dir / "train", ctx.head_dir / "merged"
    write_head_data(ctx.recipe, ctx.data_dir, data)
    labels = head_labels(ctx.recipe)[1]
    result = run_train(ctx.recipe, ctx.student(), data, train, fresh=ctx.fresh_head, num_labels=len(labels))
    ctx.fresh_head = False
    verdict = plot_loss(read_log(train), ctx.run_dir / "loss-head.png")
    argv = run_merge(result.checkpoint, merged, ctx.head_dir / "merge.log")
    student = ctx.student()
    (merged / MARKER).write_text(json.dumps(
        {"name": f"{ctx.recipe.name} classification head", "base": student.ref, "checkpoint": str(result.checkpoint),
         "train_key": result.key, "model_type": student.model_type, "template": student.template,
         "labels": labels}, indent=2, ensure_ascii=False) + "\n")
    ctx.manifest.record("train_head", checkpoint=str(result.checkpoint), key=result.key, diagnosis=verdict,
                        argv=result.argv or None, merge_argv=argv)
    console.print(f"train_head: {merged}\n  {verdict}")
    return [merged, ctx.run_dir / "loss-head.png"]


# --- evaluation roles: what base, student, teacher and rules mean, decided here only -----------------------

ROLES = ("base", "likelihood", "student", "head", "teacher", "rules")


@dataclass(frozen=True)
class Role:
    who: str  # base, student, teacher, rules, or "model" for any other model a user evaluates
    model: str
    prompt: str
    backend: str
    base_url: str | None = None
    api_key_env: str | None = None
    guided_json: bool | None = None  # None: the recipe's eval.guided_json
    limit: int | None = None
    name: str = ""  # the evaluation's folder name under eval/ (default: who)

    @property
    def folder(self) -> str:
        return self.name or self.who


def role(ctx: Context, who: str) -> Role:
    r, e, t = ctx.recipe, ctx.recipe.eval, ctx.recipe.teacher
    if who == "base":
        limit = min(x for x in (e.limit, e.base_limit) if x) if (e.limit or e.base_limit) else None
        return Role("base", r.student.model, "base", e.backend, limit=limit)
    if who == "likelihood":  # the base model again, zero-shot, but choosing among the allowed answers
        return Role("likelihood", r.student.model, "base", "likelihood", limit=e.limit)
    if who == "student":
        return Role("student", str(ctx.merged_dir), "student", e.backend, limit=e.limit)
    if who == "head":  # reads the text alone; the prompt is not shown to it
        return Role("head", str(ctx.head_dir / "merged"), "student", "head", limit=e.limit)
    if who == "teacher":
        return Role("teacher", t.model, "teacher", "openai", t.base_url, t.api_key_env, False, e.limit)
    if who == "rules":
        return Role("rules", r.baseline or "rules", "student", "rules", limit=e.limit)
    raise StageError(f"no role {who!r}; roles: {', '.join(ROLES)}")


def rules_identity(ctx: Context) -> dict:
    """The baseline, and for one that learns, the training split it learnt from."""
    from toolkit.manifest import file_digest
    from toolkit.recipe import load_ref

    ref, train = ctx.recipe.baseline, ctx.data_dir / "train.jsonl"
    if ref and getattr(load_ref(ref, "baseline"), "trained", False) and train.is_file():
        return {"rules": ref, "train_data": file_digest(train)}
    return {"rules": ref}


def identity(ctx: Context, r: Role) -> dict:
    """What an evaluation evaluated; the report leaves out an evaluation whose role now means another model."""
    s = ctx.recipe.student
    base = {"student": s.model, "model_type": s.model_type, "template": s.template}
    model = {"base": base, "likelihood": base, "student": {"train_key": merged_key(ctx)},
             "head": {"train_key": head_key(ctx)},
             "teacher": {"base_url": r.base_url, "model": r.model},
             "rules": rules_identity(ctx)}.get(r.who) or {"model": r.model, "base_url": r.base_url}
    return {**model, "prompt": r.prompt, "backend": r.backend if r.who not in ROLES else None,
            "eval_config": config_digest(ctx.recipe, EVAL_CONFIG)}


def evaluate_model(ctx: Context, r: Role, tests: list[str] | None = None) -> list[Path]:
    """Evaluate one model on each test file (the model is loaded once), into eval/<name>-<test name>/."""
    import gc
    import time

    from toolkit.evaluate import run_eval
    from toolkit.infer import make_backend

    recipe = ctx.recipe
    guided = recipe.eval.guided_json if r.guided_json is None else r.guided_json
    start = time.perf_counter()
    engine = make_backend(recipe, r.backend, r.model, base_url=r.base_url, api_key_env=r.api_key_env,
                          guided_json=guided, cache=ctx.run_dir / "cache" / "endpoint-answers.jsonl",
                          train=ctx.data_dir / "train.jsonl")
    load = time.perf_counter() - start
    outputs = []
    try:
        for test in tests or recipe.data.test:
            out = ctx.run_dir / "eval" / f"{r.folder}-{Path(test).stem}"
            m = run_eval(recipe, engine, recipe.path(test), r.prompt, out, r.model, r.limit, load,
                         extra={"role": r.who, "identity": identity(ctx, r)})
            console.print(f"eval {out.name}: exact match {100 * m['exact_match']['value']:.1f}% "
                          f"(n={m['n']}, {m['records_per_s']} rec/s, {m['backend']})")
            outputs += [out / "predictions.jsonl", out / "metrics.json"]
    finally:
        engine.close()  # a vLLM engine's processes, on every way out, before the next model is loaded or trained
        del engine
        gc.collect()
    return outputs


def stage_eval_base(ctx: Context) -> list[Path]:
    return evaluate_model(ctx, role(ctx, "base"))


def stage_eval_likelihood(ctx: Context) -> list[Path]:
    return evaluate_model(ctx, role(ctx, "likelihood"))


def stage_eval_student(ctx: Context) -> list[Path]:
    if not (ctx.merged_dir / "config.json").is_file() or merged_key(ctx) != current_train_key(ctx):
        stage_merge(ctx)
    return evaluate_model(ctx, role(ctx, "student"))


def stage_eval_resolved(ctx: Context) -> list[Path]:
    """The student's answers through the recipe's resolver, as eval/resolved-<test>/ (no new inference)."""
    from toolkit.evaluate import run_resolved
    from toolkit.recipe import load_ref

    resolve = load_ref(ctx.recipe.resolver, "resolver")
    student = identity(ctx, role(ctx, "student"))
    extra = {"role": "resolved", "identity": resolved_identity(ctx)}
    outputs = []
    for test in ctx.recipe.data.test:
        out = ctx.run_dir / "eval" / f"resolved-{Path(test).stem}"
        source = ctx.run_dir / "eval" / f"student-{Path(test).stem}"
        # Re-scored answers are named after the current student: refuse an older student's (`--only` after
        # retraining) rather than report them under the new one's name.
        metrics = source / "metrics.json"
        found = json.loads(metrics.read_text(encoding="utf-8")).get("identity") if metrics.is_file() else None
        if found != student:
            raise StageError(f"{metrics} is not the current student's evaluation "
                             f"({'missing' if found is None else 'another training or evaluation config'}): "
                             "run the eval_student stage first")
        m = run_resolved(ctx.recipe, resolve, source, out, extra)
        console.print(f"eval {out.name}: exact match {100 * m['exact_match']['value']:.1f}% (n={m['n']})")
        outputs += [out / "predictions.jsonl", out / "metrics.json"]
    return outputs


def resolved_identity(ctx: Context) -> dict:
    """The student's identity and the resolver: what a `resolved` evaluation describes."""
    return {**identity(ctx, role(ctx, "student")), "resolver": ctx.recipe.resolver}


def stage_eval_head(ctx: Context) -> list[Path]:
    if head_key(ctx) is None or head_key(ctx) != current_head_key(ctx):
        stage_train_head(ctx)
    return evaluate_model(ctx, role(ctx, "head"))


def skip(ctx: Context, stage: str, why: str) -> list[Path]:
    """A stage that does not apply to this recipe or run: said now, kept in the manifest for the report."""
    console.print(f"[dim]{stage}: skipped, {why}[/]")
    ctx.manifest.record(stage, skipped=why)
    return []


def stage_eval_rules(ctx: Context) -> list[Path]:
    return evaluate_model(ctx, role(ctx, "rules"))


def stage_eval_teacher(ctx: Context) -> list[Path]:
    return evaluate_model(ctx, role(ctx, "teacher"))


def stage_report(ctx: Context) -> list[Path]:
    from toolkit.report import run_report
    from toolkit.train import training_minutes

    stages = ctx.manifest.data["stages"]
    current = {**{who: identity(ctx, role(ctx, who)) for who in ROLES}, "resolved": resolved_identity(ctx)}

    def stale(m: dict) -> str | None:
        """Why an evaluation no longer describes what its name says, or None."""
        who, was = m.get("role"), m.get("identity") or {}
        now = current.get(who) or {**was, "eval_config": current["rules"]["eval_config"]}
        if who == "gguf" and "train_key" in was.get("source", {}):  # an export of the run's student: still it?
            now = {**now, "source": current["student"]}
        if was != now:
            changed = sorted(k for k in {*was, *now} if was.get(k) != now.get(k))
            return f"made with other settings ({', '.join(changed)} changed since)"
        return None

    return run_report(ctx.recipe, ctx.run_dir, data_source=stages.get("data", {}).get("source"),
                      loss_diagnosis=stages.get("train", {}).get("diagnosis"), stale=stale,
                      skipped={name: e["skipped"] for name, e in stages.items() if e.get("skipped")},
                      train_minutes={"student": (student := training_minutes(ctx.train_dir)), "resolved": student,
                                     "head": training_minutes(ctx.head_dir / "train")},
                      head_diagnosis=stages.get("train_head", {}).get("diagnosis"))


def no_head(ctx: Context) -> str | None:
    return None if ctx.recipe.classification_head else "the recipe asks for no classification head"


def not_all_enum(ctx: Context) -> str | None:
    if any(f.type != "enum" for f in ctx.recipe.fields):
        return "option likelihood chooses among classes, and not every field is enum"
    return None


def no_resolver(ctx: Context) -> str | None:
    return "the recipe names no resolver" if ctx.recipe.resolver is None else None


def no_baseline(ctx: Context) -> str | None:
    return "the recipe names no rule baseline" if ctx.recipe.baseline is None else None


def no_teacher_key(ctx: Context) -> str | None:
    env = ctx.recipe.teacher.api_key_env
    return None if os.environ.get(env) else f"${env} is not set, the teacher is not evaluated"


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], list[Path]]
    needs: tuple[str, ...]  # stages whose re-run makes this one stale
    config: tuple[str, ...]  # recipe sections (dotted) whose change makes this one stale
    # why the stage does not apply to this recipe or run (None: it does); a stage already recorded as skipped
    # for the same reason stays skipped whatever else changed
    not_applicable: Callable[[Context], str | None] = lambda ctx: None


EVAL_CONFIG = ("eval", "prompts", "fields", "data.test")
STAGES: tuple[Stage, ...] = (
    Stage("data", stage_data, (), ("data.labelled", "data.pool", "data.pool_gold", "teacher", "prompts.teacher",
                                   "fields")),
    Stage("prepare", stage_prepare, ("data",), ("data", "prompts.student", "fields", "student", "train.max_length")),
    Stage("eval_base", stage_eval_base, (), EVAL_CONFIG + ("student",)),
    Stage("eval_likelihood", stage_eval_likelihood, (), EVAL_CONFIG + ("student",), not_all_enum),
    Stage("train", stage_train, ("prepare",), ("student", "train")),
    Stage("merge", stage_merge, ("train",), ()),
    Stage("eval_student", stage_eval_student, ("merge",), EVAL_CONFIG),
    Stage("eval_resolved", stage_eval_resolved, ("eval_student",), EVAL_CONFIG + ("resolver",), no_resolver),
    Stage("train_head", stage_train_head, ("prepare",), ("student", "train", "classification_head"), no_head),
    Stage("eval_head", stage_eval_head, ("train_head",), EVAL_CONFIG, no_head),
    Stage("eval_rules", stage_eval_rules, ("prepare",), EVAL_CONFIG + ("baseline",), no_baseline),
    Stage("eval_teacher", stage_eval_teacher, (), EVAL_CONFIG + ("teacher",), no_teacher_key),
    Stage("report", stage_report, ("eval_base", "eval_likelihood", "train", "eval_student", "eval_resolved",
                                   "train_head", "eval_head", "eval_rules", "eval_teacher"), ()),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def config_digest(recipe: Recipe, sections: tuple[str, ...]) -> str:
    """The digest of the recipe sections a stage depends on, keys at their defaults left out: a key that a newer
    xtk adds with a default does not make every finished stage stale."""
    import hashlib

    data = recipe.model_dump(mode="json", exclude={"root"}, exclude_defaults=True)
    picked = {}
    for dotted in sections:
        node = data
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        picked[dotted] = node
    return hashlib.sha256(json.dumps(picked, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def run_stage(ctx: Context, name: str) -> list[Path]:
    """Run one stage now and record it (with the digest of the recipe sections it depends on)."""
    stage = next(s for s in STAGES if s.name == name)
    ctx.manifest.start(name)
    why = stage.not_applicable(ctx)
    outputs = skip(ctx, name, why) if why else stage.run(ctx)
    ctx.manifest.done(name, outputs, config=config_digest(ctx.recipe, stage.config))
    return outputs


def is_stale(ctx: Context, stage: Stage, ran: list[str]) -> bool:
    """Whether a stage must run again: unfinished, or its outputs, recipe sections or the stages it needs
    changed; a stage that does not apply is stale only when the reason it was skipped is no longer true."""
    if not ctx.manifest.is_complete(stage.name):
        return True
    entry = ctx.manifest.data["stages"][stage.name]
    why = stage.not_applicable(ctx)
    if why or entry.get("skipped"):
        return entry.get("skipped") != why
    return entry.get("config") != config_digest(ctx.recipe, stage.config) or any(n in ran for n in stage.needs)


def run_all(ctx: Context, from_stage: str | None = None, only: str | None = None,
            after: dict[str, Callable[[Context], None]] | None = None) -> list[str]:
    """`xtk run`: every stage in order; a stage is skipped when its outputs are intact, its recipe sections
    unchanged and nothing it needs re-ran. --from re-runs a stage and all after it; --only runs one stage.
    `after` adds work of the caller's own after a stage (run or skipped). Returns the names of the stages that
    ran."""
    for given in (from_stage, only):
        if given and given not in STAGE_NAMES:
            raise StageError(f"no stage {given!r}; stages: {', '.join(STAGE_NAMES)}")
    if only:
        run_stage(ctx, only)
        return [only]
    forced = set(STAGE_NAMES[STAGE_NAMES.index(from_stage):]) if from_stage else set()
    ctx.fresh_train, ctx.fresh_head = "train" in forced, "train_head" in forced
    ran: list[str] = []
    for stage in STAGES:
        if stage.name not in forced and not is_stale(ctx, stage, ran):
            console.print(f"[dim]{stage.name}: complete, skipped[/]")
        else:
            console.print(f"[bold cyan]stage {stage.name}[/]")
            run_stage(ctx, stage.name)
            ran.append(stage.name)
        if after and stage.name in after:
            after[stage.name](ctx)
    return ran
