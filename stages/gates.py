"""Gates: rules on the forgetting report that warn about, or stop, a run that forgets too much.

    evals:
      gates:
        - {after: cpt, suite: general, metric: "*", rule: max_drop, relative: 0.10, action: fail}
        - {after: cpt, suite: domain, metric: perplexity, rule: min_gain, relative: 0.05, action: warn}

A rule is checked once the checkpoint it names (``after``) has been evaluated,
against ``base``, on every metric of ``suite`` whose name matches ``metric``
(a shell pattern). "Worse" and "better" respect each metric's direction (a
rising perplexity is worse). The change is relative to the base value:
``(value - base) / |base|``.

- ``max_drop``: a metric breaks the rule when it got worse by more than
  ``relative`` and, with ``significant: true`` (the default), its paired 95%
  interval of the delta excludes zero (verdict ``forgot``): a drop that the
  suite's size cannot tell from noise does not stop a run.
- ``min_gain``: a metric breaks the rule when it improved by less than
  ``relative`` or, with ``significant: true``, its improvement is not
  significant (verdict other than ``improved``).

A metric without an interval (no per-item data) is judged on the size of the
change alone; from a base of 0 any change counts as infinitely large. A
missing value, or a rule that matches no metric (a typo), breaks the rule. ``fail`` stops the pipeline with exit code 3 (``EXIT_GATE``) right
after the evaluation, every completed step kept: relax or remove the rule and
run the same command again, and the pipeline goes on from there (gates are not
inputs of any evaluation, so nothing is redone). ``warn`` logs and goes on.
Every result is recorded in the report's ``gates``.
"""

from __future__ import annotations

import fnmatch
import math

from stages.config import GateAction, GateConfig, GateRule
from stages.forgetting import baseline_of

EXIT_GATE = 3  # documented in docs/troubleshooting.md


class GateFailed(Exception):
    """A ``fail`` gate was broken; the message names the rule, the metric, the values and the interval."""


def describe(gate: GateConfig) -> str:
    """The rule in words, e.g. 'after cpt: general/* gets worse by at most 10% (significant changes) [fail]'."""
    what = "gets worse by at most" if gate.rule == GateRule.max_drop else "improves by at least"
    which = "significant changes only" if gate.significant else "any change"
    if gate.rule == GateRule.min_gain and gate.significant:
        which = "and significantly"
    return f"after {gate.after}: {gate.suite}/{gate.metric} {what} {gate.relative:.0%} ({which}) [{gate.action}]"


def check(report: dict, gates: list[GateConfig], after: str) -> list[dict]:
    """The results of the rules checked after checkpoint ``after`` (the report must hold it and base)."""
    base = baseline_of(report)
    return [_check_one(report, base, i, gate) for i, gate in enumerate(gates) if gate.after == after]


def failure(results: list[dict]) -> str | None:
    """The one-line message of the first broken ``fail`` rule, or None."""
    broken = [r for r in results if not r["passed"] and r["action"] == GateAction.fail]
    if not broken:
        return None
    first = broken[0]
    more = f" (and {len(broken) - 1} more rule(s))" if len(broken) > 1 else ""
    return (f"gate failed: {first['rule']}: {first['detail']}{more}; completed steps are kept: relax or remove "
            f"evals.gates[{first['index']}] and run the same command again")


def _check_one(report: dict, base: str, index: int, gate: GateConfig) -> dict:
    rows = [m for m in report["metrics"]
            if m["suite"] == gate.suite and fnmatch.fnmatchcase(m["name"], gate.metric)]
    violations = [v for v in (_violation(m, base, gate) for m in rows) if v]
    if not rows:
        violations = [{"metric": f"{gate.suite}/{gate.metric}", "why": "matches no metric of the report"}]
    detail = "; ".join(_say(v) for v in violations[:3]) + (f"; {len(violations) - 3} more" if len(violations) > 3
                                                            else "")
    return {"rule": describe(gate), "index": index, "after": gate.after, "action": str(gate.action),
            "passed": not violations, "checked": len(rows), "violations": violations,
            "detail": detail or f"{len(rows)} metric(s) within the rule"}


def _violation(m: dict, baseline: str, gate: GateConfig) -> dict | None:
    """The facts of one metric that breaks the rule (against checkpoint ``baseline``), or None."""
    ckpt, base = gate.after, m["values"].get(baseline)
    value = m["values"].get(ckpt)
    rel = _relative(value, base)
    facts = {"metric": f"{m['suite']}/{m['name']}", "base": base, "value": value, "relative_delta": rel,
             "delta_interval": m.get("delta_interval", {}).get(ckpt), "verdict": m.get("verdict", {}).get(ckpt)}
    if rel is None:
        return facts | {"why": "not measured"}
    worse_by = -rel if m["higher_is_better"] else rel  # > 0: got worse by this share of base
    judged = gate.significant and facts["delta_interval"] is not None
    if gate.rule == GateRule.max_drop:
        broken = worse_by > gate.relative and (not judged or facts["verdict"] == "forgot")
        why = f"worse by {worse_by:.1%} of base, more than {gate.relative:.0%}"
    else:
        broken = -worse_by < gate.relative or (judged and facts["verdict"] != "improved")
        why = f"better by {-worse_by:.1%} of base, at least {gate.relative:.0%} wanted"
    return facts | {"why": why} if broken else None


def _relative(value: float | None, base: float | None) -> float | None:
    """(value - base) / |base|; from a base of 0, no change is 0 and any change is infinitely large."""
    if value is None or base is None:
        return None
    if base == 0:
        return 0.0 if value == 0 else math.copysign(math.inf, value)
    return (value - base) / abs(base)


def _say(v: dict) -> str:
    if v.get("value") is None or v.get("base") is None:
        return f"{v['metric']} {v['why']}"
    interval = v.get("delta_interval")
    ci = f", 95% interval of the delta [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else ", no interval"
    verdict = f", {v['verdict']}" if v.get("verdict") else ""
    return f"{v['metric']} {v['base']:.4g} -> {v['value']:.4g} ({v['why']}{ci}{verdict})"
