"""Evaluation suites: held-out perplexity, multiple choice, generation.

    result = evaluate_checkpoint("runs/demo/cpt/final", Path("runs/demo/data"), cfg.evals, "bfloat16")

Each suite (``general``, ``domain``) reads what ``corpora.prepare`` wrote under
``data/eval/<suite>/``: ``perplexity.jsonl`` (documents) and one JSONL per task.
Metric definitions (the names are ``<task>/<metric>``):
- ``perplexity``: exp of the mean next-token loss over the documents joined by
  EOS and cut into non-overlapping windows, capped at ``max_perplexity_tokens``.
- ``<task>/accuracy`` for choice items: the choice with the highest
  log-likelihood per character given the chat-formatted prompt (lm-eval's
  ``acc_norm``) is the answer.
- ``<task>/accuracy`` for generate items: a greedy reply contains one of the
  accepted answers as a whole word, case-insensitively; ``<task>/stopped``:
  the reply ended with the end-of-turn token inside ``max_new_tokens`` (an
  instruction-tuned model that stops talking has forgotten how to stop);
  ``<task>/rouge_l``: ROUGE-L F1 against the reference reply, for items held
  out from the instruction data.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from corpora.chat import prompt_text
from corpora.prepare import read_jsonl
from stages.config import EvalConfig
from stages.modeling import load_model, load_tokenizer

PPL_WINDOW = 512  # tokens per perplexity window
SUITES = ("general", "domain")


def _metric(suite: str, name: str, value: float, n: int, higher_is_better: bool = True) -> dict:
    return {"suite": suite, "name": name, "value": round(float(value), 6), "higher_is_better": higher_is_better,
            "n": n}


@torch.no_grad()
def perplexity(model, tokenizer, docs: list[dict], max_tokens: int, batch_size: int) -> tuple[float, int]:
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(stream) >= max_tokens:
            break
    stream = stream[:max_tokens]
    windows = [stream[i: i + PPL_WINDOW] for i in range(0, len(stream), PPL_WINDOW)]
    windows = [w for w in windows if len(w) > 1]
    total_nll, count = 0.0, 0
    # Windows are all PPL_WINDOW long except possibly the last, so batches need no padding.
    full = [w for w in windows if len(w) == PPL_WINDOW]
    groups = [full[i: i + batch_size] for i in range(0, len(full), batch_size)]
    groups += [[w] for w in windows if len(w) < PPL_WINDOW]
    for group in tqdm(groups, desc="perplexity", leave=False):
        ids = torch.tensor(group)
        logits = model(input_ids=ids).logits.float()
        total_nll += F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="sum").item()
        count += ids[:, 1:].numel()
    return (math.exp(total_nll / count) if count else float("nan")), count


def _prompt(tokenizer, item: dict) -> str:
    messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
    return prompt_text(tokenizer, messages)


@torch.no_grad()
def choice_accuracy(model, tokenizer, items: list[dict], batch_size: int) -> float:
    pairs = []  # (item index, choice index, prompt ids, continuation ids)
    for i, item in enumerate(items):
        prompt_ids = tokenizer(_prompt(tokenizer, item), add_special_tokens=False)["input_ids"]
        for j, choice in enumerate(item["choices"]):
            pairs.append((i, j, prompt_ids, tokenizer(choice, add_special_tokens=False)["input_ids"]))
    scores = [[-math.inf] * len(item["choices"]) for item in items]
    for b in tqdm(range(0, len(pairs), batch_size), desc="choices", leave=False):
        batch = pairs[b: b + batch_size]
        for (i, j, _, _), logprob in zip(batch, _continuation_logprobs(model, tokenizer, batch)):
            scores[i][j] = logprob / max(1, len(items[i]["choices"][j]))
    correct = sum(max(range(len(s)), key=s.__getitem__) == item["answer"] for s, item in zip(scores, items))
    return correct / len(items)


def _continuation_logprobs(model, tokenizer, batch: list[tuple]) -> list[float]:
    seqs = [p + c for _, _, p, c in batch]
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    logprobs = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for row, (_, _, p, c) in enumerate(batch):
        positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)
        out.append(logprobs[row, positions, torch.tensor(c)].sum().item())
    return out


@torch.no_grad()
def generate_replies(model, tokenizer, items: list[dict], batch_size: int, max_new_tokens: int):
    """Greedy replies and whether each stopped with the end-of-turn token."""
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    replies, stopped = [], []
    for b in tqdm(range(0, len(items), batch_size), desc="generate", leave=False):
        prompts = [_prompt(tokenizer, item) for item in items[b: b + batch_size]]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            stopped.append(tokenizer.eos_token_id in row)
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            replies.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    tokenizer.padding_side = "right"
    return replies, stopped


def contains_answer(reply: str, answers: list[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(a.strip())}(?!\w)", reply, re.IGNORECASE) for a in answers)


def rouge_l(reply: str, reference: str) -> float:
    """ROUGE-L F1 on lower-cased word tokens (longest common subsequence)."""
    a, b = reply.lower().split(), reference.lower().split()
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


def evaluate_task(model, tokenizer, suite: str, name: str, items: list[dict], cfg: EvalConfig) -> list[dict]:
    choice = [it for it in items if it["kind"] == "choice"]
    gen = [it for it in items if it["kind"] == "generate"]
    metrics = []
    if choice:
        acc = choice_accuracy(model, tokenizer, choice, cfg.batch_size)
        metrics.append(_metric(suite, f"{name}/accuracy", acc, len(choice)))
    if gen:
        replies, stopped = generate_replies(model, tokenizer, gen, cfg.batch_size, cfg.max_new_tokens)
        hits = [contains_answer(r, it["answers"]) for r, it in zip(replies, gen)]
        metrics.append(_metric(suite, f"{name}/accuracy", sum(hits) / len(gen), len(gen)))
        metrics.append(_metric(suite, f"{name}/stopped", sum(stopped) / len(gen), len(gen)))
        if all(it.get("reference") for it in gen):
            score = sum(rouge_l(r, it["answers"][0]) for r, it in zip(replies, gen)) / len(gen)
            metrics.append(_metric(suite, f"{name}/rouge_l", score, len(gen)))
    return metrics


def evaluate_checkpoint(model_path: str, data_dir: Path, cfg: EvalConfig, dtype: str, attn: str = "auto") -> dict:
    start = time.time()
    tokenizer = load_tokenizer(model_path)
    model = load_model(model_path, dtype, attn).eval()
    metrics = []
    for suite in SUITES:
        suite_dir = data_dir / "eval" / suite
        docs = read_jsonl(suite_dir / "perplexity.jsonl") if (suite_dir / "perplexity.jsonl").exists() else []
        if docs:
            ppl, n = perplexity(model, tokenizer, docs, getattr(cfg, suite).max_perplexity_tokens, cfg.batch_size)
            metrics.append(_metric(suite, "perplexity", ppl, n, higher_is_better=False))
        for name in getattr(cfg, suite).tasks:
            items = read_jsonl(suite_dir / f"{name}.jsonl")
            metrics += evaluate_task(model, tokenizer, suite, name, items[: cfg.max_items or None], cfg)
    return {"model": str(model_path), "seconds": round(time.time() - start, 1), "metrics": metrics}
