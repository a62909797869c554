"""PNG plots of diversity results (matplotlib, Agg backend: no display needed).

Every function takes several models' results at once -- a mapping label -> the contents of a
`diversity.json` -- so the diversity stage draws one model and a comparison draws many on the
same figure.
"""

from __future__ import annotations

import math

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# (key in diversity.json, panel title); higher = more diverse for all but the last two
METRICS = (
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("distinct_3", "distinct-3"),
    ("100_minus_self_bleu", "100 − Self-BLEU"),
    ("semantic_diversity", "semantic diversity"),
    ("distinct_answers", "distinct answers / prompt"),
    ("mean_token_entropy", "mean token entropy (nats)"),
    ("accuracy", "accuracy (pass@1)"),
)


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def plot_pass_at_k(results: Mapping[str, dict], path: str | Path, title: str = "pass@k") -> Path:
    """One pass@k curve (k = 1..N, log2 x axis) per model."""
    if not results:
        raise ValueError("plot_pass_at_k: no results to draw")
    path = Path(path)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for (label, result), color in zip(results.items(), _colors(len(results))):
        curve = sorted((int(k), v) for k, v in result["pass_at_k"].items())
        ax.plot([k for k, _ in curve], [v for _, v in curve], marker="o", markersize=3, label=label, color=color)
    ax.set_xscale("log", base=2)
    n = max(int(k) for result in results.values() for k in result["pass_at_k"])
    ticks = [2 ** i for i in range(n.bit_length()) if 2 ** i <= n] + ([n] if n & (n - 1) else [])
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def plot_metrics(results: Mapping[str, dict], path: str | Path, title: str = "diversity") -> Path:
    """One panel per metric (their scales differ), one bar per model; a metric a model lacks
    (null: not computed) is marked n/a."""
    if not results:
        raise ValueError("plot_metrics: no results to draw")
    path = Path(path)
    labels = list(results)
    colors = _colors(len(labels))
    cols = 4
    rows = -(-len(METRICS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=100, squeeze=False)
    for ax, (key, name) in zip(axes.flat, METRICS):
        values = [results[label].get(key) for label in labels]
        positions = range(len(labels))
        ax.bar(positions, [0 if v is None else v for v in values], color=colors)
        top = max([v for v in values if v is not None], default=0) or 1
        for x, v in zip(positions, values):
            text = "n/a" if v is None else f"{v:.3g}"
            ax.text(x, (0 if v is None else v) + 0.02 * top, text, ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, top * 1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xticks(list(positions))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(METRICS):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


# (stage, key in a logging row, panel title) for the training curves
TRAINING_CURVES = (
    ("sft", "loss", "SFT loss"),
    ("sft", "ce", "SFT cross-entropy / token"),
    ("sft", "mask_rate", "SFT mask rate (SED: flexible tokens)"),
    ("rl", "reward", "RL reward (mean over the step's completions)"),
)


def plot_training(runs: Mapping[str, Mapping[str, list[dict]]], path: str | Path,
                  title: str = "training") -> Path:
    """Training curves of several runs on one figure: label -> {"sft": rows, "rl": rows}, each
    row a logging step ({"step": s, "loss": ..., ...}: sft/metrics.jsonl lines or a trainer's
    log_history). One panel per curve, one line per run; a panel no run has data for says so."""
    if not runs:
        raise ValueError("plot_training: no runs to draw")
    path = Path(path)
    colors = _colors(len(runs))
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), dpi=100, squeeze=False)
    for ax, (stage, key, name) in zip(axes.flat, TRAINING_CURVES):
        drawn = False
        for (label, run), color in zip(runs.items(), colors):
            points = sorted((row["step"], row[key]) for row in run.get(stage) or ()
                            if row.get(key) is not None and row.get("step") is not None)
            if points:
                ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=2,
                        linewidth=1.2, label=label, color=color)
                drawn = True
        if drawn:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"{stage.upper()} step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def plot_seeds(aggregates: Mapping[str, Mapping[str, Mapping[str, dict]]], path: str | Path,
               title: str = "over seeds", names: tuple[str, ...] = ("average", "tiny"),
               ylabel: str = "accuracy (points)") -> Path:
    """Every seed's accuracy (dots) with the mean and its 95 % interval (bar), one panel per
    benchmark in `names` that the results hold (the mean of the eight, the tiny test set), one
    column per experiment and stage. aggregates: experiment -> stage -> benchmark ->
    sedsft.stats.interval(...)."""
    panels = [n for n in names if any(n in by_stage[s] for by_stage in aggregates.values() for s in by_stage)]
    if not panels:
        raise ValueError("plot_seeds: none of the benchmarks to draw is in the results")
    path = Path(path)
    ncols = min(len(panels), 5)  # many panels (diversity metrics) wrap into rows
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 + 2.5 * ncols, 4 * nrows), dpi=100, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    columns = [(e, s) for e, by_stage in aggregates.items() for s in by_stage]
    colors = dict(zip(aggregates, _colors(len(aggregates))))
    for ax, name in zip(axes.flat, panels):
        for x, (exp, stage) in enumerate(columns):
            row = aggregates[exp][stage].get(name)
            if row is None:
                continue
            values = row["values"]
            jitter = [x + 0.08 * (i - (len(values) - 1) / 2) for i in range(len(values))]
            ax.scatter(jitter, values, s=14, color=colors[exp], alpha=0.7, zorder=3)
            low, high = row["ci95"] or (row["mean"], row["mean"])
            ax.errorbar([x + 0.3], [row["mean"]], yerr=[[row["mean"] - low], [high - row["mean"]]], fmt="s",
                        color=colors[exp], capsize=4, markersize=5, zorder=4)
        ax.set_xticks(range(len(columns)), [f"{e}\n{s.upper()}" for e, s in columns], fontsize=8)
        ax.set_title({"average": "mean of the eight", "tiny": "tiny test set"}.get(name, name), fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{title}: seeds (dots), mean and 95 % interval (squares)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
