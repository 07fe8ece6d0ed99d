"""report: the metrics of several evaluations -> report.md (one table, per field, intervals, worst errors,
the loss chart and its diagnosis) and accuracy.png (grouped bars with interval whiskers)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from toolkit.jsonl import read_jsonl
from toolkit.recipe import Recipe

# Row order in the table: the story of the tutorial, then anything else by name.
ORDER = ("base", "student", "teacher", "rules")
DESCRIBE = {"base": "base student, detailed prompt", "student": "fine-tuned student, short prompt",
            "teacher": "teacher", "rules": "rule baseline"}


def collect(eval_dir: Path) -> list[tuple[str, dict]]:
    """(evaluation name, metrics) for every eval/<name>/metrics.json, in table order."""
    found = [(p.parent.name, json.loads(p.read_text())) for p in eval_dir.glob("*/metrics.json")]

    def key(item):
        who = item[0].split("-")[0]
        return (ORDER.index(who) if who in ORDER else len(ORDER), item[1].get("test_file", ""), item[0])

    return sorted(found, key=key)


def _pct(m: dict) -> str:
    lo, hi = m["ci95"]
    return f"{100 * m['value']:.1f} [{100 * lo:.0f}–{100 * hi:.0f}]"


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
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)


def run_report(recipe: Recipe, run_dir: Path, data_source: str | None = None, loss_diagnosis: str | None = None,
               stale: Callable[[dict], str | None] = lambda m: None) -> list[Path]:
    """`stale(metrics)` says why an evaluation no longer describes its model (it is then listed, not shown)."""
    from toolkit.errors import StageError

    found = collect(run_dir / "eval")
    left_out = [(name, why) for name, m in found if (why := stale(m))]
    results = [(name, m) for name, m in found if not stale(m)]
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
              "normalisers. Figures are % with 95% intervals (Wilson; bootstrap for micro F1).", ""]
    head = ["evaluation", "model", "test file", "n", "exact match", "JSON valid", "micro F1", *fields, "rec/s"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in results:
        who = name.split("-")[0]
        f1 = m["micro_f1"]
        cells = [f"{name} ({DESCRIBE[who]})" if who in DESCRIBE else name, f"`{Path(m['model']).name}`",
                 Path(m["test_file"]).name, str(m["n"]), _pct(m["exact_match"]), _pct(m["json_parse_rate"]),
                 f"{100 * f1['value']:.1f} [{100 * f1['ci95'][0]:.0f}–{100 * f1['ci95'][1]:.0f}]",
                 *(_pct(m["fields"][f]) for f in fields), f"{m['records_per_s'] or 0:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if left_out:
        lines += ["", "Left out, as they describe another model or configuration than this run's: "
                  + "; ".join(f"`{name}` ({why})" for name, why in left_out) + "."]
    lines += ["", "![accuracy](accuracy.png)", ""]
    if (run_dir / "loss.png").is_file():
        lines += ["## Training", "", "![loss](loss.png)", "", f"Fit: {loss_diagnosis or 'see the chart'}.", ""]
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
    report.write_text("\n".join(lines), encoding="utf-8")
    plot_accuracy(results, fields, run_dir / "accuracy.png")
    return [report, run_dir / "accuracy.png"]
