"""Gates: rules on the forgetting report, checked after each evaluation; a broken ``fail`` rule exits 3."""

from __future__ import annotations

import dataclasses
import json

import pytest

from stages import gates
from stages.config import EvalConfig, GateConfig, load_config
from stages.invalidation import EVAL_KEYS
from tests import jobs


def _row(name, base, cpt, hib=True, interval=None, verdict=None, suite="general"):
    rel = None if base == 0 else round((cpt - base) / abs(base), 6)
    return {"suite": suite, "name": name, "higher_is_better": hib, "values": {"base": base, "cpt": cpt},
            "delta": {"cpt": round(cpt - base, 6)}, "relative_delta": {"cpt": rel},
            "delta_interval": {"cpt": interval}, "verdict": {"cpt": verdict}}


REPORT = {"checkpoints": ["base", "cpt"], "metrics": [
    _row("facts/accuracy", 0.60, 0.45, interval=[-0.25, -0.05], verdict="forgot"),  # -25%, significant
    _row("arithmetic/accuracy", 0.50, 0.40, interval=[-0.22, 0.02], verdict="no significant change"),  # -20%, noise
    _row("perplexity", 20.0, 21.0, hib=False, interval=[0.5, 1.5], verdict="forgot"),  # +5%: worse, small
    _row("perplexity", 10.0, 7.0, hib=False, interval=[-3.5, -2.5], verdict="improved", suite="domain"),
]}


def _gate(**kw) -> GateConfig:
    return GateConfig(**kw)


def test_max_drop_counts_only_significant_drops_beyond_the_threshold():
    [result] = gates.check(REPORT, [_gate(metric="*", relative=0.10)], "cpt")
    assert not result["passed"] and result["checked"] == 3
    assert [v["metric"] for v in result["violations"]] == ["general/facts/accuracy"]  # arithmetic: not significant
    assert "general/facts/accuracy 0.6 -> 0.45 (worse by 25.0% of base, more than 10%" in result["detail"]
    assert "95% interval of the delta [-0.25, -0.05], forgot" in result["detail"]
    [any_change] = gates.check(REPORT, [_gate(metric="*/accuracy", relative=0.10, significant=False)], "cpt")
    assert [v["metric"] for v in any_change["violations"]] == ["general/facts/accuracy", "general/arithmetic/accuracy"]
    [loose] = gates.check(REPORT, [_gate(relative=0.30)], "cpt")
    assert loose["passed"] and loose["violations"] == []


def test_direction_follows_higher_is_better():
    [ppl] = gates.check(REPORT, [_gate(metric="perplexity", relative=0.04)], "cpt")  # +5% perplexity is worse
    assert [v["metric"] for v in ppl["violations"]] == ["general/perplexity"]
    [gain] = gates.check(REPORT, [_gate(suite="domain", metric="perplexity", rule="min_gain", relative=0.25)], "cpt")
    assert gain["passed"]  # perplexity fell by 30%, significantly
    [short] = gates.check(REPORT, [_gate(suite="domain", metric="perplexity", rule="min_gain", relative=0.5)], "cpt")
    assert not short["passed"] and "better by 30.0% of base, at least 50% wanted" in short["detail"]


def test_a_rule_matching_nothing_or_a_missing_value_breaks():
    [typo] = gates.check(REPORT, [_gate(metric="factz/*")], "cpt")
    assert not typo["passed"] and "general/factz/* matches no metric" in typo["detail"]
    zero = {"checkpoints": ["base", "cpt"], "metrics": [_row("facts/exact_match", 0.0, 0.0, interval=[0, 0],
                                                             verdict="no significant change")]}
    assert gates.check(zero, [_gate(metric="*", significant=False)], "cpt")[0]["passed"]  # 0 -> 0: no change
    gained = {"checkpoints": ["base", "cpt"], "metrics": [_row("facts/exact_match", 0.0, 0.1)]}
    assert gates.check(gained, [_gate(rule="min_gain", relative=5.0, significant=False)], "cpt")[0]["passed"]
    missing = {"checkpoints": ["base", "cpt"], "metrics": [_row("perplexity", 20.0, 0.0, hib=False)]}
    missing["metrics"][0]["values"]["cpt"] = None
    missing["metrics"][0]["relative_delta"]["cpt"] = None
    [result] = gates.check(missing, [_gate(metric="perplexity")], "cpt")
    assert not result["passed"] and "not measured" in result["detail"]


def test_failure_message_names_rule_metric_values_interval_and_the_fix():
    results = gates.check(REPORT, [_gate(action="warn", relative=0.5), _gate(metric="facts/*")], "cpt")
    assert results[0]["passed"] and not results[1]["passed"]
    message = gates.failure(results)
    assert message.startswith("gate failed: after cpt: general/facts/* gets worse by at most 10% "
                              "(significant changes only) [fail]: general/facts/accuracy 0.6 -> 0.45")
    assert "[-0.25, -0.05]" in message and "relax or remove evals.gates[1]" in message
    assert len(message.splitlines()) == 1
    warn_only = gates.check(REPORT, [_gate(action="warn")], "cpt")
    assert not warn_only[0]["passed"] and gates.failure(warn_only) is None
    assert gates.check(REPORT, [_gate(after="ift")], "cpt") == []


def test_gates_load_from_yaml_and_bad_ones_say_what_to_fix(tmp_path):
    cfg = load_config("configs/tiny.yaml", ['evals.gates=[{after: cpt, metric: "facts/*", relative: 0.2}]'])
    assert cfg.evals.gates == [GateConfig(metric="facts/*", relative=0.2)]
    from stages.config import ConfigError
    with pytest.raises(ConfigError, match="after must be cpt or ift"):
        load_config("configs/tiny.yaml", ["evals.gates=[{after: base}]"])
    with pytest.raises(ConfigError, match=r"evals.gates\[0\].rule: 'max_dorp' is not one of"):
        load_config("configs/tiny.yaml", ["evals.gates=[{rule: max_dorp}]"])


def test_gates_are_no_input_of_any_evaluation():
    """Relaxing a gate must not redo evaluations: every other evals key is an evaluation input."""
    evaluated = {k.split(".", 1)[1] for k in EVAL_KEYS if k.startswith("evals.")}
    assert evaluated == {f.name for f in dataclasses.fields(EvalConfig)} - {"gates"}


@pytest.mark.slow
def test_a_failing_gate_stops_after_the_evaluation_with_exit_3_and_a_relaxed_rerun_goes_on(tmp_path, isolated_cache):
    out = tmp_path / "run"
    common = ["run", "configs/tiny.yaml", f"run.output_dir={out}", "tracking.wandb.mode=disabled"]
    strict = 'evals.gates=[{after: cpt, suite: domain, metric: perplexity, rule: min_gain, relative: 0.99}]'
    stopped = jobs.cptift(*common, strict)
    assert stopped.returncode == gates.EXIT_GATE, stopped.stderr[-3000:]
    [line] = [x for x in stopped.stderr.splitlines() if x.startswith("error:")]
    assert "gate failed: after cpt: domain/perplexity improves by at least 99% (and significantly) [fail]" in line
    assert "domain/perplexity " in line and " -> " in line and "95% interval of the delta [" in line
    assert "relax or remove evals.gates[0]" in line
    done = {p.stem for p in (out / "steps").glob("*.json")}
    assert done == {"prepare", "eval_base", "cpt", "eval_cpt"}  # stopped right after the evaluation
    recorded = json.loads((out / "cpt" / "gates.json").read_text())
    assert recorded[0]["passed"] is False and recorded[0]["violations"][0]["metric"] == "domain/perplexity"

    relaxed = 'evals.gates=[{after: cpt, suite: domain, metric: perplexity, rule: min_gain, relative: 0.0, ' \
              'significant: false}]'
    rerun = jobs.ok(jobs.cptift(*common, relaxed))
    for step in ("prepare", "eval_base", "cpt", "eval_cpt"):
        assert f"[skip] {step}:" in rerun.stdout + rerun.stderr
    report = json.loads((out / "report" / "forgetting.json").read_text())
    assert [g["passed"] for g in report["gates"]] == [True] and report["gates"][0]["after"] == "cpt"
