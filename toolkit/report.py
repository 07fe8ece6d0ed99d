"""report: the metrics of several evaluations -> report.md (one table, per field, intervals; sections by
field type; worst errors, the loss chart and its diagnosis), accuracy.png (grouped bars with interval
whiskers) and a confusion-<field>.png per enum field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from toolkit.jsonl import read_jsonl, save_figure, write_text
from toolkit.recipe import Recipe
from toolkit.roles import ROLES
from toolkit.teacher import report_lines as teacher_lines

# Row order in the table: the roles' (the story of the tutorial), then anything else by name.
ORDER = tuple(ROLES)
DESCRIBE = {name: spec.describe for name, spec in ROLES.items()}


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
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def by_type(results: list[tuple[str, dict]], run_dir: Path) -> tuple[list[str], list[Path]]:
    """The sections (and charts) for the recipe's field types: entity precision/recall/F1 of list fields,
    macro-F1 and confusion matrices of enum fields, similarity of long free text. A section appears when its
    type does."""
    lines, charts = [], []
    with_entities = [(name, m["entities"]) for name, m in results if "entities" in m]
    if with_entities:
        names = list(with_entities[0][1])
        lines += ["## Entities (list fields, micro over records)", "",
                  "Each list is compared as a multiset: order-free, one match per gold item.", "",
                  *_table(["evaluation", *(f"{f} {k}" for f in names for k in ("P", "R", "F1"))],
                          [[name, *(_pct(e[f][k]) for f in names for k in ("precision", "recall", "f1"))]
                           for name, e in with_entities]), ""]
    with_enums = [(name, m["enums"]) for name, m in results if "enums" in m]
    if with_enums:
        names = list(with_enums[0][1])
        lines += ["## Classes (enum fields)", "",
                  *_table(["evaluation", *(f"{f} macro-F1" for f in names)],
                          [[name, *(_pct(e[f]["macro_f1"]) for f in names)] for name, e in with_enums]), ""]
        for field in names:
            png = run_dir / f"confusion-{field}.png"
            plot_confusion([(name, e[field]["confusion"]) for name, e in with_enums], field, png)
            charts.append(png)
            lines += [f"![confusion {field}]({png.name})", ""]
            if not all(c.isascii() for _, e in with_enums for c in e[field]["confusion"]["predicted"]):
                lines += ["The chart numbers classes (1, 2, ...) in the order of the tables below.", ""]
            for name, e in with_enums:
                cm = e[field]["confusion"]
                lines += [f"{field}, {name} (rows gold, columns predicted):", "",
                          *_table(["gold \\ predicted", *cm["predicted"]],
                                  [[gold, *map(str, row)] for gold, row in zip(cm["gold"], cm["counts"])]), ""]
    with_similarity = [(name, m["similarity"]) for name, m in results if "similarity" in m]
    if with_similarity:
        names = list(with_similarity[0][1])
        lines += ["## Similarity (long free text)", "",
                  "Partial credit beside exact match: 1 − edit distance / the longer length, after the field's "
                  "normalisers, averaged over records (an unparseable answer scores 0).", "",
                  *_table(["evaluation", *names], [[name, *(_pct(sim[f]) for f in names)]
                                                   for name, sim in with_similarity]), ""]
    return lines, charts


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


def worst_errors(predictions: list[dict], field: str, k: int = 5) -> list[dict]:
    """Up to k wrong predictions of a field, unparseable answers last (they say little about the field)."""
    wrong = [p for p in predictions if not p["correct"][field]]
    wrong.sort(key=lambda p: p["parsed"] is None)
    return wrong[:k]


def plot_accuracy(results: list[tuple[str, dict]], field_names: list[str], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["exact_match", *field_names, "json_parse_rate"]
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(groups)), 4.5), dpi=120)
    width = 0.8 / max(1, len(results))
    for i, (name, m) in enumerate(results):
        stats = [m[g] if g in m else m["fields"][g] for g in groups]
        values = [100 * s["value"] for s in stats]
        errs = [[100 * (s["value"] - s["ci95"][0]) for s in stats], [100 * (s["ci95"][1] - s["value"]) for s in stats]]
        xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, values, width, yerr=errs, capsize=2, label=f"{name} (n={m['n']})")
    ax.set_xticks(range(len(groups)), [g.replace("_", "\n") for g in groups], fontsize=8)
    ax.set_ylabel("% correct (95% interval)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)


def run_report(recipe: Recipe, run_dir: Path, data_source: str | None = None, loss_diagnosis: str | None = None,
               stale: Callable[[dict], str | None] = lambda m: None,
               skipped: dict[str, str] | None = None, train_minutes: dict[str, float | None] | None = None,
               head_diagnosis: str | None = None, hourly: float | None = None) -> list[Path]:
    """`stale(metrics)` says why an evaluation no longer describes its model (it is then listed, not shown);
    `skipped` names the stages that did not apply, and why; `train_minutes` the training time behind a role."""
    from toolkit.errors import StageError

    found = collect(run_dir / "eval")
    why_stale = {name: stale(m) for name, m in found}
    left_out = [(name, why) for name, why in why_stale.items() if why]
    results = [(name, m) for name, m in found if not why_stale[name]]
    if not results:
        raise StageError(f"no current evaluations under {run_dir / 'eval'}: run `xtk eval` or `xtk run` first"
                         + "".join(f"\n  {name}: {why}" for name, why in left_out))
    fields = recipe.field_names
    lines = [f"# {recipe.name}: distillation report", ""]
    if recipe.description:
        lines += [recipe.description, ""]
    if data_source:
        lines += [f"Training labels: **{data_source}**.", ""]
    lines += ["Whole-record exact match is the tutorial's accuracy: every field equal after the recipe's "
              "normalisers; a field's accuracy compares it by its type (a list as a multiset). Micro F1 counts every "
              "field as a slot and every list item as one. Figures are % with 95% intervals (Wilson for "
              "proportions, a bootstrap for the rest).", ""]
    head = ["evaluation", "model", "test file", "n", "exact match", "JSON valid", "micro F1", *fields, "rec/s",
            "train min"]
    trained = {who: f"{t:.1f}" for who, t in (train_minutes or {}).items() if t is not None}
    lines += _table(head, [[f"{name} ({DESCRIBE[who]})" if (who := m.get("role")) in DESCRIBE else name,
                            f"`{Path(m['model']).name}`", Path(m["test_file"]).name, str(m["n"]),
                            _pct(m["exact_match"]), _pct(m["json_parse_rate"]), _pct(m["micro_f1"]),
                            *(_pct(m["fields"][f]) for f in fields), f"{m['records_per_s'] or 0:.2f}",
                            trained.get(m.get("role"), "—")]
                           for name, m in results])
    if left_out:
        lines += ["", "Left out, as they describe another model or configuration than this run's: "
                  + "; ".join(f"`{name}` ({why})" for name, why in left_out) + "."]
    if skipped:
        lines += ["", "Not run: " + "; ".join(f"{stage} ({why})" for stage, why in skipped.items()) + "."]
    typed, charts = by_type(results, run_dir)
    lines += ["", "![accuracy](accuracy.png)", "", *typed]
    if (run_dir / "loss.png").is_file():
        lines += ["## Training", "", "![loss](loss.png)", "", f"Fit: {loss_diagnosis or 'see the chart'}.", ""]
    if (run_dir / "loss-head.png").is_file():
        lines += ["![loss of the classification head](loss-head.png)", "",
                  f"Fit of the classification head: {head_diagnosis or 'see the chart'}.", ""]
    lines += teacher_lines(recipe, run_dir, results, hourly)  # gate, cost, gap closed (toolkit/teacher.py)
    lines += ["## Worst errors by field", ""]
    for name, _ in results:
        preds_path = run_dir / "eval" / name / "predictions.jsonl"
        if not preds_path.is_file():
            continue
        preds = read_jsonl(preds_path)
        lines += [f"### {name}", ""]
        for field in fields:
            errors = worst_errors(preds, field)
            if not errors:
                continue
            lines += [f"**{field}** ({sum(not p['correct'][field] for p in preds)} wrong of {len(preds)})", "",
                      "| id | input | gold | prediction |", "|---|---|---|---|"]
            for p in errors:
                got = "(no JSON) " + p["raw"][:60].replace("\n", " ") if p["parsed"] is None else \
                    json.dumps(p["parsed"].get(field), ensure_ascii=False)
                cells = [p["id"], p["input"], json.dumps(p["gold"][field], ensure_ascii=False), got]
                lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
            lines.append("")
    report = run_dir / "report.md"
    write_text(report, "\n".join(lines))
    plot_accuracy(results, fields, run_dir / "accuracy.png")
    return [report, run_dir / "accuracy.png", *charts]
