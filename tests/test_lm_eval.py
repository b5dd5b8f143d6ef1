"""lm-evaluation-harness tasks in a suite (stages/lm_eval_tasks.py) and their pass-through in preparation.

    pytest tests/test_lm_eval.py

The adapter test runs the shipped local task (configs/lm_eval/) on the tiny
random model and checks lm-eval's accuracy against one computed by hand from
a plain forward pass, so the wiring (model, tokenizer, prompt, choices) is
proven, not just a plausible number. Tests that need lm-eval are skipped
without the optional extra; the preparation and refusal tests run anyway.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
from pathlib import Path

import pytest
import torch

from corpora.prepare import PrepareSpec, _fingerprint, _write_evals
from stages import distributed
from stages.lm_eval_tasks import LmEvalError, run_lm_eval_tasks, to_metrics

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "lm_eval"
SOURCE = f"lm_eval:{EXAMPLE / 'general_knowledge.yaml'}"
LIMIT = 6  # documents scored: enough for a few right and wrong answers, about a second on the tiny model

needs_lm_eval = pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                   reason='lm-eval not installed: pip install "cptift[lm-eval]"')


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from stages.modeling import load_model

    return load_model(tiny_model_dir, "float32", "auto", False).eval()


@pytest.fixture(scope="module")
def lm_eval_run(tiny_model, tiny_tokenizer):
    """Our metrics for the example task, and the raw simple_evaluate output they came from."""
    import lm_eval

    captured = []
    original = lm_eval.simple_evaluate

    def recording(*args, **kwargs):
        captured.append(original(*args, **kwargs))
        return captured[-1]

    state = random.getstate()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lm_eval, "simple_evaluate", recording)
        metrics = run_lm_eval_tasks(tiny_model, tiny_tokenizer, "general", {"gk": SOURCE, "facts": "builtin:x"},
                                    batch_size=4, limit=LIMIT)
    assert random.getstate() == state, "simple_evaluate's reseeding leaked out"
    return metrics, captured[0]


def _choice_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """lm-eval's log-likelihood of a continuation: encode the whole, split at the context's tokens."""
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    cont = whole[len(ctx):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return sum(logprobs[len(ctx) - 1 + k, tok].item() for k, tok in enumerate(cont))


def _by_hand(model, tokenizer) -> tuple[list[list[float]], dict[str, list[float]]]:
    """Each item's choice log-likelihoods, and acc (argmax of their sums) and acc_norm (per character)."""
    rows = [json.loads(line) for line in (EXAMPLE / "general_knowledge.jsonl").read_text().splitlines()][:LIMIT]
    all_lls, acc, acc_norm = [], [], []
    for row in rows:
        context = f"Question: {row['question']}\nAnswer:"  # the YAML's doc_to_text
        lls = [_choice_logprob(model, tokenizer, context, " " + c) for c in row["choices"]]
        norm = [ll / len(c) for ll, c in zip(lls, row["choices"])]
        all_lls.append(lls)
        acc.append(float(max(range(len(lls)), key=lls.__getitem__) == row["answer"]))
        acc_norm.append(float(max(range(len(norm)), key=norm.__getitem__) == row["answer"]))
    return all_lls, {"acc": acc, "acc_norm": acc_norm}


@needs_lm_eval
def test_metrics_are_lm_evals_numbers_with_scores(lm_eval_run):
    metrics, raw = lm_eval_run
    assert [m["name"] for m in metrics] == ["gk/acc", "gk/acc_norm"]  # the builtin: task is not lm-eval's
    row = raw["results"]["cptift_general_knowledge"]
    for m in metrics:
        metric = m["name"].split("/")[1]
        assert m["suite"] == "general" and m["higher_is_better"] is True and m["statistic"] == "mean"
        assert m["value"] == row[f"{metric},none"]
        assert m["stderr"] == row[f"{metric}_stderr,none"] and m["stderr"] > 0
        assert m["n"] == len(m["scores"]) == LIMIT
        assert math.isclose(sum(m["scores"]) / len(m["scores"]), m["value"], rel_tol=1e-12)


@needs_lm_eval
def test_accuracy_matches_a_plain_forward_pass(lm_eval_run, tiny_model, tiny_tokenizer):
    metrics, raw = lm_eval_run
    sample = raw["samples"]["cptift_general_knowledge"][0]
    assert sample["arguments"][0][0] == "Question: What is the capital of France?\nAnswer:"  # the YAML rendered
    assert sample["arguments"][0][1] == " Paris"
    lls, expected = _by_hand(tiny_model, tiny_tokenizer)
    samples = sorted(raw["samples"]["cptift_general_knowledge"], key=lambda s: s["doc_id"])
    theirs = [[ll for ll, _ in s["filtered_resps"]] for s in samples]
    assert torch.allclose(torch.tensor(theirs), torch.tensor(lls), atol=1e-4)  # batched and padded vs alone
    assert {m["name"].split("/")[1]: m["scores"] for m in metrics} == expected
    assert 0 < sum(expected["acc"]) < LIMIT  # a few right and a few wrong: the comparison can fail


@needs_lm_eval
def test_a_folder_names_its_one_task(tiny_model, tiny_tokenizer):
    metrics = run_lm_eval_tasks(tiny_model, tiny_tokenizer, "domain", {"gk": f"lm_eval:{EXAMPLE}"}, 4, 2)
    assert [(m["suite"], m["name"], m["n"]) for m in metrics] == [("domain", "gk/acc", 2), ("domain", "gk/acc_norm", 2)]


@needs_lm_eval
def test_missing_local_task_fails_in_one_line(tiny_model, tiny_tokenizer):
    with pytest.raises(LmEvalError, match="no such YAML file"):
        run_lm_eval_tasks(tiny_model, tiny_tokenizer, "general", {"x": "lm_eval:nowhere/task.yaml"}, 4, 2)


def test_non_mean_metrics_keep_stderr_but_no_scores():
    raw = {"results": {"t": {"alias": "t", "bleu,none": 12.5, "bleu_stderr,none": 1.5, "acc,none": 0.5,
                             "acc_stderr,none": 0.5}},
           "higher_is_better": {"t": {"bleu": True, "acc": True}}, "n-samples": {"t": {"effective": 2}},
           "configs": {"t": {"metric_list": [{"metric": "bleu", "aggregation": "bleu"},
                                             {"metric": "acc", "aggregation": "mean"}]}},
           "samples": {"t": [{"doc_id": 1, "filter": "none", "bleu": ["ref", "hyp"], "acc": 0.0},
                             {"doc_id": 0, "filter": "none", "bleu": ["ref", "hyp"], "acc": 1.0}]}}
    bleu, acc = to_metrics("general", "tr", "t", raw)
    assert bleu["name"] == "tr/bleu" and bleu["stderr"] == 1.5 and bleu["n"] == 2
    assert "scores" not in bleu and "statistic" not in bleu  # stages/intervals.py: normal interval from stderr
    assert acc["scores"] == [1.0, 0.0] and acc["statistic"] == "mean"  # document order, not sample order


def test_partitioned_parameters_are_refused():
    world = distributed.World(rank=0, size=2)
    with pytest.raises(LmEvalError, match="zero3"):
        run_lm_eval_tasks(None, None, "general", {"gk": SOURCE}, 4, None, world=world, partitioned=True)


class _OtherRank:
    """Rank 1 of 2: what rank 0 broadcasts is ``outcome``."""

    is_writer, is_multi, size = False, True, 2

    def __init__(self, outcome):
        self.outcome = outcome

    def broadcast(self, obj):
        assert obj == ("ok", None)  # a non-writer rank sends nothing of its own
        return self.outcome


def test_other_ranks_take_rank_0s_result_without_running_lm_eval(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # any attempt to run lm-eval here would fail
    rows = [{"suite": "general", "name": "gk/acc", "value": 0.5}]
    assert run_lm_eval_tasks(None, None, "general", {"gk": SOURCE}, 4, None, world=_OtherRank(("ok", rows))) == rows
    with pytest.raises(LmEvalError, match="failed on rank 0: no such YAML"):
        run_lm_eval_tasks(None, None, "general", {"gk": SOURCE}, 4, None, world=_OtherRank(("error", "no such YAML")))


def test_missing_lm_eval_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(LmEvalError, match=r'pip install "cptift\[lm-eval\]"'):
        run_lm_eval_tasks(None, None, "general", {"gk": SOURCE}, 4, None)


def test_lm_eval_sources_pass_through_preparation(tmp_path, tiny_tokenizer):
    suites = {"general": {"tasks": {"gk": "lm_eval:nowhere/task.yaml", "arc": "lm_eval:arc_easy"}}}
    spec = PrepareSpec(domain_sources=[], instruction_sources=[], cpt_seq_len=64, ift_seq_len=64,
                       eval_suites=suites)
    assert _fingerprint(spec, tiny_tokenizer)  # no attempt to read or hash the lm_eval: sources
    report = _write_evals(spec, {}, tmp_path)
    assert report == {"general/perplexity_documents": 0, "general/gk_lm_eval": "nowhere/task.yaml",
                      "general/arc_lm_eval": "arc_easy"}
    assert sorted(p.name for p in (tmp_path / "eval" / "general").iterdir()) == ["perplexity.jsonl"]
