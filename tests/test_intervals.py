"""The paired bootstrap: coverage under no change, power on a planted drop, ratio statistics,
reproducibility, and what pairing buys. Seeded and vectorised: a few seconds in all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stages import intervals
from stages.intervals import bootstrap, metric_intervals, verdict

TRIALS, ITEMS = 400, 200


def _paired_scores(rng, p_base: float, p_cpt: float, copy: float) -> tuple[np.ndarray, np.ndarray]:
    """Correlated 0/1 scores on the same items: item i's latent u_i decides base (u_i < p_base);
    with probability ``copy`` cpt reuses u_i, else it draws afresh. Marginal means stay p_base, p_cpt."""
    u = rng.random(ITEMS)
    reuse = rng.random(ITEMS) < copy
    cpt = np.where(reuse, u, rng.random(ITEMS)) < p_cpt
    return (u < p_base).astype(float), cpt.astype(float)


def test_delta_interval_covers_zero_at_nominal_rate_when_nothing_changed():
    rng = np.random.default_rng(2024)
    covered = 0
    for trial in range(TRIALS):
        base, cpt = _paired_scores(rng, 0.6, 0.6, copy=0.8)
        lo, hi = bootstrap({"base": base, "cpt": cpt}, "mean", "base", True,
                           seed=trial).delta_interval["cpt"]
        covered += lo <= 0 <= hi
    # 400 trials of a 95% interval: binomial sd = sqrt(0.95 * 0.05 / 400) ≈ 1.1 points, so
    # 93-97% is ±2 points ≈ ±1.8 sd (a correct interval lands inside ~93% of the time; seeded here).
    assert 0.93 <= covered / TRIALS <= 0.97


def test_planted_drop_is_called_forgot():
    rng = np.random.default_rng(7)
    verdicts = []
    for trial in range(TRIALS):
        base, cpt = _paired_scores(rng, 0.70, 0.55, copy=0.8)  # true drop: 15 points on 200 items
        verdicts.append(bootstrap({"base": base, "cpt": cpt}, "mean", "base", True,
                                  seed=trial).verdict["cpt"])
    assert verdicts.count("forgot") / TRIALS >= 0.95
    assert "improved" not in verdicts


WINDOWS = {"base": [[2.0, 4, 5], [3.0, 2, 3], [1.0, 4, 6], [4.0, 6, 9]],   # Σnll 10, Σn 16, Σbytes 23
           "cpt": [[1.0, 4, 5], [2.0, 2, 3], [1.0, 4, 6], [4.0, 6, 9]]}    # Σnll 8


def _ppl_metric(ckpt: str, statistic: str | None = None, rows: int = 2) -> dict:
    windows = [w[:rows] for w in WINDOWS[ckpt]]
    nll, tokens = sum(w[0] for w in windows), sum(w[1] for w in windows)
    nbytes = sum(w[2] for w in WINDOWS[ckpt])
    value = math.exp(nll / tokens) if statistic != "bits_per_byte" else nll / (math.log(2) * nbytes)
    m = {"suite": "domain", "name": "perplexity", "value": value, "higher_is_better": False,
         "windows": windows}
    return m | ({"statistic": statistic} if statistic else {})


def test_ratio_statistic_matches_hand_computed_value():
    units = np.asarray(WINDOWS["base"], dtype=float)
    everything = np.arange(len(units))[None, :]  # the one "resample" that keeps every window once
    assert intervals._resampled_stat(units, "perplexity", everything)[0] == math.exp(10 / 16)
    assert intervals._resampled_stat(units, "bits_per_byte", everything)[0] == 10 / (math.log(2) * 23)
    # Old [nll, tokens] rows without a statistic and new ones with it give the same intervals.
    old = metric_intervals({c: _ppl_metric(c) for c in WINDOWS}, "base", False)
    new = metric_intervals({c: _ppl_metric(c, "perplexity", 3) for c in WINDOWS}, "base", False)
    assert old == new and old.method == "paired bootstrap" and old.n_units == 4
    lo, hi = old.interval["base"]
    assert lo <= math.exp(10 / 16) <= hi
    lo, hi = old.interval["cpt"]
    assert lo <= math.exp(8 / 16) <= hi
    lo, hi = old.delta_interval["cpt"]
    assert lo <= math.exp(8 / 16) - math.exp(10 / 16) <= hi
    bpb = metric_intervals({c: _ppl_metric(c, "bits_per_byte", 3) for c in WINDOWS}, "base", False)
    assert bpb.interval["base"][0] <= 10 / (math.log(2) * 23) <= bpb.interval["base"][1]


def test_report_values_and_point_delta_of_ratio_statistic():
    from stages.forgetting import build_report
    evals = {c: {"metrics": [_ppl_metric(c, "perplexity", 3)]} for c in WINDOWS}
    [row] = build_report(evals)["metrics"]
    assert row["values"] == {"base": round(math.exp(10 / 16), 6), "cpt": round(math.exp(8 / 16), 6)}
    assert row["delta"]["cpt"] == round(math.exp(8 / 16) - math.exp(10 / 16), 6)
    assert row["interval"]["base"][0] <= row["values"]["base"] <= row["interval"]["base"][1]


def test_same_seed_same_intervals_other_seed_other_intervals():
    rng = np.random.default_rng(0)
    base, cpt = _paired_scores(rng, 0.6, 0.5, copy=0.5)
    units = {"base": base, "cpt": cpt}
    a = bootstrap(units, "mean", "base", True, seed=3)
    assert bootstrap(units, "mean", "base", True, seed=3) == a
    b = bootstrap(units, "mean", "base", True, seed=4)
    assert b.interval != a.interval or b.delta_interval != a.delta_interval


def test_pairing_narrows_the_delta_interval():
    rng = np.random.default_rng(1)
    base, cpt = _paired_scores(rng, 0.6, 0.6, copy=0.95)  # almost every item scores the same
    units = {"base": base, "cpt": cpt}

    def width(paired: bool) -> float:
        lo, hi = bootstrap(units, "mean", "base", True, paired=paired).delta_interval["cpt"]
        return hi - lo
    assert width(True) < 0.5 * width(False)
    assert bootstrap(units, "mean", "base", True, paired=False).method == "unpaired bootstrap"


@pytest.mark.parametrize(("interval", "hib", "expected"), [
    ([-0.2, -0.1], True, "forgot"), ([0.1, 0.2], True, "improved"),
    ([-0.2, -0.1], False, "improved"), ([0.1, 0.2], False, "forgot"),
    ([-0.1, 0.1], True, "no significant change"), ([0.0, 0.0], False, "no significant change"),
    (None, True, "no interval")])
def test_verdict_respects_direction(interval, hib, expected):
    assert verdict(interval, hib) == expected


def test_stderr_only_gives_normal_interval_and_unpaired_delta():
    metrics = {"base": {"value": 0.5, "stderr": 0.03}, "cpt": {"value": 0.4, "stderr": 0.04}}
    est = metric_intervals(metrics, "base", True)
    assert est.method == "normal" and est.n_units is None
    assert est.interval["base"] == pytest.approx([0.5 - 1.96 * 0.03, 0.5 + 1.96 * 0.03], abs=1e-4)
    assert est.delta_interval["cpt"] == pytest.approx([-0.1 - 1.96 * 0.05, -0.1 + 1.96 * 0.05], abs=1e-4)
    assert est.verdict == {"cpt": "forgot"}
    none = metric_intervals({"base": {"value": 0.5}, "cpt": {"value": 0.4}}, "base", True)
    assert none == intervals.Intervals() and none.method is None


def test_unknown_statistic_is_an_error():
    with pytest.raises(ValueError, match="unknown statistic 'median'"):
        intervals.statistic_of({"name": "x", "statistic": "median", "scores": [1, 0]})
