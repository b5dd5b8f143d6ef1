"""Compare eval results across checkpoints: how much did CPT and IFT forget?

    from stages.forgetting import load_evals, build_report, write_report
    evals = load_evals(Path("runs/demo"), ["base", "cpt", "ift"])
    paths = write_report(build_report(evals, gates=gate_results), Path("runs/demo/report"))
    cptift report runs/demo        # the same from the command line (report_run)

Every ``<run_dir>/<ckpt>/eval.json`` holds a flat list of metrics; the report
lines them up per ``(suite, name)`` and gives each later checkpoint's delta
against the baseline (``base``), signed as value minus baseline. ``forgot``
is the raw direction and respects ``higher_is_better``, so a rising perplexity
counts as forgetting. Each metric also gets 95% intervals for its values and
for its deltas from a seeded paired bootstrap over its items or windows
(``stages/intervals.py``), and a ``verdict`` per delta: ``forgot`` /
``improved`` only when the delta interval excludes 0. The report is written
as JSON (the contract), Markdown (for humans and the model card), a PNG with
one bar chart per metric (``stages/report_plots.py``) and, when the training
stages logged held-out losses (``<stage>/val_losses.json``), their curves.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from corpora.manifest import write_atomic
from stages import intervals

log = logging.getLogger(__name__)

SUITE_ORDER = ("general", "domain")  # other suites follow, in order of appearance
DIGITS = 6  # rounding of stored values and deltas, to drop float noise like 0.0899999
CHECKPOINTS = ["base", "cpt", "ift"]  # pipeline order; base is the baseline
CURVE_STAGES = ("cpt", "ift")  # stages whose held-out losses may be logged during training
MARKS = {"forgot": " ▼ forgot", "improved": " ▲ improved",
         "no significant change": " · no significant change"}


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


def load_curves(run_dir: Path) -> dict[str, dict]:
    """``{stage: {"every", "points"}}`` from ``<stage>/val_losses.json``; absent files are skipped."""
    curves = {}
    for stage in CURVE_STAGES:
        path = Path(run_dir) / stage / "val_losses.json"
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            curves[stage] = {"every": data.get("every"), "points": list(data["points"])}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # A curve is a side show: a broken file must not cost the forgetting report.
            log.warning("skipping %s: %s", path, exc)
    return {s: c for s, c in curves.items() if c["points"]}


def build_report(evals: dict[str, dict], baseline: str = "base", gates: list[dict] | None = None,
                 resamples: int = intervals.RESAMPLES, seed: int = intervals.SEED,
                 curves: dict[str, dict] | None = None) -> dict:
    """Line up every metric across checkpoints; deltas, intervals and verdicts against ``baseline``."""
    if baseline not in evals:
        raise ValueError(f"baseline checkpoint {baseline!r} is missing from the evals "
                         f"(have {list(evals)}); evaluate it first (step 'eval_{baseline}')")
    checkpoints = list(evals)
    metrics = [_metric_row(key, hib, found, checkpoints, baseline, resamples, seed)
               for key, (hib, found) in _ordered(_collect(evals))]
    return {"checkpoints": checkpoints, "metrics": metrics, "gates": list(gates or []),
            "intervals": {"method": "paired bootstrap (percentile)", "resamples": resamples,
                          "level": intervals.LEVEL, "seed": seed},
            "training_curves": dict(curves or {})}


def _collect(evals: dict[str, dict]) -> dict[tuple[str, str], tuple[bool, dict]]:
    """(suite, name) -> (higher_is_better, {ckpt: metric}), in order of first appearance."""
    table: dict[tuple[str, str], tuple[bool, dict]] = {}
    for ckpt, ev in evals.items():
        for m in ev.get("metrics", []):
            key = (m["suite"], m["name"])
            hib, found = table.setdefault(key, (bool(m["higher_is_better"]), {}))
            # A flipped direction or a repeated metric would silently corrupt `forgot`.
            if bool(m["higher_is_better"]) != hib or ckpt in found:
                raise ValueError(f"{ckpt}: metric {key} is repeated or flips higher_is_better")
            found[ckpt] = m
    return table


def _ordered(table: dict) -> list:
    """Known suites first (general, domain); the stable sort keeps first appearance within one."""
    known = {suite: i for i, suite in enumerate(SUITE_ORDER)}
    return sorted(table.items(), key=lambda item: known.get(item[0][0], len(known)))


def _metric_row(key: tuple[str, str], hib: bool, found: dict, checkpoints: list[str],
                baseline: str, resamples: int, seed: int) -> dict:
    """One metric of the report: values, delta, relative_delta, forgot, then the intervals."""
    values = {c: _num(found[c]["value"] if c in found else None) for c in checkpoints}
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
    # Only checkpoints with a finite value take part: a diverged eval has no interval.
    est = intervals.metric_intervals({c: found[c] for c in checkpoints if values[c] is not None},
                                     baseline, hib, resamples, seed)
    row["interval"] = {c: _pair(est.interval.get(c)) for c in checkpoints}
    row["delta_interval"] = {c: _pair(est.delta_interval.get(c)) for c in row["delta"]}
    row["verdict"] = {c: est.verdict.get(c, "no interval") for c in row["delta"]}
    row["method"], row["n_units"] = est.method, est.n_units
    return row


def _num(value: float | None) -> float | None:
    """Round to DIGITS; NaN/inf (a diverged eval) become None so the JSON stays valid."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), DIGITS)


def _pair(pair: list[float] | None) -> list[float] | None:
    return None if pair is None else [round(pair[0], DIGITS), round(pair[1], DIGITS)]


def baseline_of(report: dict) -> str:
    """The one checkpoint that has no delta (the report keeps the JSON contract's keys)."""
    with_delta = {c for m in report["metrics"] for c in m["delta"]}
    rest = [c for c in report["checkpoints"] if c not in with_delta]
    return rest[0] if rest else report["checkpoints"][0]


def fmt(value: float | None, name: str, signed: bool = False) -> str:
    """A value (or a signed delta with a true minus) with 2 decimals for perplexities, else 3."""
    if value is None:
        return "n/a"
    # Perplexities live around 5-50, so 2 decimals; rates and accuracies in [0, 1] need 3.
    text = f"{abs(value) if signed else value:.{2 if 'perplexity' in name else 3}f}"
    return (("−" if value < 0 else "+") + text) if signed else text


def fmt_interval(pair: list[float] | None, name: str, signed: bool = False) -> str:
    return "" if pair is None else f"[{fmt(pair[0], name, signed)}, {fmt(pair[1], name, signed)}]"


def raw_direction(m: dict, ckpt: str) -> str:
    """'worse' / 'better' / 'same' / 'missing' from the delta's sign alone (no interval)."""
    forgot = m["forgot"].get(ckpt)
    if forgot is None:
        return "missing"
    return "worse" if forgot else ("better" if m["delta"][ckpt] else "same")


def _cell(m: dict, ckpt: str) -> str:
    """``value [lo, hi] (Δ [lo, hi], Δ%) verdict``; without an interval, the raw ▲/▼ direction."""
    interval = m.get("interval", {}).get(ckpt)
    value = _fmt_joined(fmt(m["values"][ckpt], m["name"]), fmt_interval(interval, m["name"]))
    if ckpt not in m["delta"] or m["delta"][ckpt] is None:
        return value
    rel = m["relative_delta"][ckpt]
    pct = "" if rel is None else f", {'−' if rel < 0 else '+'}{abs(rel) * 100:.1f}%"
    d_int = m.get("delta_interval", {}).get(ckpt)
    delta = _fmt_joined(fmt(m["delta"][ckpt], m["name"], signed=True),
                        fmt_interval(d_int, m["name"], signed=True))
    if d_int is None:
        marker = {"worse": " ▼ worse", "better": " ▲ better"}.get(raw_direction(m, ckpt), "")
    else:
        marker = MARKS[m["verdict"][ckpt]]
    return f"{value} ({delta}{pct}){marker}"


def _fmt_joined(text: str, interval: str) -> str:
    return f"{text} {interval}" if interval else text


def _name_cell(m: dict) -> str:
    note = {None: " †", "normal": " ‡"}.get(m.get("method"), "")
    return f"{m['name']} {'↑' if m['higher_is_better'] else '↓'}{note}"


def verdict_counts(report: dict, suite: str, ckpt: str) -> str:
    """``1 forgot, 2 improved, 3 no significant change`` (+ ``, 1 no interval`` when any)."""
    found = [m["verdict"][ckpt] for m in report["metrics"]
             if m["suite"] == suite and ckpt in m.get("verdict", {})]
    counts = [f"{found.count(v)} {v}" for v in intervals.VERDICTS
              if v != "no interval" or v in found]
    return ", ".join(counts)


def render_markdown(report: dict) -> str:
    """A Markdown page: legend, one table per suite with its verdict summary, curves, gates."""
    base, ckpts = baseline_of(report), report["checkpoints"]
    lines = _legend_lines(report, base)
    for suite in dict.fromkeys(m["suite"] for m in report["metrics"]):
        header = ["metric", base] + [f"{c} (Δ)" for c in ckpts if c != base]
        lines += [f"## {suite}", "", _md_row(header), _md_row(["---"] * len(header))]
        for m in (m for m in report["metrics"] if m["suite"] == suite):
            lines.append(_md_row([_name_cell(m), _cell(m, base)]
                                 + [_cell(m, c) for c in ckpts if c != base]))
        lines += [""] + [f"- {c} against {base}: {verdict_counts(report, suite, c)}"
                         for c in ckpts if c != base] + [""]
    lines += _curve_lines(report.get("training_curves") or {})
    if report["gates"]:
        lines += ["## Gates", ""] + [_gate_line(g) for g in report["gates"]] + [""]
    return "\n".join(lines)


def _legend_lines(report: dict, base: str) -> list[str]:
    setup = report.get("intervals") or {}
    lines = ["# Forgetting report", "",
             f"Deltas (Δ) are each checkpoint minus the **{base}** model, in absolute units "
             f"and as % of {base}. ↑ marks metrics where higher is better, ↓ where lower is "
             f"better. n/a: the metric was not measured for that checkpoint.", ""]
    if setup:
        lines += [f"[lo, hi]: {setup['level']:.0%} intervals from a paired bootstrap over the "
                  f"items (or perplexity windows), {setup['resamples']} resamples, seed "
                  f"{setup['seed']}. ▼ forgot / ▲ improved: the Δ interval excludes 0 on the bad / "
                  f"good side; · no significant change: it contains 0. They cover the sampling "
                  f"noise of these fixed items, not the seed-to-seed variance of training.", ""]
    methods = {m.get("method") for m in report["metrics"]}
    if "normal" in methods:
        lines += ["‡ no per-item data: value ± 1.96·stderr, and an unpaired Δ interval.", ""]
    if None in methods:
        lines += ["† neither per-item data nor a stderr: no interval (verdict `no interval`); "
                  "▼ worse / ▲ better give the raw direction of Δ only.", ""]
    return lines


def _curve_lines(curves: dict[str, dict]) -> list[str]:
    """The held-out loss section: the PNG and the first/last value of each curve."""
    if not curves:
        return []
    lines = ["## Held-out loss during training", "", "![held-out loss](training_curves.png)", "",
             _md_row(["stage", "held-out set", "first (step)", "last (step)"]),
             _md_row(["---"] * 4)]
    for stage, curve in curves.items():
        for key in ("domain_loss", "general_loss"):
            pts = [p for p in curve["points"] if p.get(key) is not None]
            if pts:
                first, last = pts[0], pts[-1]
                lines.append(_md_row([stage, key.removesuffix("_loss"),
                                      f"{first[key]:.3f} ({first['step']})",
                                      f"{last[key]:.3f} ({last['step']})"]))
    return lines + [""]


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _gate_line(gate: dict) -> str:
    detail = f" — {gate['detail']}" if gate.get("detail") else ""
    return f"- **{'PASS' if gate.get('passed') else 'FAIL'}** {gate.get('rule', '?')}{detail}"


def plot(report: dict, path: Path) -> None:
    """The forgetting PNG (``stages/report_plots.py``; imported here so it loads on demand)."""
    from stages import report_plots

    report_plots.plot_report(report, path)


def plot_curves(curves: dict[str, dict], path: Path) -> None:
    """The held-out loss PNG, one panel per stage (``stages/report_plots.py``)."""
    from stages import report_plots

    report_plots.plot_training_curves(curves, path)


def write_report(report: dict, out_dir: Path) -> dict[str, Path]:
    """Write forgetting.{md,png,json} (and training_curves.png) into ``out_dir``.

    Returns {"json"|"md"|"png": path}, plus "curves" when the report holds training curves.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"forgetting.{k}" for k in ("json", "md", "png")}
    write_atomic(paths["md"], lambda p: p.write_text(render_markdown(report), encoding="utf-8"))
    write_atomic(paths["png"], lambda p: plot(report, p))
    if report.get("training_curves"):
        paths["curves"] = out_dir / "training_curves.png"
        write_atomic(paths["curves"], lambda p: plot_curves(report["training_curves"], p))
    # JSON last: it is the contract file, so its presence means the whole report exists.
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    write_atomic(paths["json"], lambda p: p.write_text(text, encoding="utf-8"))
    return paths


def load_gates(run_dir: Path) -> list[dict]:
    """The gate results recorded after each evaluation (``<ckpt>/gates.json``, by ``stages.pipeline``)."""
    paths = [Path(run_dir) / ckpt / "gates.json" for ckpt in CHECKPOINTS]
    return [g for p in paths if p.is_file() for g in json.loads(p.read_text(encoding="utf-8"))]


def report_run(run_dir: Path) -> tuple[dict, dict[str, Path]]:
    """Rebuild ``<run_dir>/report/`` from the checkpoints' eval.json, gates.json and val_losses.json files."""
    report = build_report(load_evals(Path(run_dir), CHECKPOINTS), gates=load_gates(run_dir),
                          curves=load_curves(run_dir))
    return report, write_report(report, Path(run_dir) / "report")
