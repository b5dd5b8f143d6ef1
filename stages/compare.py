"""Side by side: one checkpoint (the last by default) of several runs, each against its own base.

    cptift compare runs/a runs/b                          # prints the table, writes runs/compare/compare.{md,png}
    cptift compare runs/a runs/b --names lr1e-5,lr3e-5 --checkpoint cpt --out runs/compare-lr

    from stages.compare import compare_runs
    text, paths = compare_runs([Path("runs/a"), Path("runs/b")], names=["a", "b"], out_dir=Path("cmp"))

Each run's ``report/forgetting.json`` (``stages/forgetting.py``) already holds,
per metric, the last checkpoint's value, its delta against that run's base,
the paired bootstrap interval of that delta and its verdict; this module only
lines them up per ``(suite, metric)``.

When the runs evaluated the same items (their base evaluations hold the same
per-item scores: same base model, same suites), each later run is also
compared with the first one directly, run minus first, with the same paired
bootstrap over those shared items (``stages.intervals``) and a verdict: that
is the test of one recipe against another. It still covers the sampling
noise of the items only, not the seed-to-seed variance of training: one
training run per recipe cannot show that.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from corpora.manifest import write_atomic
from stages import forgetting, intervals
from stages.config import ConfigError
from stages.forgetting import _md_row, baseline_of, fmt, fmt_interval


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


def last_cell(report: dict, suite: str, name: str, checkpoint: str | None = None) -> dict | None:
    """The checkpoint's (default: the last) value, Δ, Δ interval and verdict for one metric (None when absent)."""
    last = checkpoint or report["checkpoints"][-1]
    for m in report["metrics"]:
        if (m["suite"], m["name"]) == (suite, name) and m["values"].get(last) is not None:
            return {"checkpoint": last, "value": m["values"][last],
                    "delta": m["delta"].get(last),
                    "delta_interval": m.get("delta_interval", {}).get(last),
                    "verdict": m.get("verdict", {}).get(last, "no interval")}
    return None


def compare_rows(reports: dict[str, dict], checkpoint: str | None = None) -> list[dict]:
    """Per (suite, metric) in order of first appearance: ``{suite, name, higher_is_better, runs}``."""
    rows = {}
    for report in reports.values():
        for m in report["metrics"]:
            rows.setdefault((m["suite"], m["name"]), {"suite": m["suite"], "name": m["name"],
                                                      "higher_is_better": m["higher_is_better"]})
    for (suite, name), row in rows.items():
        row["runs"] = {n: last_cell(r, suite, name, checkpoint) for n, r in reports.items()}
    return list(rows.values())


# One run against another: "forgot" would say the first run is where the second came from.
RUN_VERDICTS = {"forgot": "worse", "improved": "better", "no significant change": "no significant difference",
                "no interval": "no interval"}


def against_first(run_dirs: dict[str, Path], checkpoint: str, rows: list[dict]) -> None:
    """Add ``row["vs_first"] = {run: {delta, delta_interval, verdict}}`` where the runs share their items.

    Nothing is added when the base evaluations differ: then the runs were not scored on the same items,
    and only their deltas against their own bases can be read side by side. Each run is tested against
    the first as the forgetting report tests a checkpoint against base (``forgetting.build_report``).
    """
    if len(run_dirs) < 2 or not _same_items([forgetting.load_evals(d, ["base"])["base"] for d in run_dirs.values()]):
        return
    evals = {n: forgetting.load_evals(d, [checkpoint])[checkpoint] for n, d in run_dirs.items()}
    first = next(iter(evals))
    cross = {(m["suite"], m["name"]): m for m in forgetting.build_report(evals, baseline=first)["metrics"]}
    for row in rows:
        m = cross.get((row["suite"], row["name"]))
        if m is None or m["values"][first] is None:
            continue
        row["vs_first"] = {n: {"delta": m["delta"][n], "delta_interval": m["delta_interval"][n],
                               "verdict": RUN_VERDICTS[m["verdict"][n]]}
                           for n in m["delta"] if m["values"][n] is not None}


def _same_items(bases: list[dict]) -> bool:
    """The base evaluations hold the same per-item data for every metric that has it in all of them."""
    units = [{(m["suite"], m["name"]): u for m in b["metrics"] if (u := intervals.units_of(m)) is not None}
             for b in bases]
    shared = set(units[0]).intersection(*units[1:])
    return bool(shared) and all(np.array_equal(u[k], units[0][k]) for u in units[1:] for k in shared)


def _cell_text(cell: dict | None, name: str) -> str:
    if cell is None:
        return "-"
    if cell["delta"] is None:
        return fmt(cell["value"], name)
    interval = fmt_interval(cell["delta_interval"], name, signed=True)
    delta = fmt(cell["delta"], name, signed=True) + (f" {interval}" if interval else "")
    return f"{fmt(cell['value'], name)} (Δ {delta}, {cell['verdict']})"


def render_compare(reports: dict[str, dict], rows: list[dict], checkpoint: str | None = None) -> str:
    """One Markdown table: suite, metric, per run ``value (Δ Δ-interval, verdict)``, then run − first."""
    names, first = list(reports), next(iter(reports))
    paired = any("vs_first" in row for row in rows)
    header = ["suite", "metric"] + [f"{n} (Δ vs its base [95%], verdict)" for n in names]
    header += [f"{n} − {first} [95%], verdict" for n in names[1:]] if paired else []
    lines = [_md_row(header), _md_row(["---"] * len(header))]
    for row in rows:
        cells = [_cell_text(row["runs"][n], row["name"]) for n in names]
        if paired:
            cells += [_vs_text(row.get("vs_first", {}).get(n), row["name"]) for n in names[1:]]
        lines.append(_md_row([row["suite"], row["name"], *cells]))
    runs = [f"- {n}: `{checkpoint or r['checkpoints'][-1]}` against `{baseline_of(r)}`" for n, r in reports.items()]
    how = (f"The last columns test each run against {first} directly: both were scored on the same items, "
           "so the difference is resampled over those items jointly (paired bootstrap)." if paired else
           "The runs were not scored on the same items, so they are not tested against each other.")
    return "\n".join(["# Comparison of runs", "", *runs, "",
                      "Each Δ is against that run's own base, with its report's paired interval and verdict. "
                      + how + " Intervals cover the items' sampling noise, not the variance between training "
                      "runs with other seeds.", "", *lines, ""])


def _vs_text(cell: dict | None, name: str) -> str:
    if cell is None:
        return "-"
    interval = fmt_interval(cell["delta_interval"], name, signed=True)
    return f"{fmt(cell['delta'], name, signed=True)}{f' {interval}' if interval else ''}, {cell['verdict']}"


def compare_runs(run_dirs: list[Path], names: list[str] | None = None, out_dir: Path = Path("compare"),
                 checkpoint: str | None = None) -> tuple[str, dict[str, Path]]:
    """Read the reports, write ``compare.md`` and ``compare.png`` into ``out_dir``; returns the text."""
    from stages import report_plots

    reports = load_reports(run_dirs, names)
    missing = [n for n, r in reports.items() if checkpoint and checkpoint not in r["checkpoints"]]
    if missing:
        raise ConfigError(f"--checkpoint {checkpoint}: run {missing[0]} has no such checkpoint")
    rows = compare_rows(reports, checkpoint)
    shown = {checkpoint or r["checkpoints"][-1] for r in reports.values()}
    if len(shown) == 1:  # one checkpoint of every run: the runs can be tested against each other
        against_first(dict(zip(reports, map(Path, run_dirs))), shown.pop(), rows)
    text = render_compare(reports, rows, checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "compare.md", "png": out_dir / "compare.png"}
    write_atomic(paths["png"], lambda p: report_plots.plot_compare(rows, list(reports), p))
    write_atomic(paths["md"], lambda p: p.write_text(text, encoding="utf-8"))
    return text, paths
