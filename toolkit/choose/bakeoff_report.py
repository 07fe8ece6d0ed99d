"""A bake-off's outputs: bakeoff.json (the figures), bakeoff.md (the tables) and bakeoff.png (mean ranks)."""

from __future__ import annotations

from pathlib import Path

from toolkit.choose.bakeoff_scores import RANKINGS, statistics, task_metric
from toolkit.choose.bakeoff_spec import Bakeoff
from toolkit.evaluate.teacher import reading
from toolkit.io.jsonl import save_figure, write_json, write_text


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
    return save_figure(fig, out_png)
