"""The forgetting report: exact deltas, ordering, nulls, Markdown, PNG and atomic writes."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from stages import forgetting
from stages.forgetting import build_report, load_evals, render_markdown, write_report


def _m(suite, name, value, hib=True, n=40):
    return {"suite": suite, "name": name, "value": value, "higher_is_better": hib, "n": n}


def _eval(ckpt, *metrics):
    return {"checkpoint": ckpt, "model": f"/m/{ckpt}", "seconds": 1.0, "metrics": list(metrics)}


@pytest.fixture
def evals():
    # Domain metrics listed first on purpose: the report must still put general first.
    values = {"base": (11.8, 0.61, 9.5), "cpt": (7.3, 0.52, 10.7), "ift": (7.9, 0.57, 9.5)}
    return {ckpt: _eval(ckpt, _m("domain", "perplexity", dom, False, 8192),
                        _m("general", "facts/accuracy", acc),
                        _m("general", "perplexity", ppl, False))
            for ckpt, (dom, acc, ppl) in values.items()}


def _row(report, suite, name):
    [row] = [m for m in report["metrics"] if (m["suite"], m["name"]) == (suite, name)]
    return row


def test_values_and_deltas_are_exact(evals):
    report = build_report(evals)
    assert report["checkpoints"] == ["base", "cpt", "ift"]
    facts = _row(report, "general", "facts/accuracy")
    assert facts["values"] == {"base": 0.61, "cpt": 0.52, "ift": 0.57}
    # Rounded to 6 decimals: 0.52 - 0.61 is -0.09000000000000008 in floats.
    assert facts["delta"] == {"cpt": -0.09, "ift": -0.04}
    assert facts["relative_delta"] == {"cpt": round(-0.09 / 0.61, 6), "ift": round(-0.04 / 0.61, 6)}
    assert facts["forgot"] == {"cpt": True, "ift": True}
    assert facts["higher_is_better"] is True


def test_lower_is_better_sign_and_forgot(evals):
    report = build_report(evals)
    domain = _row(report, "domain", "perplexity")
    assert domain["delta"] == {"cpt": -4.5, "ift": -3.9}  # perplexity fell: learnt the domain
    assert domain["forgot"] == {"cpt": False, "ift": False}
    general = _row(report, "general", "perplexity")
    assert general["delta"] == {"cpt": 1.2, "ift": 0.0}
    assert general["relative_delta"]["cpt"] == round(1.2 / 9.5, 6)
    assert general["forgot"] == {"cpt": True, "ift": False}  # no change is not forgetting


def test_contract_keys_and_gates_copied(evals):
    gates = [{"rule": "general max relative drop 10%", "passed": False}]
    report = build_report(evals, gates=gates)
    assert set(report) == {"checkpoints", "metrics", "gates", "intervals", "training_curves"}
    assert report["gates"] == gates and report["gates"] is not gates
    assert build_report(evals)["gates"] == []
    assert report["intervals"] == {"method": "paired bootstrap (percentile)", "resamples": 2000,
                                   "level": 0.95, "seed": 0}
    assert report["training_curves"] == {}
    assert set(report["metrics"][0]) == {"suite", "name", "higher_is_better", "values", "delta",
                                         "relative_delta", "forgot", "interval", "delta_interval",
                                         "verdict", "method", "n_units"}
    # These metrics carry no per-item data and no stderr: no interval, and they say so.
    row = report["metrics"][0]
    assert row["interval"] == {"base": None, "cpt": None, "ift": None}
    assert row["delta_interval"] == {"cpt": None, "ift": None}
    assert row["verdict"] == {"cpt": "no interval", "ift": "no interval"}
    assert row["method"] is None and row["n_units"] is None
    json.dumps(report, allow_nan=False)  # strictly valid JSON


def test_order_general_first_then_first_appearance(evals):
    evals["cpt"]["metrics"].append(_m("general", "arithmetic/accuracy", 0.3))
    evals["ift"]["metrics"].append(_m("domain", "qa/accuracy", 0.4))
    keys = [(m["suite"], m["name"]) for m in build_report(evals)["metrics"]]
    assert keys == [("general", "facts/accuracy"), ("general", "perplexity"),
                    ("general", "arithmetic/accuracy"), ("domain", "perplexity"),
                    ("domain", "qa/accuracy")]


def test_missing_metric_gives_null(evals):
    evals["cpt"]["metrics"] = [m for m in evals["cpt"]["metrics"] if m["name"] != "facts/accuracy"]
    evals["ift"]["metrics"].append(_m("domain", "qa/accuracy", 0.4))
    report = build_report(evals)
    facts = _row(report, "general", "facts/accuracy")
    assert facts["values"]["cpt"] is None
    assert facts["delta"] == {"cpt": None, "ift": -0.04}
    assert facts["relative_delta"]["cpt"] is None and facts["forgot"]["cpt"] is None
    qa = _row(report, "domain", "qa/accuracy")  # absent from the baseline: no deltas at all
    assert qa["values"] == {"base": None, "cpt": None, "ift": 0.4}
    assert qa["delta"] == {"cpt": None, "ift": None}


def test_zero_baseline_has_no_relative_delta():
    evals = {"base": _eval("base", _m("general", "facts/stopped", 0.0)),
             "cpt": _eval("cpt", _m("general", "facts/stopped", 0.25))}
    row = build_report(evals)["metrics"][0]
    assert row["delta"] == {"cpt": 0.25} and row["relative_delta"] == {"cpt": None}
    assert row["forgot"] == {"cpt": False}


def test_negative_baseline_and_float_noise():
    # Log-likelihoods are negative: relative delta divides by |base| so the sign stays the delta's.
    evals = {"base": _eval("base", _m("general", "loglik", -2.0), _m("general", "acc", 0.1 + 0.2)),
             "cpt": _eval("cpt", _m("general", "loglik", -2.5), _m("general", "acc", float("nan")))}
    loglik, acc = build_report(evals)["metrics"]
    assert loglik["delta"] == {"cpt": -0.5} and loglik["relative_delta"] == {"cpt": -0.25}
    assert loglik["forgot"] == {"cpt": True}
    assert acc["values"] == {"base": 0.3, "cpt": None}  # 0.30000000000000004 rounded; NaN -> null


def test_missing_baseline_raises(evals):
    del evals["base"]
    with pytest.raises(ValueError, match="'base'"):
        build_report(evals)
    with pytest.raises(ValueError, match="'cpt'"):
        build_report({"ift": evals["ift"]}, baseline="cpt")


def test_inconsistent_direction_raises(evals):
    evals["cpt"]["metrics"][1]["higher_is_better"] = False
    with pytest.raises(ValueError, match="higher_is_better"):
        build_report(evals)


def test_markdown_rows_and_deltas(evals):
    report = build_report(evals, gates=[{"rule": "domain perplexity improves", "passed": True},
                                        {"rule": "general max relative drop 10%", "passed": False}])
    md = render_markdown(report)
    assert md.index("## general") < md.index("## domain")
    assert "| metric | base | cpt (Δ) | ift (Δ) |" in md
    facts = next(line for line in md.splitlines() if line.startswith("| facts/accuracy"))
    assert "0.520 (−0.090, −14.8%) ▼ worse" in facts and "0.570 (−0.040" in facts
    dom = [line for line in md.splitlines() if line.startswith("| perplexity")][1]
    assert "11.80" in dom and "7.30 (−4.50, −38.1%) ▲ better" in dom
    gen = [line for line in md.splitlines() if line.startswith("| perplexity")][0]
    assert "10.70 (+1.20" in gen and "▼ worse" in gen and "9.50 (+0.00, +0.0%) |" in gen
    assert "**PASS** domain perplexity improves" in md
    assert "**FAIL** general max relative drop 10%" in md
    assert "against" in md.lower() or "minus the **base**" in md
    assert "## Gates" not in render_markdown(build_report(evals))


def test_markdown_shows_missing_as_na(evals):
    evals["cpt"]["metrics"].pop(1)
    md = render_markdown(build_report(evals))
    line = next(line for line in md.splitlines() if line.startswith("| facts/accuracy"))
    assert "| n/a |" in line


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_write_report_writes_three_valid_files(evals, tmp_path):
    report = build_report(evals)
    out = tmp_path / "report" / "nested"
    paths = write_report(report, out)
    assert paths == {k: out / f"forgetting.{k}" for k in ("json", "md", "png")}
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == report
    assert paths["md"].read_text(encoding="utf-8") == render_markdown(report)
    width, height = _png_size(paths["png"])
    assert width > 200 and height > 200 and paths["png"].stat().st_size > 5000
    assert sorted(p.name for p in out.iterdir()) == ["forgetting.json", "forgetting.md",
                                                     "forgetting.png"]


def test_write_report_failure_leaves_no_partial_files(evals, tmp_path, monkeypatch):
    old = write_report(build_report(evals), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_plot(report, path):
        path.write_bytes(b"\x89PNG half")
        raise RuntimeError("killed mid-plot")

    monkeypatch.setattr(forgetting, "plot", broken_plot)
    evals["cpt"]["metrics"][0]["value"] = 99.0
    with pytest.raises(RuntimeError):
        write_report(build_report(evals), tmp_path)
    # The previous PNG and JSON are intact and no temp file is left behind.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "forgetting.md"} == \
        {k: v for k, v in before.items() if k != "forgetting.md"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in old.values())


def test_plot_handles_missing_values_and_empty_report(evals, tmp_path):
    evals["cpt"]["metrics"].pop(0)
    forgetting.plot(build_report(evals), tmp_path / "a.png")
    forgetting.plot(build_report({"base": _eval("base")}), tmp_path / "b.png")
    assert min(_png_size(tmp_path / "a.png")) > 200 and (tmp_path / "b.png").stat().st_size > 0


def test_load_evals_reads_in_order_and_names_missing_step(evals, tmp_path):
    for ckpt in ("base", "cpt"):
        (tmp_path / ckpt).mkdir()
        (tmp_path / ckpt / "eval.json").write_text(json.dumps(evals[ckpt]))
    loaded = load_evals(tmp_path, ["base", "cpt"])
    assert list(loaded) == ["base", "cpt"] and loaded["cpt"] == evals["cpt"]
    with pytest.raises(FileNotFoundError) as err:
        load_evals(tmp_path, ["base", "cpt", "ift"])
    assert str(tmp_path / "ift" / "eval.json") in str(err.value) and "eval_ift" in str(err.value)


# ---------------------------------------------------------------- intervals and verdicts


def _scored(suite, name, scores, hib=True):
    return {"suite": suite, "name": name, "value": sum(scores) / len(scores), "higher_is_better": hib,
            "n": len(scores), "scores": scores, "statistic": "mean"}


def _windows(nll_per_token, n=40):
    """Perplexity windows of 64 tokens whose NLL per token wobbles around ``nll_per_token``."""
    rows = [[round((nll_per_token + 0.3 * ((i * 7) % 5 - 2) / 2) * 64, 6), 64] for i in range(n)]
    value = math.exp(sum(r[0] for r in rows) / sum(r[1] for r in rows))
    return {"suite": "domain", "name": "perplexity", "value": value, "higher_is_better": False,
            "n": 64 * n, "windows": rows}


@pytest.fixture
def scored_evals():
    """cpt forgets facts (0.80 -> 0.40 on 100 items) and learns the domain; ift is base on facts."""
    base_facts = [1] * 80 + [0] * 20
    cpt_facts = [1] * 40 + [0] * 60
    stopped = [1, 0] * 50  # identical everywhere: no change
    return {"base": _eval("base", _scored("general", "facts/accuracy", base_facts),
                          _scored("general", "facts/stopped", stopped), _windows(2.5)),
            "cpt": _eval("cpt", _scored("general", "facts/accuracy", cpt_facts),
                         _scored("general", "facts/stopped", stopped), _windows(1.5)),
            "ift": _eval("ift", _scored("general", "facts/accuracy", base_facts),
                         _scored("general", "facts/stopped", stopped[::-1]), _windows(1.5))}


def test_intervals_and_verdicts_from_per_item_data(scored_evals):
    report = build_report(scored_evals, resamples=500, seed=1)
    assert report["intervals"] == {"method": "paired bootstrap (percentile)", "resamples": 500,
                                   "level": 0.95, "seed": 1}
    facts = _row(report, "general", "facts/accuracy")
    assert facts["method"] == "paired bootstrap" and facts["n_units"] == 100
    assert facts["verdict"] == {"cpt": "forgot", "ift": "no significant change"}
    lo, hi = facts["delta_interval"]["cpt"]
    assert lo < -0.4 < hi < 0 and facts["delta_interval"]["ift"] == [0.0, 0.0]  # same items: no spread
    for ckpt, (lo, hi) in facts["interval"].items():
        assert lo <= facts["values"][ckpt] <= hi
    # ift reversed the order of "stopped": same mean, but unpaired items -> a wide interval around 0.
    stopped = _row(report, "general", "facts/stopped")
    assert stopped["verdict"] == {"cpt": "no significant change", "ift": "no significant change"}
    assert stopped["delta_interval"]["cpt"] == [0.0, 0.0] and stopped["delta_interval"]["ift"][0] < -0.1
    ppl = _row(report, "domain", "perplexity")  # lower is better: a falling perplexity improved
    assert ppl["verdict"] == {"cpt": "improved", "ift": "improved"} and ppl["n_units"] == 40
    assert ppl["forgot"] == {"cpt": False, "ift": False}  # the raw flag of the contract stays
    assert build_report(scored_evals, resamples=500, seed=1) == report  # seeded: reproducible
    json.dumps(report, allow_nan=False)


def test_markdown_shows_intervals_verdicts_and_summary(scored_evals):
    md = render_markdown(build_report(scored_evals, resamples=500))
    facts = next(line for line in md.splitlines() if line.startswith("| facts/accuracy"))
    assert facts.startswith("| facts/accuracy ↑ | 0.800 [")
    assert "0.400 [" in facts and "(−0.400 [−" in facts and "▼ forgot" in facts
    assert "0.800 [" in facts.split("|")[4] and "· no significant change" in facts.split("|")[4]
    ppl = next(line for line in md.splitlines() if line.startswith("| perplexity"))
    assert "▲ improved" in ppl
    assert "- cpt against base: 1 forgot, 0 improved, 1 no significant change" in md
    assert "- ift against base: 0 forgot, 0 improved, 2 no significant change" in md
    assert "- cpt against base: 0 forgot, 1 improved, 0 no significant change" in md  # domain
    assert "paired bootstrap" in md and "seed-to-seed" in md
    assert "†" not in md  # every metric here has an interval


def test_markdown_marks_metrics_without_interval(evals):
    md = render_markdown(build_report(evals))
    assert "| facts/accuracy ↑ † |" in md and "no interval" in md
    assert "- cpt against base: 0 forgot, 0 improved, 0 no significant change, 2 no interval" in md


def test_plot_draws_the_intervals_as_error_bars(scored_evals):
    from matplotlib.colors import to_rgba
    from matplotlib.container import BarContainer, ErrorbarContainer

    from stages import report_plots

    report = build_report(scored_evals, resamples=500)
    fig = report_plots.forgetting_figure(report)
    try:
        panels = [ax for ax in fig.axes if any(isinstance(c, BarContainer) for c in ax.containers)]
        assert len(panels) == len(report["metrics"])
        for ax, m in zip(panels, report["metrics"]):
            bars = next(c for c in ax.containers if isinstance(c, BarContainer))
            errs = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
            assert len(errs) == len(bars) == 3  # base + one per non-base bar
            # The cpt bar spans base + the paired delta interval, so it crosses the base line iff
            # the verdict is "no significant change"; its colour is the verdict's.
            (segment,) = errs[1].lines[2][0].get_segments()
            lo, hi = sorted(y for _, y in segment)
            base = m["values"]["base"]
            assert (lo, hi) == pytest.approx((base + m["delta_interval"]["cpt"][0],
                                              base + m["delta_interval"]["cpt"][1]))
            colour = report_plots.COLOURS[m["verdict"]["cpt"]]
            assert bars.patches[1].get_facecolor() == pytest.approx(to_rgba(colour))
    finally:
        report_plots._pyplot().close(fig)


# ---------------------------------------------------------------- training curves


def _curve(stage, points):
    return {"stage": stage, "every": 10,
            "points": [{"step": s, "domain_loss": d, "general_loss": g} for s, d, g in points]}


def _run_dir(tmp_path, evals):
    for ckpt, ev in evals.items():
        (tmp_path / ckpt).mkdir(parents=True, exist_ok=True)
        (tmp_path / ckpt / "eval.json").write_text(json.dumps(ev))
    return tmp_path


def test_report_run_draws_training_curves_when_logged(scored_evals, tmp_path):
    run = _run_dir(tmp_path, scored_evals)
    (run / "cpt" / "val_losses.json").write_text(json.dumps(
        _curve("cpt", [(10, 2.1, 3.0), (20, 1.8, 3.1), (30, 1.6, 3.2)])))
    (run / "ift" / "val_losses.json").write_text(json.dumps(_curve("ift", [(10, 1.7, 3.0)])))
    report, paths = forgetting.report_run(run)
    assert paths["curves"] == run / "report" / "training_curves.png"
    assert min(_png_size(paths["curves"])) > 200
    assert list(report["training_curves"]) == ["cpt", "ift"]
    md = paths["md"].read_text(encoding="utf-8")
    assert "## Held-out loss during training" in md and "(training_curves.png)" in md
    assert "| cpt | domain | 2.100 (10) | 1.600 (30) |" in md
    assert "| cpt | general | 3.000 (10) | 3.200 (30) |" in md
    assert "| ift | domain | 1.700 (10) | 1.700 (10) |" in md
    assert json.loads(paths["json"].read_text()) == report


def test_report_run_without_curves_draws_none(scored_evals, tmp_path):
    run = _run_dir(tmp_path, scored_evals)
    (run / "ift" / "val_losses.json").write_text("{not json")  # a broken file is skipped, not fatal
    report, paths = forgetting.report_run(run)
    assert set(paths) == {"json", "md", "png"} and report["training_curves"] == {}
    assert not (run / "report" / "training_curves.png").exists()
    assert "Held-out loss" not in paths["md"].read_text(encoding="utf-8")
