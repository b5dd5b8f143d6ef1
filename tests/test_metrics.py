"""Every metric kind against values computed by hand (docs/metrics.md).

Perplexity, bits per byte and choice log-likelihoods are recomputed here
with a plain forward pass of the tiny random model; the text metrics and
the instruction checks are pinned on fixed strings.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from corpora.builtin import builtin_tasks
from corpora.builtin.instructions import CONSTRAINTS
from corpora.sources import CHECK_PARAMETERS, DataError, check_task_item
from corpora import checks
from stages import evaluate, metrics
from stages.distributed import World
from stages.modeling import load_model

DOCS = [{"id": "a", "text": "The quick brown fox jumps over the lazy dog. " * 3},
        {"id": "b", "text": "Tides rise and fall twice a day, pulled by the Moon."}]


@pytest.fixture(scope="module")
def ev(tiny_model_dir, tiny_tokenizer):
    model = load_model(str(tiny_model_dir)).eval()
    return evaluate.Evaluator(model, tiny_tokenizer, World(), batch_size=2)


@torch.no_grad()
def _sequence_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t] | ids[:t]) for t = 1 .. len(ids) - 1, in float64."""
    logits = model(input_ids=torch.tensor([ids])).logits.float()
    logprobs = logits[0, :-1].log_softmax(-1).double()
    return logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


# ---------------------------------------------------------------- perplexity and bits per byte


def test_perplexity_and_bits_per_byte_by_hand(ev, monkeypatch):
    monkeypatch.setattr(evaluate, "PPL_WINDOW", 16)  # several full windows and a short last one
    tok = ev.tokenizer
    stream, own_bytes = [], []
    for doc in DOCS:  # ASCII text: each token's bytes are its decoded text's, EOS counts 0
        ids = tok(doc["text"], add_special_tokens=False)["input_ids"]
        stream += ids + [tok.eos_token_id]
        own_bytes += [len(tok.decode([i])) for i in ids] + [0]
    assert sum(own_bytes) == sum(len(doc["text"]) for doc in DOCS)
    cap = len(stream) - 5  # the cap cuts the second document
    stream, own_bytes = stream[:cap], own_bytes[:cap]

    windows = evaluate.perplexity_windows(ev, DOCS, cap)
    assert len(windows) == math.ceil(cap / 16) and cap % 16 > 1
    nll = tokens = nbytes = 0.0
    for k, start in enumerate(range(0, cap, 16)):
        window = stream[start: start + 16]
        window_nll = -_sequence_logprobs(ev.model, window).sum().item()
        window_bytes = sum(own_bytes[start + 1: start + len(window)])  # the first token is context only
        assert windows[k][0] == pytest.approx(window_nll, rel=1e-5)
        assert windows[k][1:] == (len(window) - 1, window_bytes)
        nll, tokens, nbytes = nll + window_nll, tokens + len(window) - 1, nbytes + window_bytes

    ppl, bpb = metrics.window_metrics("general", windows)
    assert ppl["value"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert bpb["value"] == pytest.approx(nll / (math.log(2) * nbytes), rel=1e-5)
    assert (ppl["name"], ppl["statistic"], bpb["name"], bpb["statistic"]) == \
        ("perplexity", "perplexity", "bits_per_byte", "bits_per_byte")
    assert ppl["windows"] == bpb["windows"] and len(ppl["windows"][0]) == 3
    assert ppl["n"] == bpb["n"] == tokens and not ppl["higher_is_better"] and not bpb["higher_is_better"]


def test_token_bytes_share_out_the_utf8_bytes(tiny_tokenizer):
    text = "  naïve café 😀 end.\n"
    enc = tiny_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    shares = metrics.token_bytes(text, [end for _, end in enc["offset_mapping"]], len(enc["input_ids"]))
    assert len(shares) == len(enc["input_ids"]) and sum(shares) == len(text.encode())
    assert 0 in shares  # a character split over byte-level tokens is owned by its first token
    # by hand: a token owns the text from the previous token's end to its own
    assert metrics.token_bytes("ab é", [1, 2, 4, 4], 4) == [1, 1, 3, 0]
    assert metrics.token_bytes("abcdefg", None, 3) == [2, 2, 3]  # no offsets: spread evenly
    assert metrics.token_bytes("", [], 0) == []


# ---------------------------------------------------------------- multiple choice


def test_accuracy_and_accuracy_norm_disagree_as_computed_by_hand(ev):
    # A one-character choice costs one token: the highest total log-likelihood.
    # A long repetitive choice costs many tokens but fewer nats per character.
    item = {"kind": "choice", "prompt": "Pick one.", "choices": ["x", "the the the the the the the the"], "answer": 0}
    tok = ev.tokenizer
    prompt_ids = tok(evaluate._prompt(tok, item), add_special_tokens=False)["input_ids"]
    by_hand = []
    for choice in item["choices"]:
        choice_ids = tok(choice, add_special_tokens=False)["input_ids"]
        by_hand.append(_sequence_logprobs(ev.model, prompt_ids + choice_ids)[len(prompt_ids) - 1:].sum().item())
    [logliks] = evaluate.choice_logliks(ev, [item])
    assert logliks == pytest.approx(by_hand, rel=1e-4)
    per_char = [ll / len(c) for ll, c in zip(by_hand, item["choices"])]
    assert by_hand[0] > by_hand[1] and per_char[1] > per_char[0], "the example must make the two disagree"
    assert metrics.choice_scores(item, logliks) == {"accuracy": 1, "accuracy_norm": 0}
    assert metrics.choice_scores(item | {"answer": 1}, logliks) == {"accuracy": 0, "accuracy_norm": 1}


# ---------------------------------------------------------------- generation


def test_contains_exact_match_and_rouge_l_on_fixed_strings():
    assert metrics.contains_answer("The capital is Paris.", ["paris"])
    assert not metrics.contains_answer("Parisian food", ["Paris"])  # whole words only
    assert metrics.normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert metrics.exact_match("The Paris.", ["paris"]) and metrics.exact_match("an apple", ["Apple"])
    assert not metrics.exact_match("Paris, France", ["Paris"])  # contains it, but is not it
    assert metrics.exact_match("42", ["41", "42"]) and not metrics.exact_match("", ["42"])
    # LCS by hand: "the cat ... on ... mat" = 4 of 6 and 6 words: F = 2·4 / (6 + 6)
    assert metrics.rouge_l("the cat sat on the mat", "the cat is on a mat") == pytest.approx(8 / 12)
    # rouge-score lower-cases and splits at punctuation: "the cat sat" vs "the cat": F = 2·2 / (3 + 2)
    assert metrics.rouge_l("The Cat, sat!", "the cat") == pytest.approx(0.8)
    assert metrics.rouge_l("", "the cat") == 0.0 and metrics.rouge_l("dog", "the cat") == 0.0


def test_task_metrics_names_fields_and_order():
    items = [{"kind": "generate", "answers": ["4"], "reference": True}, {"kind": "generate", "answers": ["Paris"]},
             {"kind": "instruction", "checks": [{"type": "lowercase"}]}]
    results = [{"reply": "4", "stopped": True}, {"reply": "It is Paris.", "stopped": False},
               {"reply": "fine", "stopped": False}]
    out = {m["name"]: m for m in metrics.task_metrics("general", "t", items, results)}
    assert list(out) == ["t/accuracy", "t/exact_match", "t/rouge_l", "t/stopped", "t/followed"]
    assert out["t/accuracy"]["scores"] == [1, 1] and out["t/exact_match"]["scores"] == [1, 0]
    assert out["t/rouge_l"]["scores"] == [1.0] and out["t/stopped"]["scores"] == [1, 0, 0]
    assert out["t/followed"] | {"replies": None} == {
        "suite": "general", "name": "t/followed", "value": 1.0, "higher_is_better": True, "n": 1,
        "statistic": "mean", "scores": [1], "replies": None}
    assert out["t/followed"]["replies"] == ["fine"]
    assert out["t/stopped"]["replies"] == ["4", "It is Paris.", "fine"]  # aligned with the scores


def test_evaluate_task_runs_each_kind_once(ev):
    items = [{"kind": "choice", "prompt": "Pick.", "choices": ["a", "b"], "answer": 1},
             {"kind": "generate", "prompt": "Say 4.", "answers": ["4"]},
             {"kind": "instruction", "prompt": "Say hi.", "checks": [{"type": "max_words", "n": 100}]}]
    out = evaluate.evaluate_task(ev, "general", "mix", items, SimpleNamespace(max_new_tokens=3))
    names = [m["name"] for m in out]
    assert names == ["mix/accuracy", "mix/accuracy_norm", "mix/exact_match", "mix/stopped", "mix/followed"]
    by_name = {m["name"]: m for m in out}
    assert by_name["mix/accuracy"]["n"] == 2 and "replies" not in by_name["mix/accuracy"]  # choice + generate
    followed = by_name["mix/followed"]
    assert by_name["mix/stopped"]["n"] == 2
    assert followed["scores"] == [int(0 < len(followed["replies"][0].split()) <= 100)]
    assert all(m["statistic"] == "mean" for m in out)


# ---------------------------------------------------------------- instruction checks

CASES = [  # (check, reply, passes)
    ({"type": "max_words", "n": 3}, "It is   blue.", True),
    ({"type": "max_words", "n": 3}, "It is very blue.", False),
    ({"type": "max_words", "n": 3}, " \n", False),  # an empty reply answers nothing
    ({"type": "json", "keys": ["answer"]}, '{"answer": "blue"}', True),
    ({"type": "json", "keys": ["answer"]}, '```json\n{"answer": "blue", "why": 1}\n```', True),  # fence tolerated
    ({"type": "json", "keys": ["answer"]}, '```\n{"answer": 1}\n```', True),
    ({"type": "json", "keys": ["answer"]}, '{"reply": "blue"}', False),  # required key missing
    ({"type": "json"}, 'Sure! {"answer": "blue"}', False),  # text around the object
    ({"type": "json"}, '["blue"]', False),  # not an object
    ({"type": "json"}, '{"answer": ', False),
    ({"type": "lowercase"}, "the sky is blue, 100%.", True),
    ({"type": "lowercase"}, "the NASA probe", False),  # an upper-case acronym
    ({"type": "lowercase"}, "Ça va", False),
    ({"type": "lowercase"}, "42", False),  # no letter at all
    ({"type": "bullets", "n": 2}, "- red\n- blue", True),
    ({"type": "bullets", "n": 2}, "Colours:\n\n* red\n\n  * blue\n\nThat is all.", True),  # blank lines, intro
    ({"type": "bullets", "n": 2}, "- red\n- blue\n- green", False),
    ({"type": "bullets", "n": 2}, "**Red**\n-5 degrees\n1. blue", False),  # bold, minus sign, numbers
    ({"type": "ends_with", "phrase": "Is there anything else?"}, "Blue. Is there anything else?  \n", True),
    ({"type": "ends_with", "phrase": "Is there anything else?"}, "blue. is there anything else?", True),
    ({"type": "ends_with", "phrase": "Have a nice day"}, "Blue. Have a nice day.", True),  # final period
    ({"type": "ends_with", "phrase": "Hope this helps."}, "Blue. Hope this helps.", True),
    ({"type": "ends_with", "phrase": "Hope this helps."}, "Blue. Hope this helps", False),
    ({"type": "ends_with", "phrase": "Is there anything else?"}, 'Blue. "Is there anything else?"', False),
    ({"type": "ends_with", "phrase": "Is there anything else?"}, "Is there anything else? Blue.", False),
]


@pytest.mark.parametrize("check, reply, passes", CASES)
def test_instruction_check(check, reply, passes):
    assert checks.passes(reply, check) is passes


def test_followed_needs_every_check():
    both = [{"type": "lowercase"}, {"type": "max_words", "n": 2}]
    assert checks.followed("hello there", both) and not checks.followed("hello there you", both)
    assert not checks.followed("Hello there", both)


def test_check_tables_agree():
    import inspect

    assert set(checks.CHECKS) == set(CHECK_PARAMETERS)
    for kind, fn in checks.CHECKS.items():
        params = list(inspect.signature(fn).parameters)[1:]
        assert set(params) == set(CHECK_PARAMETERS[kind]), kind
    # Read off the signatures: a parameter without a default is required.
    assert CHECK_PARAMETERS == {"max_words": {"n": True}, "json": {"keys": False}, "lowercase": {},
                                "bullets": {"n": True}, "ends_with": {"phrase": True}}


@pytest.mark.parametrize("item_checks, message", [
    (None, "checks.jsonl:3: an instruction item needs 'checks'"),
    ([], "checks.jsonl:3: an instruction item needs 'checks'"),
    ([{"type": "shout"}], "checks.jsonl:3: checks[0].type must be one of max_words, json, lowercase"),
    ([{"n": 3}], "checks.jsonl:3: checks[0].type must be one of"),
    ([{"type": "lowercase"}, {"type": "bullets"}], "checks.jsonl:3: checks[1] (bullets) needs parameter 'n'"),
    ([{"type": "max_words", "n": "ten"}], "checks.jsonl:3: checks[0].n must be a positive integer, got 'ten'"),
    ([{"type": "max_words", "n": True}], "checks.jsonl:3: checks[0].n must be a positive integer"),
    ([{"type": "json", "keys": "answer"}], "checks.jsonl:3: checks[0].keys must be a list of strings"),
    ([{"type": "ends_with", "phrase": " "}], "checks.jsonl:3: checks[0].phrase must be a non-empty string"),
    ([{"type": "lowercase", "n": 1}], "checks.jsonl:3: checks[0] (lowercase) has unknown parameter 'n'; "
                                      "it takes: none"),
])
def test_bad_instruction_items_name_file_line_and_field(item_checks, message):
    row = {"kind": "instruction", "prompt": "Say hi.", "checks": item_checks}
    with pytest.raises(DataError) as error:
        check_task_item(row, "checks.jsonl:3")
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# ---------------------------------------------------------------- built-in task


def test_builtin_instruction_following():
    items = builtin_tasks("instruction-following")
    assert len(items) >= 120 and len({i["id"] for i in items}) == len(items)
    assert items == builtin_tasks("instruction-following")  # deterministic
    for item in items:
        assert check_task_item(item, item["id"]) is item and item["kind"] == "instruction"
    for start in range(0, 40, 5):  # any max_items cut mixes the five constraint types
        assert {i["checks"][0]["type"] for i in items[start: start + 5]} == set(CONSTRAINTS)
    assert not any(word in i["prompt"].lower() for i in items for word in ("python", "code", "program"))
    assert {c["type"] for i in items for c in i["checks"]} == set(checks.CHECKS)
