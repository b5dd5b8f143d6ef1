"""Packing keeps every token exactly once, in order, with EOS after each document."""

import numpy as np
import pytest

from corpora.packing import mix_blocks, pack_documents

EOS = 0


def _random_docs(seed: int, n: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 1000, size=rng.integers(1, 60)).tolist() for _ in range(n)]


@pytest.mark.parametrize("block_len", [1, 7, 16, 64, 1000])
def test_every_token_once_in_order_with_eos_between_documents(block_len):
    docs = _random_docs(seed=block_len, n=25)
    packed = pack_documents(docs, eos_id=EOS, block_len=block_len)
    expected = [t for doc in docs for t in doc + [EOS]]
    stream = packed.blocks.reshape(-1).tolist() + packed.tail.tolist()
    assert stream == expected
    assert packed.blocks.shape[1] == block_len and len(packed.tail) < block_len
    assert packed.tokens == sum(len(d) + 1 for d in docs)


def test_document_starts_mark_boundaries():
    docs = _random_docs(seed=1, n=10)
    packed = pack_documents(docs, eos_id=EOS, block_len=16)
    stream = np.concatenate([packed.blocks.reshape(-1), packed.tail])
    for doc, start in zip(docs, packed.doc_starts):
        assert stream[start: start + len(doc)].tolist() == doc
        assert stream[start + len(doc)] == EOS
        if start > 0:
            assert stream[start - 1] == EOS  # the previous document closed right before


def test_exact_small_example():
    packed = pack_documents([[1, 2, 3], [4, 5]], eos_id=9, block_len=3)
    assert packed.blocks.tolist() == [[1, 2, 3], [9, 4, 5]]
    assert packed.tail.tolist() == [9]


def test_mix_blocks_ratio_and_membership():
    domain = np.arange(80 * 4).reshape(80, 4)
    replay = -np.arange(1, 11 * 4 + 1).reshape(11, 4)
    mixed = mix_blocks(domain, replay, ratio=0.2, seed=0)
    n_replay = int((mixed[:, 0] < 0).sum())
    assert len(mixed) == 100 and n_replay == 20
    # Every domain block survives unchanged; replay blocks are real replay rows.
    assert sorted(map(tuple, mixed[mixed[:, 0] >= 0].tolist())) == sorted(map(tuple, domain.tolist()))
    assert {tuple(r) for r in mixed[mixed[:, 0] < 0].tolist()} <= {tuple(r) for r in replay.tolist()}
    assert np.array_equal(mixed, mix_blocks(domain, replay, ratio=0.2, seed=0))
