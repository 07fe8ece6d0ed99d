"""The teacher checked before it is paid for, and judged after: the gate, the cost table, the gap closed.

- Gate (stage `teacher_gate`, before `data` labels the pool): the teacher answers the first `teacher.gate.records`
  records of the first test file; PROCEED, ITERATE (exact match below `min_exact`, or a field below `min_field`)
  or RETHINK (exact match below `rethink_exact`). Anything but PROCEED stops the run before the pool is labelled,
  naming the worst fields and examples, unless `--force`. Its answers go to the run's endpoint journal, so the
  teacher's evaluation later pays for none of them again.
- The report's lines (`report_lines`): the gate's verdict, what the teacher cost and what a million records
  cost by teacher and by student, and the share of the base-to-teacher gap the student closed, with distil labs'
  reading (>= 0.8 deploy, 0.4-0.8 iterate, below: rethink).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from toolkit.evaluate.evaluation import run_eval
from toolkit.io.errors import StageError
from toolkit.io.jsonl import read_jsonl
from toolkit.maths.ranking import Evaluation, gap_closed
from toolkit.run.roles import ROLES, role
from toolkit.run.roles import engine as make_engine
from toolkit.task.scoring import headline

DEPLOY, ITERATE_FROM = 0.8, 0.4  # distil labs' reading of the gap closed


class GateStop(StageError):
    """The teacher gate said ITERATE or RETHINK: the pool is not labelled (exit 2, the verdict in the message)."""


def gate_not_applicable(ctx) -> str | None:
    t, d = ctx.recipe.teacher, ctx.recipe.data
    if not t.gate.records:
        return "teacher.gate.records is 0"
    if not ctx.labelling and (d.labelled or not d.pool):
        return "the teacher labels no pool (the recipe names its own labelled data)"
    if not os.environ.get(t.api_key_env):
        return f"${t.api_key_env} is not set, the teacher labels nothing"
    return None


def verdict(recipe, metrics: dict) -> tuple[str, list[str]]:
    """(PROCEED | ITERATE | RETHINK, the reasons) from the gate's metrics."""
    g = recipe.teacher.gate
    exact = metrics["exact_match"]["value"]
    reasons = [f"exact match {100 * exact:.1f}% is below teacher.gate.min_exact {100 * g.min_exact:g}%"] \
        if exact < g.min_exact else []
    reasons += [f"{name} {100 * m['value']:.1f}% is below teacher.gate.min_field {100 * g.min_field:g}%"
                for name, m in metrics["fields"].items() if m["value"] < g.min_field]
    if exact < g.rethink_exact:
        return "RETHINK", reasons
    return ("ITERATE" if reasons else "PROCEED"), reasons


def worst(predictions: list[dict], metrics: dict, k: int = 3) -> tuple[list[str], list[dict]]:
    """The fields by accuracy, worst first, and up to k wrong records (an answer that parsed first)."""
    fields = sorted(metrics["fields"], key=lambda f: metrics["fields"][f]["value"])
    wrong = sorted((p for p in predictions if not p["exact"]), key=lambda p: p["parsed"] is None)[:k]
    return fields, [{"id": p["id"], "input": p["input"][:120], "gold": p["gold"],
                     "teacher": p["parsed"] if p["parsed"] is not None else p["raw"][:120]} for p in wrong]


def run_gate(ctx, force: bool = False) -> list[Path]:
    recipe, g = ctx.recipe, ctx.recipe.teacher.gate
    r = replace(role(ctx, "teacher"), limit=g.records)
    test, out = recipe.data.test[0], ctx.run_dir / "gate"
    engine = make_engine(recipe, r, ctx.run_dir)  # journalled in the run's cache: the teacher's eval reuses it
    try:
        metrics = run_eval(recipe, engine, recipe.path(test), r.prompt, out, r.model, r.limit,
                           extra={"role": "teacher-gate"})
    finally:
        engine.close()
    said, reasons = verdict(recipe, metrics)
    fields, examples = worst(read_jsonl(out / "predictions.jsonl"), metrics)
    ctx.manifest.record("teacher_gate", verdict=said, forced=force and said != "PROCEED", n=metrics["n"],
                        test_file=Path(test).name, exact_match=metrics["exact_match"],
                        fields={f: metrics["fields"][f]["value"] for f in fields}, reasons=reasons,
                        worst_examples=examples)
    head = (f"teacher gate: {said}: {r.model} on the first {metrics['n']} records of {Path(test).name}: exact match "
            f"{100 * metrics['exact_match']['value']:.1f}%; fields, worst first: "
            + ", ".join(f"{f} {100 * metrics['fields'][f]['value']:.1f}%" for f in fields))
    if said == "PROCEED" or force:
        Console(stderr=True).print(head + (f" ({'; '.join(reasons)}; --force: labelling anyway)" if reasons else ""),
                      highlight=False)
        return [out / "predictions.jsonl", out / "metrics.json"]
    advice = ("improve the teacher's prompt (prompts.teacher) or choose a stronger teacher" if said == "ITERATE"
              else "the teacher cannot do this task as defined: rethink the fields, their definitions or the teacher")
    shown = "\n".join(f"  {e['id']}: {e['input']!r}\n    gold    {json.dumps(e['gold'], ensure_ascii=False)}\n"
                      f"    teacher {json.dumps(e['teacher'], ensure_ascii=False)}" for e in examples)
    raise GateStop(f"{head}\n{'; '.join(reasons)}.\nThe pool was not labelled (nothing paid for it): {advice}; "
                   f"then run again, or give --force to label it anyway. Worst examples ({out / 'predictions.jsonl'}):"
                   f"\n{shown}")


# --- the report ------------------------------------------------------------------------------------------------

def reading(gap: float) -> str:
    return "deploy" if gap >= DEPLOY else "iterate" if gap >= ITERATE_FROM else "rethink"


def _rows(run_dir: Path, results: list[tuple[str, dict]], who: str) -> dict[tuple[str, str], dict]:
    """{(test file, id): prediction row} of a role's current evaluations (those the report shows)."""
    rows = {}
    for name, m in results:
        if m.get("role") == who and (run_dir / "eval" / name / "predictions.jsonl").is_file():
            for p in read_jsonl(run_dir / "eval" / name / "predictions.jsonl"):
                rows[(Path(m["test_file"]).stem, json.dumps(p["id"]))] = p
    return rows


def gap_closed_of_run(recipe, run_dir: Path, results: list[tuple[str, dict]]) -> dict | None:
    """(student - base) / (teacher - base) on the task metric over the records all three answered, with a paired
    bootstrap interval; None when one of them was not evaluated."""
    found = [_rows(run_dir, results, who) for who in ("student", "base", "teacher")]
    keys = [k for k in found[0] if all(k in f for f in found[1:])]
    if not keys:
        return None
    metric = headline(recipe.fields, recipe.choices)
    s, b, t = (Evaluation([metric.unit(f[k]) for k in keys], metric.statistic) for f in found)
    return {"metric": metric.name, "n": len(keys), **gap_closed(s, b, t)}


def _money(x: float | None) -> str:
    return "—" if x is None else f"{x:,.2f}"


def report_lines(recipe, run_dir: Path, results: list[tuple[str, dict]], hourly: float | None = None) -> list[str]:
    """The report's teacher section: the gate, the cost table, the gap closed."""
    path = run_dir / "manifest.json"
    stages = json.loads(path.read_text(encoding="utf-8"))["stages"] if path.is_file() else {}
    lines = ["## Teacher", ""]
    gate = stages.get("teacher_gate", {})
    if gate.get("verdict"):
        lines += [f"Gate: **{gate['verdict']}**{' (run on with --force)' if gate.get('forced') else ''}: exact match "
                  f"{100 * gate['exact_match']['value']:.1f}% on the first {gate['n']} records of "
                  f"{gate['test_file']}" + (f"; {'; '.join(gate['reasons'])}" if gate["reasons"] else "") + ".", ""]
    label = stages.get("data", {}).get("summary") or {}
    paid = label.get("accepted", 0) + sum((label.get("rejected") or {}).values())
    teacher_m = label["cost"] / paid * 1e6 if paid and label.get("cost") else None
    deployed = [m for _, m in results if (spec := ROLES.get(m.get("role"))) and spec.deployed]
    rps = next((m["records_per_s"] for m in deployed if m.get("records_per_s")), None)
    student_m = 1e6 / rps / 3600 * hourly if rps and hourly else None
    # as lines, not a table: report.md keeps one table (its evaluations)
    lines += [f"- Teacher (labelling, at teacher.price_*): spent {_money(label.get('cost'))} in "
              f"{label['seconds'] / 60:.1f} min, {label.get('records_per_s', 0):.2f} records/s; 1M records would "
              f"cost {_money(teacher_m)}." if label else "- Teacher: labelled nothing in this run.",
              f"- Student (evaluation{f', at {hourly:g} an hour' if hourly else ''}): {rps or 0:.2f} records/s; "
              + (f"1M records would cost {_money(student_m)}." if hourly else "give --hourly for its cost."), ""]
    gap = gap_closed_of_run(recipe, run_dir, results)
    if gap and gap["value"] is not None:
        lo, hi = gap["ci95"]
        lines += [f"Gap closed: **{gap['value']:.2f}** [{lo:.2f}–{hi:.2f}] of the base-to-teacher gap in "
                  f"{gap['metric']} (n={gap['n']}, records all three answered): **{reading(gap['value'])}** "
                  "(distil labs' reading: ≥ 0.8 deploy, 0.4–0.8 iterate, below rethink).", ""]
    elif gap:
        lines += [f"Gap closed: undefined, the teacher is no better than the base model on {gap['metric']}.", ""]
    return lines
