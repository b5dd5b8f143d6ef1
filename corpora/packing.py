"""Pack tokenised documents into fixed-length blocks for CPT.

Documents are concatenated with one EOS token after each, so the model sees
where a document ends, and the stream is cut into ``block_len`` rows with no
padding. Every input token lands exactly once, either in a block or in the
``tail`` (the last, shorter-than-a-block remainder, kept on disk but not
trained on). ``doc_starts`` records where each document begins in the
stream, so document boundaries survive packing.

    >>> p = pack_documents([[1, 2, 3], [4, 5]], eos_id=0, block_len=3)
    >>> p.blocks.tolist(), p.tail.tolist(), p.doc_starts.tolist()
    ([[1, 2, 3], [0, 4, 5]], [0], [0, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Packed:
    blocks: np.ndarray  # int32 [n_blocks, block_len]
    tail: np.ndarray  # int32 [< block_len], not trained on
    doc_starts: np.ndarray  # int64 offsets of each document in the stream

    @property
    def tokens(self) -> int:
        return int(self.blocks.size + self.tail.size)


def pack_documents(docs: Sequence[Sequence[int]], eos_id: int, block_len: int) -> Packed:
    lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)
    doc_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(docs) else np.zeros(0, np.int64)
    stream = np.empty(int(lengths.sum()), dtype=np.int32)
    for start, doc in zip(doc_starts, docs):
        stream[start:start + len(doc)] = doc
        stream[start + len(doc)] = eos_id
    n_blocks = len(stream) // block_len
    cut = n_blocks * block_len
    return Packed(stream[:cut].reshape(n_blocks, block_len), stream[cut:].copy(), doc_starts.astype(np.int64))


def mix_blocks(domain: np.ndarray, replay: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Add replay blocks so they make up ``ratio`` of the result, then shuffle.

    Replay blocks are drawn without replacement while they last (then cycled),
    so a small replay corpus is not over-weighted by repetition early on.
    """
    if ratio <= 0 or len(replay) == 0:
        return domain
    n_replay = round(len(domain) * ratio / (1 - ratio))
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.permutation(len(replay)) for _ in range(n_replay // len(replay) + 1)])[:n_replay]
    mixed = np.concatenate([domain, replay[picks]])
    return mixed[rng.permutation(len(mixed))]
