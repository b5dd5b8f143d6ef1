"""Seeded paired percentile bootstrap: 95% intervals for values and deltas of eval metrics.

    from stages.intervals import metric_intervals
    est = metric_intervals({"base": m_base, "cpt": m_cpt, "ift": m_ift}, "base", higher_is_better=True)
    est.interval["cpt"], est.delta_interval["cpt"], est.verdict["cpt"]  # [lo, hi], [lo, hi], "forgot"

A metric's *units* are its per-item ``scores`` or its perplexity ``windows``
(rows ``[nll_sum, tokens]`` or ``[nll_sum, tokens, bytes]``). The same items
are scored on every checkpoint, in the same order, so one matrix of B
resamples ``I_b`` (n unit indices drawn with replacement) serves every
checkpoint, and the statistic T is recomputed on each:

    mean:           T(I) = (1/n) Σ_{i∈I} s_i
    perplexity:     T(I) = exp(Σ_{i∈I} nll_i / Σ_{i∈I} tokens_i)
    bits_per_byte:  T(I) = Σ_{i∈I} nll_i / (ln 2 · Σ_{i∈I} bytes_i)

    interval(c)       = [q_{α/2}, q_{1−α/2}] of {T_c(I_b)}_b                    (α = 1 − level)
    delta_interval(c) = [q_{α/2}, q_{1−α/2}] of {T_c(I_b) − T_base(I_b)}_b      (paired: same I_b)

Pairing cancels the item difficulty both checkpoints share, so the delta
interval is much narrower than one from independent resamples. Verdict: the
delta interval excludes 0 on the bad side (respecting ``higher_is_better``)
→ ``forgot``, on the good side → ``improved``, else ``no significant change``.
Metrics with only an ``stderr`` (lm-evaluation-harness) get the normal
approximation value ± z·se and an unpaired delta ± z·sqrt(se_a² + se_b²).
The intervals cover the sampling noise of these fixed items and documents,
not the seed-to-seed variance of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

RESAMPLES, SEED, LEVEL = 2000, 0, 0.95
STATISTICS = ("mean", "perplexity", "bits_per_byte")
VERDICTS = ("forgot", "improved", "no significant change", "no interval")
CELLS_PER_CHUNK = 1 << 22  # resampled indices held at once (32 MiB of int64), whatever n is


@dataclass
class Intervals:
    """One metric's intervals across checkpoints; ``[lo, hi]`` lists or None where there is none."""

    interval: dict[str, list[float] | None] = field(default_factory=dict)
    delta_interval: dict[str, list[float] | None] = field(default_factory=dict)
    verdict: dict[str, str] = field(default_factory=dict)
    method: str | None = None  # "paired bootstrap", "normal", or None (no interval)
    n_units: int | None = None  # items or windows resampled (None without units)


def statistic_of(metric: dict) -> str | None:
    """The metric's ``statistic``; older eval.json files imply it from ``scores`` / ``windows``."""
    stat = metric.get("statistic") or ("mean" if "scores" in metric else
                                       "perplexity" if "windows" in metric else None)
    if stat is not None and stat not in STATISTICS:
        raise ValueError(f"metric {metric.get('suite')}/{metric.get('name')}: unknown statistic "
                         f"{stat!r} (known: {', '.join(STATISTICS)})")
    return stat


def units_of(metric: dict) -> np.ndarray | None:
    """Per-item scores (shape n) or windows (n × 2 or n × 3); None when the metric has none."""
    stat = statistic_of(metric)
    data = metric.get("scores") if stat == "mean" else metric.get("windows")
    if stat is None or not data:
        return None
    units = np.asarray(data, dtype=np.float64)
    if stat == "bits_per_byte" and (units.ndim != 2 or units.shape[1] < 3):
        raise ValueError(f"metric {metric.get('name')}: bits_per_byte needs [nll, tokens, bytes] windows")
    return units


def _resampled_stat(units: np.ndarray, stat: str, idx: np.ndarray) -> np.ndarray:
    """T for each row of the index matrix ``idx`` (rows × n), vectorised."""
    if stat == "mean":
        return units[idx].mean(axis=1)
    nll = units[:, 0][idx].sum(axis=1)
    if stat == "perplexity":
        with np.errstate(over="ignore"):  # a diverged model overflows to inf: no interval then
            return np.exp(nll / units[:, 1][idx].sum(axis=1))
    return nll / (math.log(2) * units[:, 2][idx].sum(axis=1))


def _quantiles(samples: np.ndarray, level: float) -> list[float] | None:
    if not np.all(np.isfinite(samples)):
        return None
    alpha = 1.0 - level
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def verdict(delta_interval: list[float] | None, higher_is_better: bool) -> str:
    """``forgot`` / ``improved`` when the interval excludes 0 on the bad / good side."""
    if delta_interval is None:
        return "no interval"
    lo, hi = delta_interval
    if lo > 0 or hi < 0:
        return "improved" if (lo > 0) == higher_is_better else "forgot"
    return "no significant change"


def bootstrap(units: dict[str, np.ndarray], stat: str, baseline: str, higher_is_better: bool,
              resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL,
              paired: bool = True) -> Intervals:
    """Percentile intervals of T per checkpoint and of T_c − T_baseline (see the module docstring).

    Checkpoints with the same number of units share one index matrix (``paired=False`` draws one
    per checkpoint instead, to show what pairing buys). Same seed, same inputs → same intervals.
    """
    rng = np.random.default_rng(seed)
    samples = {c: np.empty(resamples) for c in units}
    groups = {}  # the checkpoints that share one index matrix
    for c, u in units.items():
        groups.setdefault(len(u) if paired else c, []).append(c)
    rows = max(1, CELLS_PER_CHUNK // max(len(u) for u in units.values()))
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        for members in groups.values():
            idx = rng.integers(0, len(units[members[0]]), size=(stop - start, len(units[members[0]])))
            for c in members:
                samples[c][start:stop] = _resampled_stat(units[c], stat, idx)
    same_n = len({len(u) for u in units.values()}) == 1
    out = Intervals(method="paired bootstrap" if paired and same_n else "unpaired bootstrap",
                    n_units=len(units.get(baseline, next(iter(units.values())))))
    out.interval = {c: _quantiles(s, level) for c, s in samples.items()}
    for c in (c for c in units if c != baseline and baseline in units):
        out.delta_interval[c] = _quantiles(samples[c] - samples[baseline], level)
        out.verdict[c] = verdict(out.delta_interval[c], higher_is_better)
    return out


def normal(values: dict[str, float], stderrs: dict[str, float], baseline: str,
           higher_is_better: bool, level: float = LEVEL) -> Intervals:
    """value ± z·se, and an unpaired delta ± z·sqrt(se_c² + se_base²); z = 1.96 at 95%."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    out = Intervals(method="normal")
    out.interval = {c: [v - z * stderrs[c], v + z * stderrs[c]] for c, v in values.items()}
    for c in (c for c in values if c != baseline and baseline in values):
        delta, se = values[c] - values[baseline], math.hypot(stderrs[c], stderrs[baseline])
        out.delta_interval[c] = [delta - z * se, delta + z * se]
        out.verdict[c] = verdict(out.delta_interval[c], higher_is_better)
    return out


def metric_intervals(metrics: dict[str, dict], baseline: str, higher_is_better: bool,
                     resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL) -> Intervals:
    """Intervals for one metric given ``{ckpt: metric dict}`` (only checkpoints with a finite value).

    Units on every checkpoint → paired bootstrap; else an ``stderr`` on every checkpoint → normal;
    else no interval (every verdict ``no interval``).
    """
    units = {c: units_of(m) for c, m in metrics.items()}
    if metrics and all(u is not None for u in units.values()):
        return bootstrap(units, statistic_of(next(iter(metrics.values()))), baseline,
                         higher_is_better, resamples, seed, level)
    stderrs = {c: m.get("stderr") for c, m in metrics.items()}
    if metrics and all(isinstance(s, (int, float)) and math.isfinite(s) for s in stderrs.values()):
        return normal({c: float(m["value"]) for c, m in metrics.items()}, stderrs, baseline,
                      higher_is_better, level)
    return Intervals()
