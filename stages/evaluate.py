"""Evaluation suites: run the model for perplexity, multiple choice, generation.

    result = evaluate_checkpoint("runs/demo/cpt/final", Path("runs/demo/data"), cfg.evals, "bfloat16")

Each suite (``general``, ``domain``) reads what ``corpora.prepare`` wrote under
``data/eval/<suite>/``: ``perplexity.jsonl`` (documents) and one JSONL per task.
This module only runs the model; ``stages.metrics`` turns what it produced
into the metrics (``perplexity``, ``bits_per_byte``, ``<task>/accuracy``, ...;
formulas in docs/metrics.md):
- perplexity documents are joined by EOS, capped at ``max_perplexity_tokens``
  and cut into non-overlapping windows of ``PPL_WINDOW`` tokens; the first
  token of each window is context only. Each window gives its NLL sum, the
  tokens scored and the UTF-8 bytes of their text (an EOS is 0 bytes).
- ``choice`` items: the total log-likelihood of each choice's tokens after the
  chat-formatted prompt.
- ``generate`` and ``instruction`` items: the greedy reply, and whether it
  ended with the end-of-turn token inside ``max_new_tokens`` (an
  instruction-tuned model that stops talking has forgotten how to stop).

With several processes, every rank runs ``evaluate_checkpoint``: the batches a
single process would run are dealt out whole (``distributed.shard_batches``),
per-item results are gathered, and every metric is computed from the full,
ordered list, so N processes report the numbers one process would. With
``evals.parameters: zero3`` the model is partitioned over the ranks and every
rank joins every forward pass (idle ranks repeat a batch and drop the result).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from corpora.chat import prompt_text
from corpora.prepare import read_jsonl
from stages import distributed, metrics
from stages.config import EvalConfig, EvalParameters
from stages.lm_eval_tasks import is_lm_eval, run_lm_eval_tasks
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


@torch.no_grad()
def perplexity_windows(ev: Evaluator, docs: list[dict], max_tokens: int) -> list[tuple[float, int, int]]:
    """(NLL sum, tokens scored, bytes of their text) of each window over the EOS-joined documents."""
    stream, nbytes, _ = token_stream(ev.tokenizer, docs, max_tokens)
    starts = [i for i in range(0, len(stream), PPL_WINDOW) if len(stream) - i > 1]
    windows = [stream[i: i + PPL_WINDOW] for i in starts]
    # Windows are all PPL_WINDOW long except possibly the last, so batches need no padding.
    full = [w for w in windows if len(w) == PPL_WINDOW]
    groups = [full[i: i + ev.batch_size] for i in range(0, len(full), ev.batch_size)]
    groups += [[w] for w in windows if len(w) < PPL_WINDOW]  # the last window: the order is kept
    rows = ev.run(groups, lambda group: _window_nll(ev, group), "perplexity")
    # The first token of a window is context only: its bytes are not scored either.
    return [(nll, n, sum(nbytes[i + 1: i + len(w)])) for (nll, n), i, w in zip(rows, starts, windows)]


def token_stream(tokenizer, docs: list[dict], max_tokens: int) -> tuple[list[int], list[int], list[int]]:
    """Documents' token ids, each followed by EOS, capped at ``max_tokens``; each token's UTF-8 bytes
    (EOS: 0); and where each document starts. Also the general held-out set of training (stages.heldout)."""
    stream: list[int] = []
    nbytes: list[int] = []
    starts: list[int] = []
    fast = getattr(tokenizer, "is_fast", False)  # offsets need a fast (Rust) tokenizer
    for doc in docs:
        enc = tokenizer(doc["text"], add_special_tokens=False, return_offsets_mapping=fast)
        ends = [end for _, end in enc["offset_mapping"]] if fast else None
        starts.append(len(stream))
        stream += enc["input_ids"] + [tokenizer.eos_token_id]
        nbytes += metrics.token_bytes(doc["text"], ends, len(enc["input_ids"])) + [0]
        if len(stream) >= max_tokens:
            break
    return stream[:max_tokens], nbytes[:max_tokens], starts


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
def choice_logliks(ev: Evaluator, items: list[dict]) -> list[list[float]]:
    """Each choice's total log-likelihood (nats) as the reply to the chat-formatted prompt."""
    tokenizer = ev.tokenizer
    pairs = []  # (item index, choice index, prompt ids, continuation ids)
    for i, item in enumerate(items):
        prompt_ids = tokenizer(_prompt(tokenizer, item), add_special_tokens=False)["input_ids"]
        for j, choice in enumerate(item["choices"]):
            pairs.append((i, j, prompt_ids, tokenizer(choice, add_special_tokens=False)["input_ids"]))
    batches = [pairs[b: b + ev.batch_size] for b in range(0, len(pairs), ev.batch_size)]
    logprobs = ev.run(batches, lambda batch: _continuation_logprobs(ev, batch), "choices")
    logliks = [[0.0] * len(item["choices"]) for item in items]
    for (i, j, _, _), logprob in zip(pairs, logprobs):
        logliks[i][j] = logprob
    return logliks


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


def evaluate_task(ev: Evaluator, suite: str, name: str, items: list[dict], cfg: EvalConfig) -> list[dict]:
    """The task's metrics (``stages.metrics.task_metrics``) from one model pass per item kind."""
    results: list[dict] = [{} for _ in items]
    choice = [i for i, item in enumerate(items) if item["kind"] == "choice"]
    if choice:
        for i, logliks in zip(choice, choice_logliks(ev, [items[i] for i in choice])):
            results[i] = {"logliks": logliks}
    generated = [i for i, item in enumerate(items) if item["kind"] in ("generate", "instruction")]
    if generated:
        replies, stopped = generate_replies(ev, [items[i] for i in generated], cfg.max_new_tokens)
        for i, reply, stop in zip(generated, replies, stopped):
            results[i] = {"reply": reply, "stopped": stop}
    return metrics.task_metrics(suite, name, items, results)


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


def items_per_task(cfg: EvalConfig, suite: str) -> int | None:
    """The suite's own ``max_items`` or else ``evals.max_items``; None for all (0 means all in both)."""
    own = getattr(cfg, suite).max_items
    return (own if own >= 0 else cfg.max_items) or None


def evaluate_checkpoint(model_path: str, data_dir: Path, cfg: EvalConfig, dtype: str, attn: str = "auto",
                        trust_remote_code: bool = False) -> dict:
    """Every suite's metrics for one checkpoint; run on every rank, identical result on each."""
    start = time.time()
    results: list[dict] = []
    with evaluator(model_path, cfg, dtype, attn, trust_remote_code) as ev:
        for suite in SUITES:
            suite_dir = data_dir / "eval" / suite
            docs = read_jsonl(suite_dir / "perplexity.jsonl") if (suite_dir / "perplexity.jsonl").exists() else []
            if docs:
                windows = perplexity_windows(ev, docs, getattr(cfg, suite).max_perplexity_tokens)
                results += metrics.window_metrics(suite, windows)
            tasks, limit = getattr(cfg, suite).tasks, items_per_task(cfg, suite)
            for name, source in tasks.items():
                if is_lm_eval(source):
                    continue  # lm-eval loads these itself; preparation wrote no JSONL for them
                items = read_jsonl(suite_dir / f"{name}.jsonl")
                results += evaluate_task(ev, suite, name, items[:limit], cfg)
            results += run_lm_eval_tasks(ev.model, ev.tokenizer, suite, tasks, ev.batch_size,
                                         limit, ev.world, partitioned=ev.lockstep)
    return {"model": str(model_path), "seconds": round(time.time() - start, 1), "metrics": results,
            "processes": ev.world.size, "parameters": str(cfg.parameters if ev.world.is_multi else "replicated")}
