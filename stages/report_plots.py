"""The report's figures: forgetting bars with intervals, held-out loss curves, run comparison.

    from stages import report_plots
    report_plots.plot_report(report, Path("runs/demo/report/forgetting.png"))
    report_plots.plot_training_curves(report["training_curves"], Path("runs/demo/report/training_curves.png"))
    report_plots.plot_compare(rows, ["a", "b"], Path("compare/compare.png"))   # stages/compare.py

Bars are coloured by the bootstrap verdict (``stages/intervals.py``), not by
the raw sign of the delta. On the forgetting chart the base bar carries the
95% interval of its own value; every other bar carries base + the paired 95%
interval of its delta, so an error bar that crosses the dashed base line is a
change that the items cannot tell from noise. The ``*_figure`` functions
return the figure (tests inspect it); the ``plot_*`` ones save and close it.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from stages.forgetting import baseline_of, fmt

COLOURS = {"base": "#9e9e9e", "improved": "#2e7d32", "forgot": "#c62828",
           "no significant change": "#1565c0", "no interval": "#e0e0e0"}
ERRORBAR = {"fmt": "none", "ecolor": "#212121", "elinewidth": 1.1, "capsize": 3, "zorder": 5}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # headless: runs on cluster nodes without a display
    import matplotlib.pyplot as plt
    return plt


def _grid(plt, count: int, width: float = 3.8, height: float = 3.2):
    ncols = max(1, min(4, count))
    nrows = max(1, math.ceil(count / ncols))
    # At least 6 inches wide, so the title and the legend of a one-panel figure still fit.
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.0, width * ncols), height * nrows + 0.8),
                             squeeze=False, layout="constrained")
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    return fig, list(axes.flat)[:count]


def _save(fig, path: Path) -> None:
    try:
        fig.savefig(path, format="png", dpi=120)
    finally:
        _pyplot().close(fig)


def _title(ax, m: dict) -> None:
    arrow = "↑" if m["higher_is_better"] else "↓"
    # Wrap long names at "/" (not mid-word); a no-break space keeps "(↑ better)" whole.
    title = f"{m['suite']}: {m['name']} ({arrow}\u00a0better)"
    lines = textwrap.wrap(title.replace("/", "/ "), 34 + title.count("/"))
    ax.set_title("\n".join(lines).replace("/ ", "/"), fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _errorbar(ax, x: float, span: list[float] | None) -> float | None:
    """A vertical error bar over ``span``; returns its top (None when there is no span)."""
    if span is None:
        return None
    lo, hi = span
    ax.errorbar([x], [(lo + hi) / 2], yerr=[[(hi - lo) / 2], [(hi - lo) / 2]], **ERRORBAR)
    return hi


def error_span(m: dict, ckpt: str, base: str) -> list[float] | None:
    """What the bar of ``ckpt`` shows: base's own interval, or base + the delta interval."""
    if ckpt == base:
        return m.get("interval", {}).get(ckpt)
    d_int, base_value = m.get("delta_interval", {}).get(ckpt), m["values"].get(base)
    return None if d_int is None or base_value is None else [base_value + d_int[0], base_value + d_int[1]]


def _panel(ax, m: dict, ckpts: list[str], base: str) -> None:
    """One metric: a bar per checkpoint coloured by verdict, error bars, value and Δ on top."""
    heights = [m["values"][c] or 0.0 for c in ckpts]
    colours = [COLOURS["base"] if c == base else COLOURS[m.get("verdict", {}).get(c, "no interval")]
               for c in ckpts]
    ax.bar(range(len(ckpts)), heights, color=colours, edgecolor="#424242", linewidth=0.6,
           tick_label=ckpts)
    tops = []
    for i, c in enumerate(ckpts):
        top = max(heights[i], _errorbar(ax, i, error_span(m, c, base)) or 0.0)
        tops.append(top)
        delta = m["delta"].get(c)
        label = fmt(m["values"][c], m["name"])
        label += "" if delta is None else f"\n{fmt(delta, m['name'], signed=True)}"
        ax.annotate(label, (i, top), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8, zorder=6,
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.5})
    if m["values"][base] is not None:
        ax.axhline(m["values"][base], color="#424242", linestyle="--", linewidth=1, zorder=3)
    top = max(tops) if tops else 0.0
    ax.set_ylim(0, top * 1.35 if top > 0 else 1.0)  # headroom for the two-line labels
    _title(ax, m)


def forgetting_figure(report: dict):
    """The forgetting grid (≤ 4 columns), one panel per metric; dashed line = baseline."""
    plt = _pyplot()
    metrics, base, ckpts = report["metrics"], baseline_of(report), report["checkpoints"]
    fig, axes = _grid(plt, len(metrics))
    for ax, m in zip(axes, metrics):
        _panel(ax, m, ckpts, base)
    shown = {m.get("verdict", {}).get(c, "no interval") for m in metrics for c in ckpts if c != base}
    _legend(fig, {"base": base} | {v: v for v in COLOURS if v in shown},
            f"error bars: {base} = 95% interval of its value; others = {base} + paired 95% "
            f"interval of Δ (crossing the dashed line: no significant change)")
    fig.suptitle(f"Forgetting: each checkpoint against {base} (dashed line)", fontweight="bold")
    return fig


def _legend(fig, labels: dict[str, str], note: str) -> None:
    """Colour key under the grid, and under it what the error bars are (wrapped to the width)."""
    from matplotlib.patches import Patch
    handles = [Patch(color=COLOURS[k], label=text) for k, text in labels.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=max(1, len(handles)),
               frameon=False, fontsize=8, title=textwrap.fill(note, int(fig.get_figwidth() * 14)),
               title_fontsize=8)


def plot_report(report: dict, path: Path) -> None:
    _save(forgetting_figure(report), path)


def training_curves_figure(curves: dict[str, dict]):
    """One panel per stage: domain and general held-out loss against the optimiser step."""
    plt = _pyplot()
    fig, axes = _grid(plt, len(curves), width=4.6, height=3.2)
    for ax, (stage, curve) in zip(axes, curves.items()):
        for key, colour in (("domain_loss", "#6a1b9a"), ("general_loss", "#ef6c00")):
            pts = [p for p in curve["points"] if p.get(key) is not None]
            if pts:
                ax.plot([p["step"] for p in pts], [p[key] for p in pts], marker="o", markersize=3,
                        color=colour, label=key.removesuffix("_loss"))
        ax.set_title(f"{stage}: held-out loss (every {curve.get('every') or '?'} steps)", fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("loss (nats/token)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle("Held-out loss during training", fontweight="bold")
    return fig


def plot_training_curves(curves: dict[str, dict], path: Path) -> None:
    _save(training_curves_figure(curves), path)


def compare_figure(rows: list[dict], names: list[str]):
    """One panel per metric, one bar per run: the compared checkpoint's Δ against its run's base."""
    plt = _pyplot()
    fig, axes = _grid(plt, len(rows), width=max(3.8, 0.9 * len(names) + 1.5))
    for ax, row in zip(axes, rows):
        cells = [row["runs"].get(n) or {} for n in names]
        ax.bar(range(len(names)), [c.get("delta") or 0.0 for c in cells], tick_label=names,
               color=[COLOURS[c.get("verdict", "no interval")] for c in cells],
               edgecolor="#424242", linewidth=0.6)
        for i, c in enumerate(cells):
            _errorbar(ax, i, c.get("delta_interval"))
            if c.get("delta") is not None:  # a zero delta draws no bar: the label still shows it
                ax.annotate(fmt(c["delta"], row["name"], signed=True), (i, c["delta"]),
                            xytext=(8, 0), textcoords="offset points", fontsize=8, va="center",
                            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.5})
        ax.axhline(0, color="#424242", linewidth=1)
        _title(ax, row)
        ax.set_ylabel("Δ against the run's base", fontsize=8)
    shown = {(row["runs"].get(n) or {}).get("verdict", "no interval") for row in rows for n in names}
    _legend(fig, {v: v for v in COLOURS if v in shown}, "error bars: paired 95% interval of Δ")
    shown = sorted({c["checkpoint"] for row in rows for c in row["runs"].values() if c})
    fig.suptitle(f"{'/'.join(shown) or 'Last checkpoint'} against each run's base", fontweight="bold")
    return fig


def plot_compare(rows: list[dict], names: list[str], path: Path) -> None:
    _save(compare_figure(rows, names), path)
