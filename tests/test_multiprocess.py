"""N processes must train and evaluate exactly as one process with the same global batch.

Each case runs the tiny pipeline up to CPT twice: once as a plain process with
micro-batch 4 and 2 accumulation steps, once under torchrun with 2 ranks of
micro-batch 4 each (global batch 8 both times), in float32 so that the only
differences left are the order of floating-point sums. Then:
- the final weights agree within ``WEIGHT_ATOL`` (below);
- the per-rank sample logs show, at every step, two disjoint halves whose
  union is exactly the batch the single process trained;
- the base model's evaluation (run in the same jobs, before CPT) agrees:
  accuracies and every per-item score and reply identical, perplexity within
  1e-4 relative, with the model replicated and with it partitioned (ZeRO-3).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests import jobs

pytestmark = pytest.mark.slow

# Justification: one process accumulates two micro-batches; two ranks average
# theirs with an all-reduce. In float32 the sums differ by a few ulp (~1e-7
# relative), and over 12 AdamW steps at lr 1e-3 that grew to 1.2e-7 (ZeRO-2)
# and 2e-8 (ZeRO-3) when measured. 1e-5 leaves a wide margin, yet training
# moves the weights by ~1e-2 (asserted below), so a rank that trained one
# wrong sample, or a doubled gradient, could not pass.
WEIGHT_ATOL = 1e-5
COMMON = ["--until", "cpt", "model.dtype=float32", "cpt.micro_batch_size=4", "tracking.wandb.mode=disabled"]
CASES = {  # name -> (DeepSpeed config, how ranks hold the model while evaluating)
    "zero2": ("configs/deepspeed/zero2.json", "replicated"),
    "zero3": ("configs/deepspeed/zero3.json", "zero3"),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory, isolated_cache):
    """(case name, one-process run dir, two-process run dir) for one DeepSpeed stage."""
    ds, params = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    one, two = root / "one", root / "two"
    stage = f"cpt.deepspeed={ds}"
    jobs.ok(jobs.cptift("run", "configs/tiny.yaml", *COMMON, stage, "cpt.grad_accum_steps=2",
                        f"run.output_dir={one}"))
    jobs.ok(jobs.torchrun(2, "run", "configs/tiny.yaml", *COMMON, stage, "cpt.grad_accum_steps=1",
                          f"evals.parameters={params}", f"run.output_dir={two}"))
    return request.param, one, two


def test_two_ranks_train_the_weights_of_one_process(pair):
    _, one, two = pair
    w_one, w_two = jobs.weights(one / "cpt" / "final"), jobs.weights(two / "cpt" / "final")
    assert jobs.max_weight_diff(w_one, w_two) < WEIGHT_ATOL
    base = jobs.weights(Path(json.loads((one / "lineage.json").read_text())["base"]["resolved"]))
    assert jobs.max_weight_diff(base, w_one) > 100 * WEIGHT_ATOL  # training really moved them


def test_ranks_read_disjoint_halves_of_every_global_batch(pair):
    _, one, two = pair
    single = jobs.sample_log(one / "cpt", 0)
    ranks = [jobs.sample_log(two / "cpt", r) for r in (0, 1)]
    assert [e["step"] for e in single] == list(range(1, 13))
    for step, (whole, a, b) in enumerate(zip(single, *ranks), 1):
        assert a["step"] == b["step"] == step
        assert len(a["ids"]) == len(b["ids"]) == 4
        assert not set(a["ids"]) & set(b["ids"]), f"step {step}: both ranks trained the same sample"
        assert sorted(a["ids"] + b["ids"]) == sorted(whole["ids"]), f"step {step}: not the 1-process batch"
    assert len(single) == len(ranks[0]) == len(ranks[1])


def test_two_ranks_evaluate_like_one_process(pair):
    case, one, two = pair
    held = json.loads((two / "base" / "eval.json").read_text())
    assert held["processes"] == 2 and held["parameters"] == CASES[case][1]
    m_one, m_two = jobs.eval_metrics(one, "base"), jobs.eval_metrics(two, "base")
    assert list(m_one) == list(m_two)
    for key, a in m_one.items():
        b = m_two[key]
        assert a["n"] == b["n"], key
        if key[1] in ("perplexity", "bits_per_byte"):
            assert b["value"] == pytest.approx(a["value"], rel=1e-4), key
            assert len(a["windows"]) == len(b["windows"]) > 1
        else:
            assert a["value"] == b["value"] and a["scores"] == b["scores"], key
            assert a.get("replies") == b.get("replies"), key
    assert any(m["value"] > 0 for k, m in m_one.items() if k[1].endswith("accuracy")), "a test that cannot differ"


def test_two_ranks_killed_while_saving_resume_to_the_uninterrupted_weights(pair, tmp_path):
    """Both ranks SIGKILLed while writing checkpoint-12; the rerun resumes from checkpoint-6 on 2 ranks."""
    import signal
    import sys

    from stages.checkpoints import MARKER
    from tests.test_reliability import KILL_IN_SAVE

    case, _, two = pair
    if case != "zero2":
        pytest.skip("one DeepSpeed stage is enough for the resume path")
    out = tmp_path / "run"
    args = ["run", "configs/tiny.yaml", *COMMON, f"cpt.deepspeed={CASES[case][0]}", "cpt.grad_accum_steps=1",
            f"evals.parameters={CASES[case][1]}", f"run.output_dir={out}"]
    killed = jobs.torchrun(2, *args, program=(sys.executable, "-c", KILL_IN_SAVE))
    assert killed.returncode != 0 and f"Signal {int(signal.SIGKILL)} (SIGKILL)" in killed.stdout + killed.stderr
    assert not (out / "cpt" / "checkpoints" / "checkpoint-12" / MARKER).exists()
    resumed = jobs.ok(jobs.torchrun(2, *args))
    assert "resuming from" in resumed.stderr and "checkpoint-6" in resumed.stderr
    # float32, one thread per rank, the same two ranks: bit-identical to the uninterrupted 2-rank run.
    assert jobs.max_weight_diff(jobs.weights(two / "cpt" / "final"), jobs.weights(out / "cpt" / "final")) == 0.0
    for rank in (0, 1):
        assert jobs.sample_log(out / "cpt", rank) == jobs.sample_log(two / "cpt", rank)
    # The losses logged after the resume point (rank 0 logs the all-reduced mean) are the uninterrupted run's.
    after = [(step, loss) for step, loss in jobs.logged_losses(out) if step > 6]
    assert after == [(s, v) for s, v in jobs.logged_losses(two) if s > 6] and [s for s, _ in after] == [8, 10, 12]
