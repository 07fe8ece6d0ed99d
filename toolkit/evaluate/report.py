"""report: the metrics of several evaluations -> report.md (one table, per field, intervals; sections by
field type; worst errors, the loss chart and its diagnosis), accuracy.png (grouped bars with interval
whiskers) and a confusion-<field>.png per enum field."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.evaluate.report_html import write_html
from toolkit.evaluate.teacher import report_lines as teacher_lines
from toolkit.io.errors import StageError
from toolkit.io.jsonl import read_jsonl, save_figure, write_text
from toolkit.maths.ranking import ALPHA, Evaluation, discordant, mcnemar, paired_difference, verdict
from toolkit.maths.stats import mean
from toolkit.model.models import EMBEDDED
from toolkit.run.roles import ROLES
from toolkit.task.recipe import Recipe
from toolkit.task.scoring import field_text, how_wrong
from toolkit.task.tables import NOT_IN_TABLE, WRONG_IN_TABLE

# Row order in the table: the roles' (the story of the tutorial), then anything else by name.
ORDER = tuple(ROLES)


def collect(eval_dir: Path) -> list[tuple[str, dict]]:
    """(evaluation name, metrics) for every eval/<name>/metrics.json, in table order."""
    found = [(p.parent.name, json.loads(p.read_text())) for p in eval_dir.glob("*/metrics.json")]

    def key(item):
        who = item[1].get("role")
        return (ORDER.index(who) if who in ORDER else len(ORDER), item[1].get("test_file", ""), item[0])

    return sorted(found, key=key)


def _pct(m: dict) -> str:
    lo, hi = m["ci95"]
    return f"{100 * m['value']:.1f} [{100 * lo:.0f}–{100 * hi:.0f}]"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


@dataclass
class Section:
    """A part of the report for one kind of figure: a title, notes, and tables (caption, head, rows)."""

    title: str
    notes: list[str]
    tables: list[tuple[str, list[str], list[list[str]]]]


def by_type(results: list[tuple[str, dict]], run_dir: Path) -> tuple[list[Section], list[Path]]:
    """The sections (and charts) for the recipe's field types: entity precision/recall/F1 of list fields,
    macro-F1 and confusion matrices of enum fields, similarity of long free text. A section appears when its
    type does."""
    sections, charts = [], []
    with_entities = [(name, m["entities"]) for name, m in results if "entities" in m]
    if with_entities:
        names = list(with_entities[0][1])
        sections.append(Section("Entities (list fields, micro over records)",
                                ["Each list is compared as a multiset: order-free, one match per gold item."],
                                [("", ["evaluation", *(f"{f} {k}" for f in names for k in ("P", "R", "F1"))],
                                  [[name, *(_pct(e[f][k]) for f in names for k in ("precision", "recall", "f1"))]
                                   for name, e in with_entities])]))
    with_enums = [(name, m["enums"]) for name, m in results if "enums" in m]
    if with_enums:
        names = list(with_enums[0][1])
        tables = [("", ["evaluation", *(f"{f} macro-F1" for f in names)],
                   [[name, *(_pct(e[f]["macro_f1"]) for f in names)] for name, e in with_enums])]
        for field in names:
            png = run_dir / f"confusion-{field}.png"
            plot_confusion([(name, e[field]["confusion"]) for name, e in with_enums], field, png)
            charts.append(png)
            for name, e in with_enums:
                cm = e[field]["confusion"]
                tables.append((f"{field}, {name} (rows gold, columns predicted)", ["gold \\ predicted", *cm["predicted"]],
                               [[gold, *map(str, row)] for gold, row in zip(cm["gold"], cm["counts"])]))
        notes = []
        if not all(c.isascii() for _, e in with_enums for f in names for c in e[f]["confusion"]["predicted"]):
            notes.append("The confusion-FIELD.png charts number classes (1, 2, ...) in the order of these tables.")
        sections.append(Section("Classes (enum fields)", notes, tables))
    with_similarity = [(name, m["similarity"]) for name, m in results if "similarity" in m]
    if with_similarity:
        names = list(with_similarity[0][1])
        sections.append(Section("Similarity (long free text)", [
            "Partial credit beside exact match: 1 − edit distance / the longer length, after the field's "
            "normalisers, averaged over records (an unparseable answer scores 0)."],
            [("", ["evaluation", *names], [[name, *(_pct(sim[f]) for f in names)] for name, sim in with_similarity])]))
    return sections, charts


def plot_confusion(matrices: list[tuple[str, dict]], field: str, out_png: Path) -> None:
    """One confusion matrix per evaluation (rows gold, columns predicted), side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), dpi=110, squeeze=False)
    for ax, (name, cm) in zip(axes[0], matrices):
        ax.imshow(cm["counts"], cmap="Blues")
        top = max(max(row) for row in cm["counts"])
        for i, row in enumerate(cm["counts"]):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if count > top / 2 else "black")
        # Class names in scripts the chart's font may lack (CJK) become their numbers in the report's table.
        ticks = [c if c.isascii() else str(i + 1) for i, c in enumerate(cm["predicted"])]
        ax.set_xticks(range(len(ticks)), ticks, fontsize=7, rotation=45, ha="right")
        ax.set_yticks(range(len(cm["gold"])), ticks[:len(cm["gold"])], fontsize=7)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("predicted", fontsize=8)
        ax.set_ylabel("gold", fontsize=8)
    fig.suptitle(field, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)


def worst_errors(predictions: list[dict], fields: list[str], k: int = 5) -> list[tuple[dict, dict[str, int]]]:
    """The k most wrong answers, with their wrong fields' edit distances: most wrong fields first, then the
    largest total edit distance; unparseable answers last (the JSON valid column counts them already)."""
    wrong = [(p, how_wrong(p, fields)) for p in predictions]
    wrong = [(p, d) for p, d in wrong if d]
    wrong.sort(key=lambda pd: (pd[0]["parsed"] is None, -len(pd[1]), -sum(pd[1].values()), pd[0]["id"]))
    return wrong[:k]


def plot_accuracy(results: list[tuple[str, dict]], field_names: list[str], out_png: Path) -> None:
    """Grouped bars with interval whiskers: a colour per model (role), hatched for a second and later test file;
    every value also a dot, so that a bar at 0 still shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["exact_match", *field_names, "json_parse_rate"]
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(groups)), 4.5), dpi=120)
    width = 0.8 / max(1, len(results))
    models = list(dict.fromkeys(m.get("role") or name for name, m in results))
    tests = list(dict.fromkeys(m.get("test_file", "") for _, m in results))
    for i, (name, m) in enumerate(results):
        stats = [m[g] if g in m else m["fields"][g] for g in groups]
        values = [100 * s["value"] for s in stats]
        errs = [[100 * (s["value"] - s["ci95"][0]) for s in stats], [100 * (s["ci95"][1] - s["value"]) for s in stats]]
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(groups))]
        colour = PALETTE[models.index(m.get("role") or name) % len(PALETTE)]
        ax.bar(xs, values, width, yerr=errs, capsize=2, color=colour, edgecolor="black", linewidth=0.4,
               hatch="//" if tests.index(m.get("test_file", "")) else None, label=f"{name} (n={m['n']})")
        ax.plot(xs, values, "o", color=colour, markeredgecolor="black", markersize=3, markeredgewidth=0.4)
    ax.set_xticks(range(len(groups)), [g.replace("_", "\n") for g in groups], fontsize=8)
    ax.set_ylabel("% correct (95% interval)")
    ax.set_ylim(-2, 105)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)


# Okabe and Ito's colour-blind-safe palette: eight colours told apart in print and by most colour vision.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")


def row_label(recipe: Recipe, name: str, m: dict) -> str:
    """An evaluation's name and what it is: its role's description, with the prompt file it was shown."""
    spec = ROLES.get(m.get("role"))
    if spec is None:
        return name
    given = getattr(recipe.prompts, spec.prompt)  # None: rendered from the fields (toolkit/task/recipe.py)
    return f"{name} ({spec.describe.format(prompt=Path(given).name if given else 'rendered from the fields')})"


def model_label(recipe: Recipe, m: dict) -> str:
    """The model an evaluation evaluated: the student's name for one fine-tuned in this run (its folder is the
    run's `merged`), else the model's own name."""
    spec = ROLES.get(m.get("role"))
    if spec is not None and spec.fine_tuned:
        return f"{Path(recipe.student.model).name}, fine-tuned"
    return Path(m["model"]).name


def hyper_parameters(recipe: Recipe) -> str:
    t = recipe.train
    epochs = t.num_train_epochs
    length = f"{t.max_steps} steps" if t.max_steps and t.max_steps > 0 else \
        f"{epochs:g} epoch{'' if epochs == 1 else 's'}"
    return (f"{t.tuner_type}, rank {t.lora_rank}, alpha {t.lora_alpha}, {length}, learning rate {t.learning_rate:g} "
            f"({t.lr_scheduler_type}), batch {t.per_device_train_batch_size} × {t.gradient_accumulation_steps} "
            f"accumulated, max length {t.max_length}, seed {t.seed}")


def facts(recipe: Recipe, manifest: dict | None, train_minutes: dict[str, float | None] | None,
          data_source: str | None) -> list[tuple[str, str]]:
    """What the run was, from its recipe and manifest: (label, value), those that are known."""
    stages = (manifest or {}).get("stages", {})
    student = recipe.student.model
    out = [("student", f"{student} ({recipe.student.model_type})"
                       + (f", {EMBEDDED[student].weights}" if student in EMBEDDED else ""))]
    if data_source:
        out.append(("training labels", data_source))
    summary = stages.get("data", {}).get("summary") or {}
    if "cost" in summary:
        out.append(("labelling cost", f"{summary['cost']:.4f} (teacher.price_*_per_mtok; {summary['tokens_in']} "
                                      f"tokens in, {summary['tokens_out']} out)"))
    split = stages.get("prepare", {}).get("stats") or {}
    if "train" in split:
        out.append(("training rows", f"{split['train']} (+ {split.get('val', 0)} validation)"))
    out.append(("hyper-parameters", hyper_parameters(recipe)))
    minutes = (train_minutes or {}).get("student")
    if minutes is not None:
        out.append(("training time", f"{minutes:.1f} min"))
    commit = (stages.get("train", {}).get("versions") or (manifest or {}).get("versions") or {}).get("commit")
    if commit:
        out.append(("xtk commit", commit))
    return out


def evaluations_table(recipe: Recipe, results: list[tuple[str, dict]],
                      train_minutes: dict[str, float | None] | None) -> tuple[list[str], list[list[str]]]:
    """The one table: a row per evaluation, its headline figures and its weakest field."""
    head = ["evaluation", "model", "test file", "n", "exact match", "JSON valid", "micro F1", "weakest field",
            "rec/s", "train min"]
    trained = {who: f"{t:.1f}" for who, t in (train_minutes or {}).items() if t is not None}
    rows = []
    for name, m in results:
        weakest = min(recipe.field_names, key=lambda f: m["fields"][f]["value"])
        rows.append([row_label(recipe, name, m), model_label(recipe, m), Path(m["test_file"]).name, str(m["n"]),
                     _pct(m["exact_match"]), _pct(m["json_parse_rate"]), _pct(m["micro_f1"]),
                     f"{weakest} {_pct(m['fields'][weakest])}", f"{m['records_per_s'] or 0:.2f}",
                     trained.get(m.get("role"), "—")])
    return head, rows


def _spec(m: dict):
    return ROLES.get(m.get("role"))


def _exact_by_id(run_dir: Path, name: str) -> dict[str, bool]:
    path = run_dir / "eval" / name / "predictions.jsonl"
    return {json.dumps(p["id"]): bool(p["exact"]) for p in read_jsonl(path)} if path.is_file() else {}


def _against(run_dir: Path, student: str, other: str, who: str) -> str:
    """The student against another evaluation of the same test file, by McNemar's exact test on the records both
    answered: ahead or behind only where the test shows it at 5%, else the difference and "not shown at 5%"."""
    both, only_student, only_other = discordant(_exact_by_id(run_dir, student), _exact_by_id(run_dir, other))
    if not both:
        return f"no record in common with {who} to compare"
    points = 100 * (only_student - only_other) / len(both)
    p = mcnemar(only_student, only_other)
    said = verdict(p < ALPHA and points > 0, p < ALPHA and points < 0)
    test = f"McNemar p = {p:.2g}, {len(both)} records both answered"
    if said == "not shown":
        return f"{points:+.1f} points against {who}, a difference not shown at 5% ({test})"
    return f"{abs(points):.1f} points {'ahead of' if said == 'beats' else 'behind'} {who} ({test})"


def headline(results: list[tuple[str, dict]], run_dir: Path, skipped: dict[str, str] | None) -> str:
    """One sentence for the top of the report: the fine-tuned student's (else the first evaluation's) whole-record
    exact match with its interval, against the teacher (and the rule baseline) on the same test file by a paired
    test, and its speed. A teacher that was not evaluated is said, with why where the run knows."""
    name, m = next(((n, m) for n, m in results if (s := _spec(m)) and s.deployed), results[0])
    who = "The student" if (s := _spec(m)) and s.deployed else f"`{name}`"
    same_file = [(n, o) for n, o in results if n != name and o.get("test_file") == m.get("test_file")]
    teacher = next((n for n, o in same_file if (s := _spec(o)) and s.endpoint), None)
    rules = next((n for n, o in same_file if (s := _spec(o)) and s.baseline), None)
    if teacher:
        clauses = [_against(run_dir, name, teacher, "the teacher")]
    else:
        stage = next((s.stage for s in ROLES.values() if s.endpoint), None)
        why = (skipped or {}).get(stage)
        clauses = [f"the teacher was not evaluated on it{f' ({why})' if why else ''}"]
    if rules:
        clauses.append(_against(run_dir, name, rules, "the rule baseline"))
    exact, rps = m["exact_match"], m.get("records_per_s")
    lo, hi = exact["ci95"]
    return (f"{who} gets {100 * exact['value']:.1f}% [{100 * lo:.0f}–{100 * hi:.0f}] of the {m['n']} records of "
            f"{Path(m['test_file']).name} fully right; {'; '.join(clauses)}"
            + (f"; at {rps:.2f} records/s." if rps else "."))


def table_error_lines(results: list[tuple[str, dict]]) -> list[str]:
    """One line per evaluation of a recipe with tables: each bound field's wrong answers, how many name a value
    the table lacks and how many a value it has but not the right one."""
    lines = [f"- **{name}**: " + "; ".join(f"{field} {e[NOT_IN_TABLE]} {NOT_IN_TABLE}, {e[WRONG_IN_TABLE]} "
                                             f"{WRONG_IN_TABLE}" for field, e in m["table_errors"].items())
             for name, m in results if m.get("table_errors")]
    return ["", "Wrong answers of the fields bound to a table, by how they are wrong:", "", *lines] if lines else []


def run_report(recipe: Recipe, run_dir: Path, data_source: str | None = None, loss_diagnosis: str | None = None,
               stale: Callable[[dict], str | None] = lambda m: None,
               skipped: dict[str, str] | None = None, train_minutes: dict[str, float | None] | None = None,
               head_diagnosis: str | None = None, hourly: float | None = None,
               manifest: dict | None = None) -> list[Path]:
    """`stale(metrics)` says why an evaluation no longer describes its model (it is then listed, not shown);
    `skipped` names the stages that did not apply, and why; `train_minutes` the training time behind a role;
    `manifest` the run's manifest.json (training rows, labelling cost, commit)."""
    found = collect(run_dir / "eval")
    why_stale = {name: stale(m) for name, m in found}
    left_out = [(name, why) for name, why in why_stale.items() if why]
    results = [(name, m) for name, m in found if not why_stale[name]]
    if not results:
        raise StageError(f"no current evaluations under {run_dir / 'eval'}: run `xtk eval` or `xtk run` first"
                         + "".join(f"\n  {name}: {why}" for name, why in left_out))
    fields = recipe.field_names
    run_facts = facts(recipe, manifest, train_minutes, data_source)
    top = headline(results, run_dir, skipped)
    lines = [f"# {recipe.name}: distillation report", "", f"**{top}**", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    lines += [*(f"- {label}: {value}" for label, value in run_facts), "",
              "Whole-record exact match: every field equal after the recipe's normalisers (a list as a multiset). "
              "Micro F1 counts every field as a slot and every list item as one. Figures are % with 95% intervals "
              "(Wilson for proportions, a bootstrap for the rest). Every field, its type's figures, confusions and "
              "an error browser: [report.html](report.html).", ""]
    head, rows = evaluations_table(recipe, results, train_minutes)
    lines += _table(head, rows)
    notes = []
    if left_out:
        notes.append("Left out, as they describe another model or configuration than this run's: "
                     + "; ".join(f"`{name}` ({why})" for name, why in left_out) + ".")
    if skipped:
        notes.append("Not run: " + "; ".join(f"{stage} ({why})" for stage, why in skipped.items()) + ".")
    for note in notes:
        lines += ["", note]
    lines += table_error_lines(results)
    sections, charts = by_type(results, run_dir)
    lines += ["", "![accuracy](accuracy.png)", "", *(f"![confusion]({png.name})" for png in charts)]
    if (run_dir / "loss.png").is_file():
        lines += ["", "## Training", "", "![loss](loss.png)", "", f"Fit: {loss_diagnosis or 'see the chart'}."]
    if (run_dir / "loss-head.png").is_file():
        lines += ["", "![loss of the classification head](loss-head.png)", "",
                  f"Fit of the classification head: {head_diagnosis or 'see the chart'}."]
    lines += ["", *teacher_lines(recipe, run_dir, results, hourly)]  # gate, cost, gap closed (toolkit/evaluate/teacher.py)
    # the fine-tuned student's own failures first: what a reader acts on, not the base model's
    ordered = sorted(results, key=lambda r: not ((s := _spec(r[1])) and s.deployed))
    predictions = {name: read_jsonl(p) for name, _ in ordered
                   if (p := run_dir / "eval" / name / "predictions.jsonl").is_file()}
    lines += ["", "## Worst errors", "",
              "Per evaluation, the fine-tuned student's first, the answers with the most wrong fields, then the "
              "largest edit distance from gold (unparseable answers last). `null` is a null value, `''` an empty "
              "text, (missing) a field the answer left out.", ""]
    for name, preds in predictions.items():
        worst = worst_errors(preds, fields)
        if not worst:
            continue
        lines += [f"**{name}** ({sum(not p['exact'] for p in preds)} of {len(preds)} wrong)", ""]
        for p, distances in worst:
            got = p["parsed"]
            diff = "no JSON: " + _clip(p["raw"], 60) if got is None else "; ".join(
                f"{f} {_shown(p['gold'], f)} → {_shown(got, f)}" for f in distances)
            lines.append(f"- `{p['id']}` {_clip(p['input'], 80)}  \n  {diff}")
        lines.append("")
    report = run_dir / "report.md"
    write_text(report, "\n".join(lines))
    plot_accuracy(results, fields, run_dir / "accuracy.png")
    page = write_html(recipe, run_dir, results, top, run_facts, (head, rows), notes, sections, predictions,
                      loss_diagnosis, head_diagnosis)
    return [report, page, run_dir / "accuracy.png", *charts]


def _shown(answer: dict, field: str) -> str:
    """A value in report.md's worst errors: null and a missing field told apart from an empty text."""
    if field not in answer:
        return "(missing)"
    return "`null`" if answer[field] is None else repr(field_text(answer[field]))


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 1] + "…"


def compare_runs(recipe: Recipe, run_a: Path, run_b: Path, bootstrap: int = 1000) -> list[str]:
    """Two runs' evaluations of the same name side by side, on the records both answered (paired by id): exact
    match and each field's accuracy in A and in B, B − A with its paired-bootstrap 95% interval, and McNemar's
    exact p of the records only one of them got right."""
    def answers(run: Path) -> dict[str, dict[str, dict]]:
        return {p.parent.name: {r["id"]: r for r in read_jsonl(p)} for p in sorted(run.glob("eval/*/predictions.jsonl"))}

    a, b = answers(run_a), answers(run_b)
    names = [name for name in a if name in b]
    if not names:
        raise StageError(f"no evaluation of the same name in {run_a / 'eval'} and {run_b / 'eval'}: they have "
                         f"{', '.join(a) or 'none'} and {', '.join(b) or 'none'}")
    lines = [f"# {recipe.name}: {run_a} (A) against {run_b} (B)", "",
             "Each evaluation on the records both runs answered (paired by id). B − A in points, with a paired "
             "bootstrap 95% interval; McNemar's exact p over the records only one run got right.", ""]
    rows, unpaired = [], []
    for name in names:
        ids = [i for i in a[name] if i in b[name]]
        if not ids:
            unpaired.append(name)
            continue
        for label, right in [("exact match", lambda r: r["exact"]),
                             *((f, lambda r, f=f: r["correct"][f]) for f in recipe.field_names)]:
            first = [bool(right(a[name][i])) for i in ids]
            second = [bool(right(b[name][i])) for i in ids]
            diff = paired_difference(Evaluation(second, mean), Evaluation(first, mean), bootstrap=bootstrap)
            only_a = sum(x and not y for x, y in zip(first, second))
            only_b = sum(y and not x for x, y in zip(first, second))
            rows.append([name, label, str(len(ids)), f"{100 * mean(first):.1f}", f"{100 * mean(second):.1f}",
                         f"{100 * diff['value']:+.1f} [{100 * diff['ci95'][0]:+.1f}, {100 * diff['ci95'][1]:+.1f}]",
                         f"{only_a} / {only_b}", f"{mcnemar(only_a, only_b):.3g}"])
    lines += _table(["evaluation", "figure", "n paired", "A %", "B %", "B − A [95%]", "only A / only B right",
                     "McNemar p"], rows)
    left = sorted(set(a) ^ set(b))
    if left:
        lines += ["", "In one run only: " + ", ".join(left) + "."]
    if unpaired:
        lines += ["", "No record in common: " + ", ".join(unpaired) + "."]
    return lines
