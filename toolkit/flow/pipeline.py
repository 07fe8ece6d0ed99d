"""The stages of a run and the order `xtk run` chains them in. Each stage reads and writes files in one run
folder and records itself in the manifest; a stage whose recorded outputs are intact is skipped. A stage body
never runs another stage: the runner runs first what a stage's `needs` name, where that is not there yet."""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from toolkit.data.generators import write_data
from toolkit.data.label import run_label
from toolkit.data.prepare import gold_records, read_records, run_prepare
from toolkit.evaluate.evaluation import run_eval
from toolkit.evaluate.report import run_report
from toolkit.evaluate.teacher import gate_not_applicable, run_gate
from toolkit.infer.head import head_labels, write_head_data
from toolkit.io.errors import StageError
from toolkit.io.jsonl import write_jsonl
from toolkit.io.markers import mark_trained
from toolkit.run.context import Context, open_run
from toolkit.run.identity import (EVAL_CONFIG, config_digest, current_train_key, head_current, identity,
                                  merged_current, not_current)
from toolkit.run.manifest import versions
from toolkit.run.roles import ROLES, Role, engine as make_engine, role
from toolkit.train.losschart import plot_loss
from toolkit.train.swift import read_log, run_merge, run_train, trained_checkpoint, training_minutes

console = Console(stderr=True)


# --- stages ------------------------------------------------------------------------------------------------

def stage_data(ctx: Context) -> list[Path]:
    """data/labelled.jsonl from the first source that applies: the recipe's data.labelled (your own labels),
    the teacher's labels of data.pool when its key is set, data.pool_gold (the generator's labels). Data files
    that are missing are built first by the recipe's data.generator, where it has one."""
    d, t = ctx.recipe.data, ctx.recipe.teacher
    missing = [name for name in (d.labelled, d.pool, d.pool_gold, *d.test)
               if name and not ctx.recipe.path(name).exists()]
    if d.generator and missing:  # built on this machine (a data set's licence may keep it out of git)
        console.print(f"data: {', '.join(missing)} missing: building them with {d.generator}")
        write_data(ctx.recipe)
    out = ctx.data_dir / "labelled.jsonl"
    if d.labelled:
        write_jsonl(out, read_records(ctx.recipe, ctx.recipe.path(d.labelled)))
        ctx.manifest.record("data", source=f"your labelled data ({d.labelled})")
        return [out]
    if d.pool and os.environ.get(t.api_key_env):
        summary = run_label(ctx.recipe, ctx.recipe.path(d.pool), ctx.data_dir, yes=ctx.yes)
        ctx.manifest.record("data", source=f"teacher {t.model}", summary=summary)
        return [out, ctx.data_dir / "rejects.jsonl"]
    if not d.pool_gold:
        raise StageError(f"no training labels: set ${t.api_key_env} for the teacher to label {d.pool}, or name "
                         "your labelled JSONL as data.labelled in the recipe")
    write_jsonl(out, gold_records(ctx.recipe))
    ctx.manifest.record("data", source=f"generator gold labels (no teacher key in ${t.api_key_env})")
    return [out]


def stage_teacher_gate(ctx: Context) -> list[Path]:
    """The teacher on the first test records before it labels the pool (toolkit/evaluate/teacher.py): stops the run
    unless PROCEED or --force."""
    return run_gate(ctx, ctx.force_gate)


def stage_prepare(ctx: Context) -> list[Path]:
    records = read_records(ctx.recipe, ctx.labelled or ctx.data_dir / "labelled.jsonl")
    stats = run_prepare(ctx.recipe, records, ctx.data_dir, ctx.student().ref)
    ctx.manifest.record("prepare", stats=stats)
    console.print(f"prepare: {stats['train']} train / {stats['val']} val rows, dropped {stats['dropped']}")
    return [ctx.data_dir / n for n in ("train.jsonl", "val.jsonl", "stats.json")]


def _trained(ctx: Context) -> Path | None:
    """The finished checkpoint of the student under the run's settings now, or None."""
    key = current_train_key(ctx)
    return trained_checkpoint(ctx.train_dir, key, ctx.recipe.train.early_stop_evals is not None) if key else None


def stage_train(ctx: Context) -> list[Path]:
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


def merge_into(ctx: Context, checkpoint: Path, key: str, merged: Path, log: Path, what: str, **more) -> list[str]:
    """A trained checkpoint as a whole model in `merged`, marked with the training that made it."""
    argv = run_merge(checkpoint, merged, log)
    student = ctx.student()
    mark_trained(merged, f"{ctx.recipe.name} {what}", student.ref, checkpoint, key, student.model_type,
                 student.template, **more)
    return argv


def stage_merge(ctx: Context) -> list[Path]:
    ckpt = _trained(ctx)
    if ckpt is None:
        raise StageError(f"{ctx.train_dir} holds no finished training under the run's settings: run the train stage")
    argv = merge_into(ctx, ckpt, current_train_key(ctx), ctx.merged_dir, ctx.run_dir / "merge.log", "student")
    ctx.manifest.record("merge", argv=argv)
    console.print(f"merge: {ctx.merged_dir}")
    return [ctx.merged_dir]


def stage_train_head(ctx: Context) -> list[Path]:
    """The classification head (recipe.classification_head): seq_cls rows from the prepared split, `swift sft
    --task_type seq_cls` with the student's training settings, merged into head/merged/."""
    data, train, merged = ctx.head_dir / "data", ctx.head_dir / "train", ctx.head_dir / "merged"
    write_head_data(ctx.recipe, ctx.data_dir, data)
    labels = head_labels(ctx.recipe)[1]
    result = run_train(ctx.recipe, ctx.student(), data, train, fresh=ctx.fresh_head, num_labels=len(labels))
    ctx.fresh_head = False
    verdict = plot_loss(read_log(train), ctx.run_dir / "loss-head.png")
    argv = merge_into(ctx, result.checkpoint, result.key, merged, ctx.head_dir / "merge.log", "classification head",
                      labels=labels)
    ctx.manifest.record("train_head", checkpoint=str(result.checkpoint), key=result.key, diagnosis=verdict,
                        argv=result.argv or None, merge_argv=argv)
    console.print(f"train_head: {merged}\n  {verdict}")
    return [merged, ctx.run_dir / "loss-head.png"]


# --- evaluations: each role's (toolkit/run/roles.py) ---------------------------------------------------------------

def evaluate_model(ctx: Context, r: Role, tests: list[str] | None = None) -> list[Path]:
    """Evaluate one model on each test file (the model is loaded once), into eval/<name>-<test name>/."""
    recipe = ctx.recipe
    start = time.perf_counter()
    engine = make_engine(recipe, r, ctx.run_dir)
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


def skip(ctx: Context, stage: str, why: str) -> list[Path]:
    """A stage that does not apply to this recipe or run: said now, kept in the manifest for the report."""
    console.print(f"[dim]{stage}: skipped, {why}[/]")
    ctx.manifest.record(stage, skipped=why)
    return []


def stage_report(ctx: Context) -> list[Path]:
    stages = ctx.manifest.data["stages"]
    # The loss chart, fit verdict and minutes are the last training's: student rows of another are left out.
    trained = stages.get("train", {}).get("key")
    minutes = {"train": training_minutes(ctx.train_dir), "train_head": training_minutes(ctx.head_dir / "train")}

    def stale(m: dict) -> str | None:
        was, spec = m.get("identity") or {}, ROLES.get(m.get("role"))
        if spec and spec.training == "train" and trained and was.get("train_key") != trained:
            return ("made with the student of an earlier training, not the one whose loss chart, fit and minutes "
                    "this report shows: run merge and eval_student")
        return not_current(ctx, m)

    return run_report(ctx.recipe, ctx.run_dir, hourly=ctx.hourly, data_source=stages.get("data", {}).get("source"),
                      loss_diagnosis=stages.get("train", {}).get("diagnosis"), stale=stale,
                      skipped={name: e["skipped"] for name, e in stages.items() if e.get("skipped")},
                      train_minutes={name: minutes[spec.training] for name, spec in ROLES.items() if spec.training},
                      head_diagnosis=stages.get("train_head", {}).get("diagnosis"), manifest=ctx.manifest.data)


# --- the stages and their runner --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], list[Path]]
    # stages whose outputs this one reads: run first where `ready` says they are not there for the run's settings
    # now, and a stage is stale when one of them ran after it
    needs: tuple[str, ...]
    config: tuple[str, ...]  # recipe sections (dotted) whose change makes this one stale
    # why the stage does not apply to this recipe or run (None: it does); a stage already recorded as skipped
    # for the same reason stays skipped whatever else changed
    not_applicable: Callable[[Context], str | None] = lambda ctx: None
    # whether what it makes is there for the run's settings now (None: a stage that needs it checks for itself)
    ready: Callable[[Context], bool] | None = None
    reads: tuple[str, ...] = ()  # stages whose re-run makes this one stale, but which it does not run first


def evaluation_stage(who: str) -> Stage:
    """The stage that makes a role's evaluations, as the role declares it."""
    spec = ROLES[who]
    return Stage(spec.stage, lambda ctx: evaluate_model(ctx, role(ctx, who)), spec.needs, EVAL_CONFIG + spec.config,
                 spec.not_applicable)


def _evaluations(*names: str) -> tuple[Stage, ...]:
    return tuple(evaluation_stage(n) for n in names)


GATE_CONFIG = ("teacher", "prompts.teacher", "fields", "data.test", "eval")


def _gate_ready(ctx: Context) -> bool:
    """The gate's verdict is recorded for the teacher and evaluation settings now (a forced one stands)."""
    entry = ctx.manifest.data["stages"].get("teacher_gate", {})
    return ctx.manifest.is_complete("teacher_gate") and entry.get("config") == config_digest(ctx.recipe, GATE_CONFIG)


def gate_labelling(recipe, run_dir: Path, force: bool = False) -> None:
    """`xtk label`'s teacher gate: the run folder's teacher_gate stage, as `xtk run` runs it before the pool is
    labelled. A verdict recorded under the same teacher and gate settings stands (a forced one too); ITERATE or
    RETHINK stops with GateStop before one text is labelled, unless `force`."""
    if not recipe.teacher.gate.records:
        return  # no gate: the run folder is not touched
    with open_run(recipe, run_dir) as ctx:
        ctx.force_gate, ctx.labelling = force, True
        if not (_gate_ready(ctx) and ctx.manifest.data["stages"]["teacher_gate"].get("verdict")):
            run_stage(ctx, "teacher_gate")


RUN_STAGES: tuple[Stage, ...] = (
    Stage("teacher_gate", stage_teacher_gate, (), GATE_CONFIG, gate_not_applicable, ready=_gate_ready),
    Stage("data", stage_data, ("teacher_gate",), ("data.labelled", "data.pool", "data.pool_gold", "teacher",
                                                   "prompts.teacher", "fields", "tables"),
          ready=lambda ctx: ctx.labelled is not None or (ctx.data_dir / "labelled.jsonl").is_file()),
    Stage("prepare", stage_prepare, ("data",), ("data", "prompts.student", "fields", "student", "train.max_length"),
          ready=lambda ctx: (ctx.data_dir / "train.jsonl").is_file()),
    *_evaluations("base", "likelihood"),
    Stage("train", stage_train, ("prepare",), ("student", "train"), ready=lambda ctx: _trained(ctx) is not None),
    Stage("merge", stage_merge, ("train",), (), ready=merged_current),
    *_evaluations("student"),
    Stage("train_head", stage_train_head, ("prepare",), ("student", "train", "classification_head"),
          ROLES["head"].not_applicable, ready=head_current),
    *_evaluations("head", "rules", "teacher"),
)
STAGES: tuple[Stage, ...] = (*RUN_STAGES, Stage("report", stage_report, (), (), reads=tuple(
    s.name for s in RUN_STAGES if s.name not in ("data", "prepare", "merge"))))
STAGE_NAMES = tuple(s.name for s in STAGES)
BY_NAME = {s.name: s for s in STAGES}


def _needed(ctx: Context, stage: Stage, ran: list[str]) -> None:
    """Run what `stage` needs and is not there yet for the run's settings, each after what it needs in turn."""
    for name in stage.needs:
        need = BY_NAME[name]
        if need.ready is None or need.not_applicable(ctx) or need.ready(ctx):
            continue
        _needed(ctx, need, ran)
        _run(ctx, need)
        ran.append(name)


def _run(ctx: Context, stage: Stage) -> list[Path]:
    ctx.manifest.start(stage.name)
    why = stage.not_applicable(ctx)
    outputs = skip(ctx, stage.name, why) if why else stage.run(ctx)
    ctx.manifest.done(stage.name, outputs, config=config_digest(ctx.recipe, stage.config))
    return outputs


def run_stage(ctx: Context, name: str, ran: list[str] | None = None) -> list[Path]:
    """Run one stage now and record it (with the digest of the recipe sections it depends on), after what it
    needs and does not find (appended to `ran`); a stage that does not apply needs nothing."""
    stage = BY_NAME[name]
    if not stage.not_applicable(ctx):
        _needed(ctx, stage, ran if ran is not None else [])
    return _run(ctx, stage)


def is_stale(ctx: Context, stage: Stage, ran: list[str]) -> bool:
    """Whether a stage must run again: unfinished, or its outputs, recipe sections or the stages it needs
    changed (re-ran in this invocation or since it finished); a stage that does not apply is stale only when the
    reason it was skipped is no longer true."""
    if not ctx.manifest.is_complete(stage.name):
        return True
    stages = ctx.manifest.data["stages"]
    entry = stages[stage.name]
    why = stage.not_applicable(ctx)
    if why or entry.get("skipped"):
        return entry.get("skipped") != why
    after = (n for n in (*stage.needs, *stage.reads) if stages.get(n, {}).get("finished", "") > entry["finished"])
    return entry.get("config") != config_digest(ctx.recipe, stage.config) or \
        any(n in ran for n in (*stage.needs, *stage.reads)) or any(after)


def run_all(ctx: Context, from_stage: str | None = None, only: str | None = None,
            after: dict[str, Callable[[Context], None]] | None = None) -> list[str]:
    """`xtk run`: every stage in order; a stage is skipped when its outputs are intact, its recipe sections
    unchanged and nothing it needs re-ran. --from re-runs a stage and all after it; --only runs one stage (and
    what it needs that is not there). `after` adds work of the caller's own after a stage (run or skipped).
    Returns the names of the stages that ran."""
    for given in (from_stage, only):
        if given and given not in STAGE_NAMES:
            raise StageError(f"no stage {given!r}; stages: {', '.join(STAGE_NAMES)}")
    ran: list[str] = []
    if only:
        run_stage(ctx, only, ran)
        return [*ran, only]
    forced = set(STAGE_NAMES[STAGE_NAMES.index(from_stage):]) if from_stage else set()
    ctx.fresh_train, ctx.fresh_head = "train" in forced, "train_head" in forced
    for stage in STAGES:
        if stage.name not in forced and not is_stale(ctx, stage, ran):
            console.print(f"[dim]{stage.name}: complete, skipped[/]")
        else:
            console.print(f"[bold cyan]stage {stage.name}[/]")
            run_stage(ctx, stage.name, ran)
            ran.append(stage.name)
        if after and stage.name in after:
            after[stage.name](ctx)
    return ran
