"""Packing for both stages: fixed-length blocks whose documents never attend to each other.

CPT: the token stream of a split (documents joined by one EOS each, see
``corpora.shards``) is cut into ``block_len`` rows with no padding; the last,
shorter remainder (the tail) is not trained. IFT: rendered examples are
placed into blocks by best-fit decreasing; only each block's end is padded.

Either way each row carries ``position_ids`` that restart at 0 where a
document (or example) begins. Given ``position_ids`` and no attention mask,
transformers builds a block-diagonal causal mask on the SDPA and eager paths
and flash-attn's variable-length kernel reads the same boundaries, so a
document's logits equal its logits run alone. Labels are -100 on the first
token of every document but the block's first (predicting it from the
previous document would teach nothing), on IFT prompt tokens and on padding.

    >>> f = cpt_block(np.array([5, 6, 0, 7, 8, 9]), np.array([0, 3]), "documents")
    >>> f["position_ids"].tolist(), f["labels"].tolist()
    ([0, 1, 2, 0, 1, 2], [5, 6, 0, -100, 8, 9])
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from corpora.chat import IGNORE_INDEX


def position_ids(length: int, starts: Sequence[int]) -> np.ndarray:
    """0, 1, 2, ... restarting at every offset in ``starts`` (0 is implied)."""
    pos = np.arange(length, dtype=np.int64)
    bounds = np.unique(np.concatenate([[0], np.asarray(starts, dtype=np.int64)]))
    run_start = np.repeat(bounds, np.diff(np.concatenate([bounds, [length]])))
    return pos - run_start


def cpt_block(tokens: np.ndarray, doc_starts: np.ndarray, mode: str) -> dict[str, np.ndarray]:
    """One CPT row. ``mode`` "documents": attention within documents; "stream": across them (old behaviour)."""
    labels = tokens.astype(np.int64).copy()
    out = {"input_ids": tokens.astype(np.int64), "labels": labels}
    if mode == "documents":
        starts = doc_starts[doc_starts > 0]
        labels[starts] = IGNORE_INDEX
        out["position_ids"] = position_ids(len(tokens), starts)
    return out


def blocks_in(tokens: int, block_len: int) -> int:
    return tokens // block_len


def replay_order(n_domain: int, n_replay_available: int, ratio: float, seed: int) -> np.ndarray:
    """Which replay block fills each replay slot, so that replay is ``ratio`` of all tokens.

    Blocks all hold ``block_len`` tokens, so a share of blocks is a share of
    tokens. Replay blocks are drawn without replacement while they last (then
    the permutation repeats), so a small replay corpus is not over-weighted
    early. The trainer's seeded sampler then interleaves them with the domain
    blocks over the whole stage.
    """
    if ratio <= 0 or n_replay_available == 0:
        return np.zeros(0, np.int64)
    n_replay = round(n_domain * ratio / (1 - ratio))
    perm = np.random.default_rng(seed).permutation(n_replay_available)
    return np.resize(perm, n_replay).astype(np.int64)


def pack_examples(lengths: Sequence[int], block_len: int) -> list[list[int]]:
    """Example indices per block, best-fit decreasing; each block's total is at most ``block_len``.

    Deterministic: ties are broken by example index. Examples longer than a
    block must be dropped before (``corpora.prepare`` does and counts them).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (room left, block index), kept sorted
    blocks: list[list[int]] = []
    for i in order:
        need = lengths[i]
        if need > block_len:
            raise ValueError(f"example {i} has {need} tokens, more than a block of {block_len}")
        k = bisect.bisect_left(free, (need, -1))
        if k == len(free):
            blocks.append([])
            room, b = block_len, len(blocks) - 1
        else:
            room, b = free.pop(k)
        blocks[b].append(i)
        if room - need > 0:
            bisect.insort(free, (room - need, b))
    return [sorted(b) for b in blocks]


def ift_block(examples: Sequence[dict], block_len: int, pad_id: int) -> dict[str, np.ndarray]:
    """Examples (``input_ids``, ``labels``) side by side in one row, padded at the end only."""
    ids = [t for ex in examples for t in ex["input_ids"]]
    labels = [t for ex in examples for t in ex["labels"]]
    starts = np.cumsum([0] + [len(ex["input_ids"]) for ex in examples])[:-1]
    pad = block_len - len(ids)
    # The padding is a document of its own (positions restart) with no loss.
    pos = position_ids(block_len, np.concatenate([starts, [len(ids)]]) if pad else starts)
    return {"input_ids": np.array(ids + [pad_id] * pad, dtype=np.int64),
            "labels": np.array(labels + [IGNORE_INDEX] * pad, dtype=np.int64), "position_ids": pos}


def packing_efficiency(lengths: Sequence[int], block_len: int, batch: int) -> dict[str, float]:
    """Share of real tokens in the rows the model computes, packed vs. padded per batch (in order),
    and the number of packed rows."""
    total = int(sum(lengths))
    if not total:
        return {"packed": 0.0, "padded": 0.0, "packed_rows": 0}
    packed_rows = len(pack_examples(lengths, block_len))
    padded = sum(max(lengths[i:i + batch]) * len(lengths[i:i + batch]) for i in range(0, len(lengths), batch))
    return {"packed": total / (packed_rows * block_len), "padded": total / padded, "packed_rows": packed_rows}
