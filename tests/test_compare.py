"""`cptift compare`: two synthetic runs, reports built by report_run, one table with the
last checkpoint's value, Δ against each run's base, the Δ interval and the verdict."""

from __future__ import annotations

import json

import pytest

from stages import forgetting
from stages.compare import compare_rows, compare_runs, load_reports

BASE_FACTS = [1] * 70 + [0] * 30  # 0.70 on 100 items, the same base model in both runs


def _scores(name, scores):
    return {"suite": "general", "name": name, "value": sum(scores) / len(scores),
            "higher_is_better": True, "n": len(scores), "scores": scores}


def _run(root, name, ift_facts, with_extra=False):
    """A run folder whose ift checkpoint scores ``ift_facts`` (cpt is in between)."""
    run = root / name
    for ckpt, facts in {"base": BASE_FACTS, "cpt": [1] * 60 + [0] * 40, "ift": ift_facts}.items():
        metrics = [_scores("facts/accuracy", facts)]
        if with_extra:  # a metric only this run measured
            metrics.append({"suite": "domain", "name": "qa/accuracy", "value": 0.5,
                            "higher_is_better": True})
        (run / ckpt).mkdir(parents=True)
        (run / ckpt / "eval.json").write_text(json.dumps({"metrics": metrics}))
    report, _ = forgetting.report_run(run)
    return run, report


@pytest.fixture
def runs(tmp_path):
    kept, lost = [1] * 70 + [0] * 30, [1] * 40 + [0] * 60  # b loses 30 items of the base's 70
    return _run(tmp_path, "a", kept), _run(tmp_path, "b", lost, with_extra=True)


def test_table_holds_each_runs_last_value_delta_interval_and_verdict(runs, tmp_path):
    (run_a, rep_a), (run_b, rep_b) = runs
    text, paths = compare_runs([run_a, run_b], ["a", "b"], tmp_path / "out")
    lines = text.splitlines()
    assert ("| suite | metric | a (Δ vs its base [95%], verdict) | b (Δ vs its base [95%], verdict) "
            "| b − a [95%], verdict |") in lines
    facts = next(line for line in lines if line.startswith("| general | facts/accuracy |"))
    a_cell, b_cell, b_vs_a = facts.split(" | ")[2:5]
    assert a_cell == "0.700 (Δ +0.000 [+0.000, +0.000], no significant change)"
    [m_b] = [m for m in rep_b["metrics"] if m["name"] == "facts/accuracy"]
    lo, hi = m_b["delta_interval"]["ift"]
    assert b_cell == f"0.400 (Δ −0.300 [−{abs(lo):.3f}, −{abs(hi):.3f}], forgot)"
    # Both runs scored the base's items: b against a directly, paired over those items. The 30 items
    # b lost are 0.30 of 100; a resample holds about 30 of them, so the interval sits around −0.30.
    assert b_vs_a.startswith("−0.300 [−0.") and b_vs_a.rstrip(" |").endswith("], worse")
    assert m_b["verdict"]["ift"] == "forgot" and hi < 0
    # A metric only run b has: "-" for run a; without an interval b's cell gives the bare Δ.
    extra = next(line for line in lines if "qa/accuracy" in line)
    assert extra == "| domain | qa/accuracy | - | 0.500 (Δ +0.000, no interval) | - |"
    assert "- a: `ift` against `base`" in text and "test each run against a directly" in text
    assert paths == {"md": tmp_path / "out" / "compare.md", "png": tmp_path / "out" / "compare.png"}
    assert paths["md"].read_text(encoding="utf-8") == text
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 5000


def test_rows_and_plot_bars_follow_the_reports(runs):
    from matplotlib.container import ErrorbarContainer

    from stages import report_plots

    (run_a, _), (run_b, _) = runs
    reports = load_reports([run_a, run_b], ["a", "b"])
    rows = compare_rows(reports)
    assert [(r["suite"], r["name"]) for r in rows] == [("general", "facts/accuracy"),
                                                       ("domain", "qa/accuracy")]
    assert rows[1]["runs"]["a"] is None and rows[0]["runs"]["b"]["delta"] == -0.3
    fig = report_plots.compare_figure(rows, ["a", "b"])
    try:
        ax = fig.axes[0]
        assert [p.get_height() for p in ax.patches] == pytest.approx([0.0, -0.3])
        assert sum(isinstance(c, ErrorbarContainer) for c in ax.containers) == 2
    finally:
        report_plots._pyplot().close(fig)


def test_cli_compare_names_out_and_default_folder(runs, tmp_path, monkeypatch, capsys):
    from stages.cli import main  # imports torch: only this test pays for it

    (run_a, _), (run_b, _) = runs
    assert main(["compare", str(run_a), str(run_b), "--names", "kept,lost",
                 "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "kept (Δ vs its base [95%], verdict)" in out and "forgot" in out
    assert (tmp_path / "cmp" / "compare.png").is_file()
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(run_a), str(run_a)]) == 0  # the same run twice: unique names
    assert f"{run_a} (2) (Δ vs its base" in capsys.readouterr().out
    assert (tmp_path / "runs" / "compare" / "compare.md").is_file()
    assert main(["compare", str(run_a), str(run_b), "--names", "only-one"]) == 2
    assert "--names gives 1 names for 2 runs" in capsys.readouterr().err


def test_runs_scored_on_other_items_are_not_tested_against_each_other(runs, tmp_path):
    (run_a, _), _ = runs
    run_c, _ = _run(tmp_path, "c", [1] * 50 + [0] * 50)
    base = json.loads((run_c / "base" / "eval.json").read_text())
    base["metrics"][0]["scores"] = [0] * 30 + [1] * 70  # another base model (or other items): same mean
    (run_c / "base" / "eval.json").write_text(json.dumps(base))
    text, _ = compare_runs([run_a, run_c], ["a", "c"], tmp_path / "out")
    assert "not tested against each other" in text and "c − a" not in text


def test_an_earlier_checkpoint_can_be_compared(runs, tmp_path):
    (run_a, _), (run_b, _) = runs
    text, _ = compare_runs([run_a, run_b], ["a", "b"], tmp_path / "out", checkpoint="cpt")
    facts = next(line for line in text.splitlines() if line.startswith("| general | facts/accuracy |"))
    assert facts.split(" | ")[2].startswith("0.600 (Δ −0.100 [") and "- b: `cpt` against `base`" in text
    assert facts.split(" | ")[4].startswith("+0.000 [+0.000, +0.000], no significant difference")
    with pytest.raises(Exception, match="--checkpoint eval: run a has no such checkpoint"):
        compare_runs([run_a, run_b], ["a", "b"], tmp_path / "out", checkpoint="eval")
