"""Metric formulas: every number in ``eval.json`` is computed here.

``stages.evaluate`` runs the model (window NLLs, choice log-likelihoods,
greedy replies); this module turns what it produced into metrics, with no
model and no torch. Formulas, units and sources: docs/metrics.md.

    from stages.metrics import task_metrics, window_metrics
    window_metrics("domain", [(812.4, 511, 2050), (790.1, 511, 1987)])  # perplexity, bits_per_byte
    task_metrics("general", "facts", items, [{"reply": "Paris.", "stopped": True}, ...])

A metric in ``eval.json`` is ``{"suite", "name", "value", "higher_is_better",
"n", "statistic", ...}`` and keeps what it was computed from, so that it can be
recomputed and resampled:
- ``"statistic": "mean"``: ``value`` is the mean of the per-item ``scores``
  (``n`` items); metrics computed from generated text also keep the
  ``replies``, aligned with ``scores``.
- ``"statistic": "perplexity"`` or ``"bits_per_byte"``: ``value`` comes from
  ``windows``, one ``[nll_sum, tokens_scored, bytes]`` row per perplexity
  window (``n``: tokens scored). Both metrics of a suite carry the same rows.
"""

from __future__ import annotations

import functools
import math
import re
import string

from corpora.checks import followed

LN2 = math.log(2)
ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = set(string.punctuation)


def mean_metric(suite: str, name: str, scores: list[float], higher_is_better: bool = True) -> dict:
    """A metric over per-item scores (0/1, or ROUGE-L F in [0, 1]); the value is their mean."""
    return {"suite": suite, "name": name, "value": round(sum(scores) / len(scores), 6),
            "higher_is_better": higher_is_better, "n": len(scores), "statistic": "mean", "scores": scores}


# ---- perplexity windows: rows of (NLL sum in nats, tokens scored, UTF-8 bytes of those tokens)

def perplexity(windows: list) -> float:
    """exp(Σ NLL / Σ tokens scored): the per-token likelihood, tied to the tokenizer."""
    nll, tokens = sum(w[0] for w in windows), sum(w[1] for w in windows)
    return math.exp(nll / tokens) if tokens else float("nan")


def bits_per_byte(windows: list) -> float:
    """Σ NLL / (ln 2 · Σ bytes): bits to encode each UTF-8 byte of the text, comparable across tokenizers."""
    nll, nbytes = sum(w[0] for w in windows), sum(w[2] for w in windows)
    return nll / (LN2 * nbytes) if nbytes else float("nan")


def window_metrics(suite: str, windows: list) -> list[dict]:
    """``perplexity`` and ``bits_per_byte`` of one suite, both with the window rows they come from.

    Sums run over the windows in window order: the same total whichever rank scored which window.
    """
    rows = [[round(nll, 6), tokens, nbytes] for nll, tokens, nbytes in windows]
    tokens = sum(row[1] for row in rows)
    return [{"suite": suite, "name": name, "value": round(fn(windows), 6), "higher_is_better": False,
             "n": tokens, "statistic": name, "windows": rows}
            for name, fn in (("perplexity", perplexity), ("bits_per_byte", bits_per_byte))]


def token_bytes(text: str, ends: list[int] | None, count: int) -> list[int]:
    """The UTF-8 bytes of ``text`` shared out over its ``count`` tokens; they sum to ``len(text.encode())``.

    With the tokens' character end offsets (``ends``, from a fast tokenizer's
    offset mapping), a token owns the text from the previous token's end to
    its own: the space before a word goes to the word's token, a character
    split over several byte-level tokens goes whole to the first of them,
    text after the last token goes to the last. Without offsets the bytes
    are spread evenly (right per document, approximate per window).
    """
    if count == 0:
        return []
    total = len(text.encode("utf-8", "replace"))
    if ends is None:
        return [total * (i + 1) // count - total * i // count for i in range(count)]
    out, done = [], 0
    for end in ends:
        end = max(end, done)
        out.append(len(text[done:end].encode("utf-8", "replace")))
        done = end
    out[-1] += total - sum(out)
    return out


# ---- multiple choice: per-choice total log-likelihoods of the continuation

def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # ties: the first


def choice_scores(item: dict, logliks: list[float]) -> dict[str, int]:
    """1 where the answer is the best choice, by two rules.

    ``accuracy``: the highest total log-likelihood of the choice's tokens
    (lm-eval ``acc``); ``accuracy_norm``: the highest log-likelihood per
    character of the choice (lm-eval ``acc_norm``), which does not favour
    short choices.
    """
    per_char = [ll / max(1, len(choice)) for ll, choice in zip(logliks, item["choices"])]
    return {"accuracy": int(_argmax(logliks) == item["answer"]),
            "accuracy_norm": int(_argmax(per_char) == item["answer"])}


# ---- generation: greedy replies against accepted answers

def contains_answer(reply: str, answers: list[str]) -> bool:
    """An accepted answer occurs in the reply as a whole word (no letter or digit beside it), case-insensitively."""
    return any(re.search(rf"(?<!\w){re.escape(a.strip())}(?!\w)", reply, re.IGNORECASE) for a in answers)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, drop ASCII punctuation, then a/an/the, then collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match(reply: str, answers: list[str]) -> bool:
    """The normalised reply equals a normalised accepted answer (SQuAD's exact match)."""
    return any(normalize_answer(reply) == normalize_answer(a) for a in answers)


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer  # imports nltk (~1.5 s): paid only when a task has references

    return rouge_scorer.RougeScorer(["rougeL"])


def rouge_l(reply: str, reference: str) -> float:
    """ROUGE-L F-measure, 2·LCS / (|reply| + |reference|) in words, by Google's rouge-score.

    Its tokenizer lower-cases and keeps runs of [a-z0-9] as words (other
    characters, accented letters included, separate words); no stemming.
    """
    return _rouge_scorer().score(reference, reply)["rougeL"].fmeasure


def generate_scores(item: dict, reply: str, stopped: bool) -> dict[str, float]:
    """accuracy (contains an answer), exact_match, rouge_l (items with a reference reply), stopped."""
    scores = {"accuracy": int(contains_answer(reply, item["answers"])),
              "exact_match": int(exact_match(reply, item["answers"]))}
    if item.get("reference"):
        scores["rouge_l"] = round(rouge_l(reply, item["answers"][0]), 6)
    return scores | {"stopped": int(stopped)}


def instruction_scores(item: dict, reply: str, stopped: bool) -> dict[str, int]:
    """followed: every check passes (IFEval prompt-level strict accuracy); stopped."""
    return {"followed": int(followed(reply, item["checks"])), "stopped": int(stopped)}


def item_scores(item: dict, result: dict) -> dict[str, float]:
    """One item's scores from what the model produced: ``{"logliks"}`` or ``{"reply", "stopped"}``."""
    if item["kind"] == "choice":
        return choice_scores(item, result["logliks"])
    score = instruction_scores if item["kind"] == "instruction" else generate_scores
    return score(item, result["reply"], result["stopped"])


def task_metrics(suite: str, name: str, items: list[dict], results: list[dict]) -> list[dict]:
    """``<name>/<metric>`` for every metric any item has, over the items that have it, in item order.

    A task may mix kinds: ``accuracy`` then covers its choice and generate
    items, ``stopped`` its generate and instruction items.
    """
    rows = [item_scores(item, result) for item, result in zip(items, results)]
    metrics = []
    for key in dict.fromkeys(k for row in rows for k in row):  # in order of first appearance
        covered = [(row[key], result) for row, result in zip(rows, results) if key in row]
        metric = mean_metric(suite, f"{name}/{key}", [score for score, _ in covered])
        if all("reply" in result for _, result in covered):
            metric["replies"] = [result["reply"] for _, result in covered]
        metrics.append(metric)
    return metrics
