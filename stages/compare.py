"""Side by side: the last checkpoint of several runs, each against its own base.

    cptift compare runs/a runs/b                          # prints the table, writes compare/compare.{md,png}
    cptift compare runs/a runs/b --names lr1e-5,lr3e-5 --out runs/compare-lr

    from stages.compare import compare_runs
    text, paths = compare_runs([Path("runs/a"), Path("runs/b")], names=["a", "b"], out_dir=Path("cmp"))

Each run's ``report/forgetting.json`` (``stages/forgetting.py``) already holds,
per metric, the last checkpoint's value, its delta against that run's base,
the paired bootstrap interval of that delta and its verdict; this module only
lines them up per ``(suite, metric)``. It computes nothing new: in particular
it does not test one run against another, even when two runs share the same
base model and evaluation items. Read two runs' delta intervals side by side,
not as a test of their difference.
"""

from __future__ import annotations

import json
from pathlib import Path

from stages.config import ConfigError
from stages.forgetting import _atomic_write, _md_row, baseline_of, fmt, fmt_interval


def load_reports(run_dirs: list[Path], names: list[str] | None = None) -> dict[str, dict]:
    """``{name: report}``; names default to the run folders as given, made unique."""
    if names is not None and len(names) != len(run_dirs):
        raise ConfigError(f"--names gives {len(names)} names for {len(run_dirs)} runs")
    reports = {}
    for i, d in enumerate(run_dirs):
        path = Path(d) / "report" / "forgetting.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: finish `cptift run` for {d} first")
        name = names[i] if names else str(d)
        if name in reports:  # the same folder twice, or a repeated --names entry
            name = f"{name} ({i + 1})"
        reports[name] = json.loads(path.read_text(encoding="utf-8"))
    return reports


def last_cell(report: dict, suite: str, name: str) -> dict | None:
    """The last checkpoint's value, Δ, Δ interval and verdict for one metric (None when absent)."""
    last = report["checkpoints"][-1]
    for m in report["metrics"]:
        if (m["suite"], m["name"]) == (suite, name) and m["values"].get(last) is not None:
            return {"checkpoint": last, "base": baseline_of(report), "value": m["values"][last],
                    "delta": m["delta"].get(last),
                    "delta_interval": m.get("delta_interval", {}).get(last),
                    "verdict": m.get("verdict", {}).get(last, "no interval")}
    return None


def compare_rows(reports: dict[str, dict]) -> list[dict]:
    """Per (suite, metric) in order of first appearance: ``{suite, name, higher_is_better, runs}``."""
    rows = {}
    for report in reports.values():
        for m in report["metrics"]:
            rows.setdefault((m["suite"], m["name"]), {"suite": m["suite"], "name": m["name"],
                                                      "higher_is_better": m["higher_is_better"]})
    for (suite, name), row in rows.items():
        row["runs"] = {n: last_cell(r, suite, name) for n, r in reports.items()}
    return list(rows.values())


def _cell_text(cell: dict | None, name: str) -> str:
    if cell is None:
        return "-"
    if cell["delta"] is None:
        return fmt(cell["value"], name)
    interval = fmt_interval(cell["delta_interval"], name, signed=True)
    delta = fmt(cell["delta"], name, signed=True) + (f" {interval}" if interval else "")
    return f"{fmt(cell['value'], name)} (Δ {delta}, {cell['verdict']})"


def render_compare(reports: dict[str, dict], rows: list[dict]) -> str:
    """One Markdown table: suite, metric, then per run ``value (Δ Δ-interval, verdict)``."""
    names = list(reports)
    header = ["suite", "metric"] + [f"{n} (last, Δ [95%], verdict)" for n in names]
    lines = [_md_row(header), _md_row(["---"] * len(header))]
    for row in rows:
        lines.append(_md_row([row["suite"], row["name"]]
                             + [_cell_text(row["runs"][n], row["name"]) for n in names]))
    runs = [f"- {n}: `{r['checkpoints'][-1]}` against `{baseline_of(r)}`" for n, r in reports.items()]
    return "\n".join(["# Comparison of runs", "", *runs, "",
                      "Each Δ is against that run's own base; intervals and verdicts come from "
                      "each run's report (paired bootstrap over its items). Runs are not tested "
                      "against each other.", "", *lines, ""])


def compare_runs(run_dirs: list[Path], names: list[str] | None = None,
                 out_dir: Path = Path("compare")) -> tuple[str, dict[str, Path]]:
    """Read the reports, write ``compare.md`` and ``compare.png`` into ``out_dir``; returns the text."""
    from stages import report_plots

    reports = load_reports(run_dirs, names)
    rows = compare_rows(reports)
    text = render_compare(reports, rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "compare.md", "png": out_dir / "compare.png"}
    _atomic_write(paths["png"], lambda p: report_plots.plot_compare(rows, list(reports), p))
    _atomic_write(paths["md"], lambda p: p.write_text(text, encoding="utf-8"))
    return text, paths
