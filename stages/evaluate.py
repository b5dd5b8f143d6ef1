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

With several processes, every rank runs ``evaluate_checkpoint``: the batches a
single process would run are dealt out whole (``distributed.shard_batches``),
per-item results are gathered, and every metric is computed from the full,
ordered list, so N processes report the numbers one process would. With
``evals.parameters: zero3`` the model is partitioned over the ranks and every
rank joins every forward pass (idle ranks repeat a batch and drop the result).

Each metric in ``eval.json`` keeps its per-item ``scores`` (and the generated
``replies``; per-window ``[NLL sum, tokens]`` for perplexity), so results can
be read and compared item by item across checkpoints and process counts.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from corpora.chat import prompt_text
from corpora.prepare import read_jsonl
from stages import distributed
from stages.config import EvalConfig, EvalParameters
from stages.modeling import load_model, load_tokenizer, partitioned_model

PPL_WINDOW = 512  # tokens per perplexity window
SUITES = ("general", "domain")


@dataclass
class Evaluator:
    """A loaded model and how this rank shares the work."""

    model: torch.nn.Module
    tokenizer: object
    world: distributed.World
    batch_size: int
    lockstep: bool = False  # partitioned parameters: every rank must join every forward pass

    def run(self, batches: list, fn: Callable[[list], list], desc: str) -> list:
        """``fn`` over this rank's share of ``batches``; every row of every batch, in order, on every rank."""
        mine, longest = distributed.shard_batches(batches, self.world)
        done = {k: fn(batches[k]) for k in tqdm(mine, desc=desc, leave=False, disable=not self.world.is_writer)}
        if self.lockstep:
            for _ in range(longest - len(mine)):
                fn(batches[0])  # keeps the ranks' collectives paired; the result is dropped
        merged = {k: rows for part in self.world.gather(done) for k, rows in part.items()}
        return [row for k in range(len(batches)) for row in merged[k]]

    def tensor(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, device=distributed.device())


def _metric(suite: str, name: str, scores: list[float], higher_is_better: bool = True) -> dict:
    """A metric with its per-item scores (0/1 or ROUGE-L); the value is their mean."""
    return {"suite": suite, "name": name, "value": round(sum(scores) / len(scores), 6),
            "higher_is_better": higher_is_better, "n": len(scores), "scores": scores}


@torch.no_grad()
def perplexity(ev: Evaluator, docs: list[dict], max_tokens: int) -> tuple[float, list[tuple[float, int]]]:
    """exp(mean token NLL) over EOS-joined documents, and each window's (NLL sum, tokens scored)."""
    tokenizer = ev.tokenizer
    stream: list[int] = []
    for doc in docs:
        stream += tokenizer(doc["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(stream) >= max_tokens:
            break
    stream = stream[:max_tokens]
    windows = [stream[i: i + PPL_WINDOW] for i in range(0, len(stream), PPL_WINDOW)]
    windows = [w for w in windows if len(w) > 1]
    # Windows are all PPL_WINDOW long except possibly the last, so batches need no padding.
    full = [w for w in windows if len(w) == PPL_WINDOW]
    groups = [full[i: i + ev.batch_size] for i in range(0, len(full), ev.batch_size)]
    groups += [[w] for w in windows if len(w) < PPL_WINDOW]
    rows = ev.run(groups, lambda group: _window_nll(ev, group), "perplexity")
    # Summed per window in window order: the same total whichever rank scored which window.
    total_nll, count = sum(nll for nll, _ in rows), sum(n for _, n in rows)
    return (math.exp(total_nll / count) if count else float("nan")), rows


def _window_nll(ev: Evaluator, group: list[list[int]]) -> list[tuple[float, int]]:
    ids = ev.tensor(group)
    logits = ev.model(input_ids=ids).logits.float()
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    nll = per_token.view(len(group), -1).double().sum(dim=1)  # float64 sums: 1e-7, not 1e-6, relative error
    return [(float(v), len(w) - 1) for v, w in zip(nll.tolist(), group)]


def _prompt(tokenizer, item: dict) -> str:
    messages = item.get("messages") or [{"role": "user", "content": item["prompt"]}]
    return prompt_text(tokenizer, messages)


@torch.no_grad()
def choice_correct(ev: Evaluator, items: list[dict]) -> list[int]:
    """1 where the choice with the highest log-likelihood per character is the answer."""
    tokenizer = ev.tokenizer
    pairs = []  # (item index, choice index, prompt ids, continuation ids)
    for i, item in enumerate(items):
        prompt_ids = tokenizer(_prompt(tokenizer, item), add_special_tokens=False)["input_ids"]
        for j, choice in enumerate(item["choices"]):
            pairs.append((i, j, prompt_ids, tokenizer(choice, add_special_tokens=False)["input_ids"]))
    batches = [pairs[b: b + ev.batch_size] for b in range(0, len(pairs), ev.batch_size)]
    logprobs = ev.run(batches, lambda batch: _continuation_logprobs(ev, batch), "choices")
    scores = [[-math.inf] * len(item["choices"]) for item in items]
    for (i, j, _, _), logprob in zip(pairs, logprobs):
        scores[i][j] = logprob / max(1, len(items[i]["choices"][j]))
    return [int(max(range(len(s)), key=s.__getitem__) == item["answer"]) for s, item in zip(scores, items)]


def _continuation_logprobs(ev: Evaluator, batch: list[tuple]) -> list[float]:
    seqs = [p + c for _, _, p, c in batch]
    width = max(map(len, seqs))
    pad = ev.tokenizer.pad_token_id
    ids = ev.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = ev.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    logprobs = ev.model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    out = []
    for row, (_, _, p, c) in enumerate(batch):
        positions = torch.arange(len(p) - 1, len(p) + len(c) - 1)
        out.append(logprobs[row, positions, torch.tensor(c)].sum().item())
    return out


@torch.no_grad()
def generate_replies(ev: Evaluator, items: list[dict], max_new_tokens: int) -> tuple[list[str], list[bool]]:
    """Greedy replies and whether each stopped with the end-of-turn token."""
    batches = [items[b: b + ev.batch_size] for b in range(0, len(items), ev.batch_size)]
    rows = ev.run(batches, lambda batch: _generate(ev, batch, max_new_tokens), "generate")
    return [reply for reply, _ in rows], [stop for _, stop in rows]


def _generate(ev: Evaluator, batch: list[dict], max_new_tokens: int) -> list[tuple[str, bool]]:
    tokenizer = ev.tokenizer
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
    enc = tokenizer([_prompt(tokenizer, item) for item in batch], return_tensors="pt", padding=True,
                    add_special_tokens=False).to(distributed.device())
    tokenizer.padding_side = "right"
    # synced_gpus: with partitioned parameters a rank that has finished keeps
    # stepping until all have, or the others would wait for it forever.
    out = ev.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, synced_gpus=ev.lockstep,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    rows = []
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        stopped = tokenizer.eos_token_id in row
        if stopped:
            row = row[: row.index(tokenizer.eos_token_id)]
        rows.append((tokenizer.decode(row, skip_special_tokens=True).strip(), stopped))
    return rows


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


def evaluate_task(ev: Evaluator, suite: str, name: str, items: list[dict], cfg: EvalConfig) -> list[dict]:
    choice = [it for it in items if it["kind"] == "choice"]
    gen = [it for it in items if it["kind"] == "generate"]
    metrics = []
    if choice:
        metrics.append(_metric(suite, f"{name}/accuracy", choice_correct(ev, choice)))
    if gen:
        replies, stopped = generate_replies(ev, gen, cfg.max_new_tokens)
        hits = [int(contains_answer(r, it["answers"])) for r, it in zip(replies, gen)]
        metrics.append(_metric(suite, f"{name}/accuracy", hits) | {"replies": replies})
        metrics.append(_metric(suite, f"{name}/stopped", [int(s) for s in stopped]))
        if all(it.get("reference") for it in gen):
            scores = [round(rouge_l(r, it["answers"][0]), 6) for r, it in zip(replies, gen)]
            metrics.append(_metric(suite, f"{name}/rouge_l", scores))
    return metrics


@contextlib.contextmanager
def evaluator(model_path: str, cfg: EvalConfig, dtype: str, attn: str, trust: bool) -> Iterator[Evaluator]:
    """The model loaded the way ``evals.parameters`` asks, on every rank (``trust``: model.trust_remote_code)."""
    world = distributed.current()
    tokenizer = load_tokenizer(model_path, trust)
    if cfg.parameters == EvalParameters.zero3 and world.is_multi:
        with partitioned_model(model_path, dtype, attn, trust) as model:
            yield Evaluator(model, tokenizer, world, cfg.batch_size, lockstep=True)
        return
    model = load_model(model_path, dtype, attn, trust).to(distributed.device()).eval()
    yield Evaluator(model, tokenizer, world, cfg.batch_size)


def evaluate_checkpoint(model_path: str, data_dir: Path, cfg: EvalConfig, dtype: str, attn: str = "auto",
                        trust_remote_code: bool = False) -> dict:
    """Every suite's metrics for one checkpoint; run on every rank, identical result on each."""
    start = time.time()
    metrics = []
    with evaluator(model_path, cfg, dtype, attn, trust_remote_code) as ev:
        for suite in SUITES:
            suite_dir = data_dir / "eval" / suite
            docs = read_jsonl(suite_dir / "perplexity.jsonl") if (suite_dir / "perplexity.jsonl").exists() else []
            if docs:
                ppl, windows = perplexity(ev, docs, getattr(cfg, suite).max_perplexity_tokens)
                metrics.append({"suite": suite, "name": "perplexity", "value": round(ppl, 6),
                                "higher_is_better": False, "n": sum(n for _, n in windows),
                                "windows": [[round(nll, 6), n] for nll, n in windows]})
            for name in getattr(cfg, suite).tasks:
                items = read_jsonl(suite_dir / f"{name}.jsonl")
                metrics += evaluate_task(ev, suite, name, items[: cfg.max_items or None], cfg)
    return {"model": str(model_path), "seconds": round(time.time() - start, 1), "metrics": metrics,
            "processes": ev.world.size, "parameters": str(cfg.parameters if ev.world.is_multi else "replicated")}
