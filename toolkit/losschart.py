"""loss.png: train and eval loss on one chart, and a one-line fit diagnosis by the tutorial's rule."""

from __future__ import annotations

from pathlib import Path


def loss_series(log_rows: list[dict]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, loss) for training and for evaluation, from ms-swift's logging.jsonl rows."""
    train, evals = [], []
    for row in log_rows:
        step = row.get("global_step/max_steps")
        if not step:
            continue
        n = int(step.split("/")[0])
        if "loss" in row:
            train.append((n, float(row["loss"])))
        if "eval_loss" in row:
            evals.append((n, float(row["eval_loss"])))
    return train, evals


def _trend(values: list[float], tolerance: float = 0.05) -> str:
    """falling / rising / flat over the last third of the run (at least 4 points), by relative change."""
    tail = values[-max(4, len(values) // 3):]
    if len(tail) < 2:
        return "flat"
    half = len(tail) // 2
    before, after = sum(tail[:half]) / half, sum(tail[half:]) / (len(tail) - half)
    change = (after - before) / max(abs(before), 1e-8)
    return "falling" if change < -tolerance else "rising" if change > tolerance else "flat"


def diagnose(train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> str:
    """The tutorial's rule: both still falling -> under-fit; eval rising while train falls -> over-fit;
    both flat -> good."""
    if len(train) < 2:
        return "too few logged steps to judge the fit"
    t = _trend([v for _, v in train])
    e = _trend([v for _, v in evals]) if len(evals) >= 2 else None
    if e == "rising" and t != "rising":
        return "over-fit: eval loss rises while train loss falls; use fewer epochs, more data or a lower rank"
    if t == "falling" and e in ("falling", None):
        return "under-fit: loss is still falling at the end; add epochs (or steps) or LoRA rank"
    if t == "flat" and e in ("flat", None):
        return "good fit: train and eval loss have levelled off"
    return f"unclear: train loss {t}, eval loss {e or 'not measured'}"


def plot_loss(log_rows: list[dict], out_png: Path) -> str:
    """Write the chart; returns the diagnosis (also printed as the chart's subtitle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = loss_series(log_rows)
    verdict = diagnose(train, evals)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss", fontsize=11)
    fig.text(0.5, 0.01, verdict, ha="center", fontsize=8, wrap=True)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return verdict
