"""Memory-mapped token shards with document boundaries, as ``corpora.engine`` writes them.

    shards = TokenShards(Path(".../shards/train"))
    shards.tokens, shards.documents         # totals
    ids = shards.read(1000, 1256)           # tokens [1000, 1256) of the split's stream, across shard files
    starts = shards.doc_starts(1000, 1256)  # offsets in that window where a document begins

Each shard is datatrove's format: ``<name>.ds`` (raw little-endian uint16, or
uint32 when the vocabulary exceeds 65,536 tokens, as ``<name>.ds.metadata``
says on its first line after the last ``|``), and ``<name>.ds.index``
(uint64 cumulative end of each document). Shards are read in name order and
form one stream; nothing is loaded into memory but the pages a window
touches, so a 100 GB corpus trains with flat memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _token_dtype(shard: Path) -> np.dtype:
    meta = shard.with_name(shard.name + ".metadata")
    size = int(meta.read_text().splitlines()[0].rsplit("|", 1)[1]) if meta.exists() else 2
    return np.dtype("<u4") if size == 4 else np.dtype("<u2")


class TokenShards:
    """The token stream of one split, concatenated over its shard files."""

    def __init__(self, folder: Path) -> None:
        self.files = sorted(p for p in Path(folder).glob("*.ds") if p.stat().st_size)
        self._tokens = [np.memmap(p, dtype=_token_dtype(p), mode="r") for p in self.files]
        self._ends = [np.memmap(p.with_name(p.name + ".index"), dtype="<u8", mode="r") for p in self.files]
        sizes = [len(t) for t in self._tokens]
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    @property
    def tokens(self) -> int:
        return int(self._starts[-1])

    @property
    def documents(self) -> int:
        return sum(len(e) for e in self._ends)

    def _pieces(self, start: int, stop: int):
        """(shard index, local start, local stop) pieces covering [start, stop)."""
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        k = first
        while start < stop:
            local = start - self._starts[k]
            take = min(stop, self._starts[k + 1]) - start
            if take > 0:
                yield k, int(local), int(local + take)
            start += take
            k += 1

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.concatenate([np.asarray(self._tokens[k][a:b], dtype=np.int64)
                               for k, a, b in self._pieces(start, stop)])

    def doc_starts(self, start: int, stop: int) -> np.ndarray:
        """Offsets (from ``start``) in [start, stop) where a document begins."""
        found = []
        for k, a, b in self._pieces(start, stop):
            ends = self._ends[k]
            # a document begins right after each end, and at the start of each shard file
            lo, hi = np.searchsorted(ends, a, side="left"), np.searchsorted(ends, b, side="left")
            begins = np.asarray(ends[lo:hi], dtype=np.int64)
            if a == 0:
                begins = np.concatenate([[0], begins])
            found.append(begins + self._starts[k] - start)
        return np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)

    def documents_in(self, start: int, stop: int) -> list[np.ndarray]:
        """The whole documents of the stream, for tests and reports (small splits only)."""
        bounds = np.concatenate([self.doc_starts(start, stop), [stop - start]])
        data = self.read(start, stop)
        return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
