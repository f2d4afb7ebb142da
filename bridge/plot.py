"""Learning-curve PNG from a metrics CSV (written by `python -m bridge train` or `mix dqn.train`)."""

from __future__ import annotations

import csv
import os


def read_metrics(path: str) -> dict[str, list[tuple[float, float]]]:
    """(step, value) series for episode_return and eval_return; empty cells are skipped."""
    series: dict[str, list[tuple[float, float]]] = {"episode_return": [], "eval_return": []}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"step", *series} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path} is not a metrics CSV: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            for name, points in series.items():
                if row.get(name):
                    points.append((float(row["step"]), float(row[name])))
    return series


def plot_learning_curve(metrics_csv: str, out_png: str | None = None, title: str | None = None) -> str:
    """Draw episode returns (raw and a 20-episode moving mean) and greedy evaluations.

    Returns:
      the path of the PNG written (default: learning_curve.png beside the CSV).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(metrics_csv)
    out_png = out_png or os.path.join(os.path.dirname(os.path.abspath(metrics_csv)), "learning_curve.png")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    episodes = series["episode_return"]
    if episodes:
        steps, returns = zip(*episodes)
        ax.plot(steps, returns, color="tab:blue", alpha=0.25, linewidth=0.8, label="episode return")
        window = 20
        means = [sum(returns[max(0, i - window + 1):i + 1]) / (i + 1 - max(0, i - window + 1))
                 for i in range(len(returns))]
        ax.plot(steps, means, color="tab:blue", linewidth=1.8, label=f"mean of last {window} episodes")
    if series["eval_return"]:
        steps, returns = zip(*series["eval_return"])
        ax.plot(steps, returns, "o-", color="tab:orange", linewidth=1.5, markersize=4, label="greedy evaluation")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title or os.path.basename(os.path.dirname(os.path.abspath(metrics_csv))) or "learning curve")
    ax.grid(alpha=0.3)
    if episodes or series["eval_return"]:
        ax.legend(loc="best", framealpha=0.85)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
