"""loss.png: train and eval loss on one chart, and a one-line fit diagnosis by the tutorial's rule."""

from __future__ import annotations

from pathlib import Path

from toolkit.io.jsonl import save_figure


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
    """falling / rising / flat over the last third of the run (at least 4 points): the least-squares slope,
    counted only when the change it predicts over that window exceeds `tolerance` (relative) and the slope is
    at least three times its standard error, so per-step noise of small batches reads as flat."""
    tail = values[-max(4, len(values) // 3):]
    n = len(tail)
    if n < 2:
        return "flat"
    xm, ym = (n - 1) / 2, sum(tail) / n
    sxx = sum((x - xm) ** 2 for x in range(n))
    slope = sum((x - xm) * (y - ym) for x, y in enumerate(tail)) / sxx
    change = slope * (n - 1) / max(abs(ym), 1e-8)
    if n > 2:
        residual = sum((y - ym - slope * (x - xm)) ** 2 for x, y in enumerate(tail)) / (n - 2)
        if abs(slope) < 3 * (residual / sxx) ** 0.5:
            return "flat"
    return "falling" if change < -tolerance else "rising" if change > tolerance else "flat"


def diagnose(train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> str:
    """The tutorial's rule: loss still falling -> under-fit; eval rising while train does not -> over-fit;
    levelled off -> good. Eval loss, averaged over many rows, is the steadier signal and decides when there
    is one."""
    if len(train) < 2:
        return "too few logged steps to judge the fit"
    t = _trend([v for _, v in train])
    e = _trend([v for _, v in evals]) if len(evals) >= 2 else None
    if e == "rising" and t != "rising":
        return "over-fit: eval loss rises while train loss does not; use fewer epochs, more data or a lower rank"
    if (e or t) == "falling":
        return "under-fit: loss is still falling at the end; add epochs (or steps) or LoRA rank"
    if (e or t) == "flat" and t != "rising":
        return "good fit: loss has levelled off"
    return f"unclear: train loss {t}, eval loss {e or 'not measured'}"


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing), debiased at the start."""
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** i))
    return out


def log_scale_helps(values: list[float]) -> bool:
    """A loss that falls over more than a decade: on a linear axis its end is flat against the start."""
    positive = [v for v in values if v > 0]
    return len(positive) == len(values) > 1 and max(positive) / min(positive) >= 10


def plot_loss(log_rows: list[dict], out_png: Path) -> str:
    """Write the chart; returns the diagnosis (also printed as the chart's subtitle)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = loss_series(log_rows)
    verdict = diagnose(train, evals)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        steps, values = zip(*train)
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
        ax.plot(steps, _smooth(list(values)), label="train loss (smoothed)", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if log_scale_helps([v for _, v in train + evals]):
        ax.set_yscale("log")
        ax.set_ylabel("loss (log scale)")
    ax.set_title("Training loss", fontsize=11)
    fig.text(0.5, 0.01, verdict, ha="center", fontsize=8, wrap=True)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, out_png)
    plt.close(fig)
    return verdict
