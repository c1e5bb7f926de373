"""Results for people: the plain-text table (one row per model and dataset) and the efficiency–effectiveness plot."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kd.evaluation.results import TaskResult


TABLE_METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")


def format_table(results: Sequence[TaskResult], metrics: Sequence[str] = TABLE_METRICS,
                 efficiency: Sequence[str] = ("eff_query_encode_bs1_qps", "eff_rerank_bs64_qps")) -> str:
    """A plain-text table: one row per (model, dataset); efficiency columns from the model's efficiency task."""
    eff_by_model = {r.model: r.metrics for r in results if r.task == "efficiency"}
    eff_cols = [c for c in efficiency if any(c in m for m in eff_by_model.values())]
    metric_cols = [m for m in metrics if any(m in r.metrics for r in results if r.task != "efficiency")]
    head = ["model", "dataset", "task", *metric_cols, *(c.removeprefix("eff_") for c in eff_cols)]
    rows = []
    for r in results:
        if r.task == "efficiency":
            continue
        eff = eff_by_model.get(r.model, {})
        rows.append([r.model or "-", r.dataset, r.task,
                     *(f"{r.metrics[m]:.4f}" if m in r.metrics else "" for m in metric_cols),
                     *(f"{eff[c]:.3g}" if c in eff else "" for c in eff_cols)])
    for model, eff in eff_by_model.items():
        if not any(r[0] == model for r in rows):
            rows.append([model, "-", "efficiency", *([""] * len(metric_cols)),
                         *(f"{eff[c]:.3g}" if c in eff else "" for c in eff_cols)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def plot_tradeoff(points: Sequence[Mapping[str, Any]], output: str | Path, *, xlabel: str, ylabel: str,
                  title: str | None = None, legend: bool | None = None) -> Path:
    """Efficiency–effectiveness scatter (x: queries/s, log scale; y: effectiveness), one point per model, written
    as PNG with matplotlib's Agg backend. `points`: dicts with label, x, y and optionally `yerr` (drawn as an error
    bar, e.g. the std over seeds) and `contended` (timed while other processes loaded the machine: drawn hollow and
    marked). Points are labelled beside them, or, with `legend` (default: more than 10 points, where labels beside
    them overlap), by distinct colour/marker pairs in a legend right of the axes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None and math.isfinite(p["x"])
           and math.isfinite(p["y"]) and p["x"] > 0]
    if not pts:
        raise ValueError("nothing to plot: no run has both metrics")
    from matplotlib.ticker import FuncFormatter

    def err(p: Mapping[str, Any]) -> float:  # the error bar's half-height; 0 for none (missing, single seed: NaN)
        e = p.get("yerr")
        return float(e) if e and math.isfinite(e) else 0.0

    legend = len(pts) > 10 if legend is None else legend
    fig, ax = plt.subplots(figsize=(10.5 if legend else 7.5, 5.5 if legend else 5), dpi=150)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xh<>p"
    for i, p in enumerate(sorted(pts, key=lambda p: (-p["y"], p["x"]) if legend else (p["x"], p["y"]))):
        c = colors[i % len(colors)]
        mk = markers[(i // len(colors)) % len(markers)] if legend else "o"
        hollow = bool(p.get("contended"))
        label = p["label"] + (" (timed under load)" if hollow else "")
        if err(p):
            ax.errorbar(p["x"], p["y"], yerr=err(p), fmt="none", ecolor=c, elinewidth=1.2, capsize=3, zorder=2)
        ax.scatter(p["x"], p["y"], s=70, zorder=3, marker=mk, edgecolors=c, facecolors="none" if hollow else c,
                   linewidths=1.8, label=label)
        if not legend:
            ax.annotate(label, (p["x"], p["y"]), textcoords="offset points", xytext=(7, 7 if i % 2 == 0 else -13),
                        fontsize=9)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, borderaxespad=0.0)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    xs = [p["x"] for p in pts]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    lo, hi = min(p["y"] - err(p) for p in pts), max(p["y"] + err(p) for p in pts)
    pad = max(0.02, (hi - lo) * 0.15)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or f"{ylabel} vs {xlabel}")
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output
