"""Compare eval results across checkpoints: how much did CPT and IFT forget?

    from stages.forgetting import load_evals, build_report, write_report
    evals = load_evals(Path("runs/demo"), ["base", "cpt", "ift"])
    paths = write_report(build_report(evals, gates=gate_results), Path("runs/demo/report"))

Every ``<run_dir>/<ckpt>/eval.json`` holds a flat list of metrics; the report
lines them up per ``(suite, name)`` and gives each later checkpoint's delta
against the baseline (``base``), signed as value minus baseline. ``forgot``
respects ``higher_is_better``, so a rising perplexity counts as forgetting.
The report is written as JSON (the contract), Markdown (for humans and the
model card) and a PNG with one small bar chart per metric.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

SUITE_ORDER = ("general", "domain")  # other suites follow, in order of appearance
DIGITS = 6  # rounding of stored values and deltas, to drop float noise like 0.0899999
COLOURS = {"base": "#9e9e9e", "better": "#2e7d32", "worse": "#c62828", "same": "#1565c0"}
CHECKPOINTS = ["base", "cpt", "ift"]  # pipeline order; base is the baseline


def load_evals(run_dir: Path, checkpoints: list[str]) -> dict[str, dict]:
    """Read ``run_dir/<ckpt>/eval.json`` for each checkpoint, in pipeline order."""
    evals = {}
    for ckpt in checkpoints:
        path = Path(run_dir) / ckpt / "eval.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing; it is written by pipeline step 'eval_{ckpt}' "
                f"(re-run `cptift run` to resume, it skips finished steps)")
        evals[ckpt] = json.loads(path.read_text(encoding="utf-8"))
    return evals


def build_report(evals: dict[str, dict], baseline: str = "base",
                 gates: list[dict] | None = None) -> dict:
    """Line up every metric across checkpoints and compute deltas against ``baseline``."""
    if baseline not in evals:
        raise ValueError(f"baseline checkpoint {baseline!r} is missing from the evals "
                         f"(have {list(evals)}); evaluate it first (step 'eval_{baseline}')")
    checkpoints = list(evals)
    metrics = [_metric_row(key, hib, vals, checkpoints, baseline)
               for key, (hib, vals) in _ordered(_collect(evals))]
    return {"checkpoints": checkpoints, "metrics": metrics, "gates": list(gates or [])}


def _collect(evals: dict[str, dict]) -> dict[tuple[str, str], tuple[bool, dict]]:
    """(suite, name) -> (higher_is_better, {ckpt: value}), in order of first appearance."""
    table: dict[tuple[str, str], tuple[bool, dict]] = {}
    for ckpt, ev in evals.items():
        for m in ev.get("metrics", []):
            key = (m["suite"], m["name"])
            hib, vals = table.setdefault(key, (bool(m["higher_is_better"]), {}))
            # A flipped direction or a repeated metric would silently corrupt `forgot`.
            if bool(m["higher_is_better"]) != hib or ckpt in vals:
                raise ValueError(f"{ckpt}: metric {key} is repeated or flips higher_is_better")
            vals[ckpt] = m["value"]
    return table


def _ordered(table: dict) -> list:
    """Known suites first (general, domain); the stable sort keeps first appearance within one."""
    known = {suite: i for i, suite in enumerate(SUITE_ORDER)}
    return sorted(table.items(), key=lambda item: known.get(item[0][0], len(known)))


def _metric_row(key: tuple[str, str], hib: bool, vals: dict, checkpoints: list[str],
                baseline: str) -> dict:
    """One metric of the report: values, delta, relative_delta and forgot flags."""
    values = {c: _num(vals.get(c)) for c in checkpoints}
    base = values[baseline]
    row = {"suite": key[0], "name": key[1], "higher_is_better": hib, "values": values,
           "delta": {}, "relative_delta": {}, "forgot": {}}
    for c in [c for c in checkpoints if c != baseline]:
        delta = None if base is None or values[c] is None else round(values[c] - base, DIGITS)
        row["delta"][c] = delta
        row["relative_delta"][c] = (None if delta is None or base == 0
                                    else round(delta / abs(base), DIGITS))
        # Unknown (None) rather than False: a missing value is not evidence of no forgetting.
        row["forgot"][c] = None if delta is None else (delta < 0 if hib else delta > 0)
    return row


def _num(value: float | None) -> float | None:
    """Round to DIGITS; NaN/inf (a diverged eval) become None so the JSON stays valid."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), DIGITS)


def _baseline(report: dict) -> str:
    """The one checkpoint that has no delta (the report keeps the JSON contract's keys)."""
    with_delta = {c for m in report["metrics"] for c in m["delta"]}
    rest = [c for c in report["checkpoints"] if c not in with_delta]
    return rest[0] if rest else report["checkpoints"][0]


def _fmt(value: float | None, name: str, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    # Perplexities live around 5-50, so 2 decimals; rates and accuracies in [0, 1] need 3.
    text = f"{abs(value) if signed else value:.{2 if 'perplexity' in name else 3}f}"
    return (("−" if value < 0 else "+") + text) if signed else text


def _verdict(m: dict, ckpt: str) -> str:
    """'worse' / 'better' / 'same' / 'missing' for one checkpoint of one metric."""
    forgot = m["forgot"].get(ckpt)
    if forgot is None:
        return "missing"
    return "worse" if forgot else ("better" if m["delta"][ckpt] else "same")


def _cell(m: dict, ckpt: str) -> str:
    value = _fmt(m["values"][ckpt], m["name"])
    if ckpt not in m["delta"] or m["delta"][ckpt] is None:
        return value
    rel = m["relative_delta"][ckpt]
    pct = "" if rel is None else f", {'−' if rel < 0 else '+'}{abs(rel) * 100:.1f}%"
    marker = {"worse": " ▼ worse", "better": " ▲ better"}.get(_verdict(m, ckpt), "")
    return f"{value} ({_fmt(m['delta'][ckpt], m['name'], signed=True)}{pct}){marker}"


def render_markdown(report: dict) -> str:
    """A Markdown page: legend, one table per suite, then the gates."""
    base, ckpts = _baseline(report), report["checkpoints"]
    lines = ["# Forgetting report", "",
             f"Deltas (Δ) are each checkpoint minus the **{base}** model, in absolute units "
             f"and as % of {base}. ↑ marks metrics where higher is better, ↓ where lower is "
             f"better; ▼ worse means the change went in the bad direction (forgetting), "
             f"▲ better the good one. n/a: the metric was not measured for that checkpoint.", ""]
    for suite in dict.fromkeys(m["suite"] for m in report["metrics"]):
        header = ["metric", base] + [f"{c} (Δ)" for c in ckpts if c != base]
        lines += [f"## {suite}", "", _md_row(header), _md_row(["---"] * len(header))]
        for m in (m for m in report["metrics"] if m["suite"] == suite):
            arrow = "↑" if m["higher_is_better"] else "↓"
            lines.append(_md_row([f"{m['name']} {arrow}", _cell(m, base)]
                                 + [_cell(m, c) for c in ckpts if c != base]))
        lines.append("")
    if report["gates"]:
        lines += ["## Gates", ""] + [_gate_line(g) for g in report["gates"]] + [""]
    return "\n".join(lines)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _gate_line(gate: dict) -> str:
    detail = f" — {gate['detail']}" if gate.get("detail") else ""
    return f"- **{'PASS' if gate.get('passed') else 'FAIL'}** {gate.get('rule', '?')}{detail}"


def plot(report: dict, path: Path) -> None:
    """A PNG grid (≤ 4 columns) with one bar chart per metric; dashed line = baseline."""
    import matplotlib
    matplotlib.use("Agg")  # headless: runs on cluster nodes without a display
    import matplotlib.pyplot as plt

    metrics, base = report["metrics"], _baseline(report)
    ncols = max(1, min(4, len(metrics)))
    nrows = max(1, math.ceil(len(metrics) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.2 * nrows + 0.6),
                             squeeze=False, layout="constrained")
    try:
        for ax, m in zip(axes.flat, metrics):
            _panel(ax, m, report["checkpoints"], base)
        for ax in list(axes.flat)[len(metrics):]:
            ax.axis("off")
        _legend(fig, metrics, report["checkpoints"], base)
        fig.suptitle(f"Forgetting: each checkpoint against {base} (dashed line)",
                     fontweight="bold")
        fig.savefig(path, format="png", dpi=120)
    finally:
        plt.close(fig)


def _legend(fig, metrics: list[dict], ckpts: list[str], base: str) -> None:
    """Colour key under the grid; "same as base" only appears when a metric did not move."""
    from matplotlib.patches import Patch
    shown = {"base"} | {_verdict(m, c) for m in metrics for c in ckpts if c != base}
    names = {"base": base, "better": f"better than {base}", "worse": f"worse than {base}",
             "same": f"same as {base}"}
    handles = [Patch(color=COLOURS[k], label=names[k]) for k in COLOURS if k in shown]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, frameon=False)


def _panel(ax, m: dict, ckpts: list[str], base: str) -> None:
    """One metric: a bar per checkpoint, coloured by verdict, value printed on top."""
    heights = [m["values"][c] or 0.0 for c in ckpts]
    colours = [COLOURS["base"] if c == base else COLOURS.get(_verdict(m, c), "white")
               for c in ckpts]
    bars = ax.bar(ckpts, heights, color=colours, edgecolor="#424242", linewidth=0.6)
    for text in ax.bar_label(bars, labels=[_bar_label(m, c) for c in ckpts], padding=2,
                             fontsize=8, zorder=4):
        # An opaque box so the dashed baseline cannot strike through a label near it.
        text.set_bbox({"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.5})
    if m["values"][base] is not None:
        ax.axhline(m["values"][base], color="#424242", linestyle="--", linewidth=1, zorder=3)
    top = max(heights) if heights else 0.0
    ax.set_ylim(0, top * 1.3 if top > 0 else 1.0)  # headroom for the two-line labels
    arrow = "↑" if m["higher_is_better"] else "↓"
    # Wrap long names at "/" (not mid-word); a no-break space keeps "(↑ better)" whole.
    title = f"{m['suite']}: {m['name']} ({arrow}\u00a0better)"
    lines = textwrap.wrap(title.replace("/", "/ "), 34 + title.count("/"))
    ax.set_title("\n".join(lines).replace("/ ", "/"), fontsize=10)
    ax.tick_params(labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _bar_label(m: dict, ckpt: str) -> str:
    """Value, and below it the delta against the baseline (none on the baseline bar)."""
    value, delta = _fmt(m["values"][ckpt], m["name"]), m["delta"].get(ckpt)
    return value if delta is None else f"{value}\n{_fmt(delta, m['name'], signed=True)}"


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp file in the same directory, then os.replace (atomic on POSIX)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write forgetting.{md,png,json} into ``out_dir``; returns {"json"|"md"|"png": path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"forgetting.{k}" for k in ("json", "md", "png")}
    _atomic_write(paths["md"], lambda p: p.write_text(render_markdown(report), encoding="utf-8"))
    _atomic_write(paths["png"], lambda p: plot(report, p))
    # JSON last: it is the contract file, so its presence means the whole report exists.
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(paths["json"], lambda p: p.write_text(text, encoding="utf-8"))
    return paths


def report_run(run_dir: Path) -> tuple[dict, dict[str, Path]]:
    """Rebuild ``<run_dir>/report/`` from the checkpoints' eval.json files."""
    report = build_report(load_evals(Path(run_dir), CHECKPOINTS))
    return report, write_report(report, Path(run_dir) / "report")
