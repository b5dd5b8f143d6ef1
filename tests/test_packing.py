"""Packing arithmetic: replay share by tokens, best-fit blocks, exact small examples."""

import numpy as np
import pytest

from corpora.packing import cpt_block, pack_examples, replay_order


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5])
def test_replay_share_of_tokens_is_the_ratio(ratio):
    order = replay_order(n_domain=300, n_replay_available=40, ratio=ratio, seed=0)
    assert len(order) / (300 + len(order)) == pytest.approx(ratio, abs=1 / 300)
    # Without replacement while replay blocks last: every block once before any repeats.
    first = order[:40] if len(order) >= 40 else order
    assert len(set(first.tolist())) == len(first)
    assert set(order.tolist()) <= set(range(40))
    assert np.array_equal(order, replay_order(300, 40, ratio, seed=0))
    assert not np.array_equal(order, replay_order(300, 40, ratio, seed=1))


def test_no_replay_without_ratio_or_data():
    assert len(replay_order(100, 0, 0.2, 0)) == 0 and len(replay_order(100, 50, 0.0, 0)) == 0


def test_best_fit_decreasing_exact_example():
    # 7 and 5 cannot share a block of 10; 3 fits best beside 7, 2 beside 5 (room 5 -> 3 left... then 1 beside 2)
    assert pack_examples([7, 5, 3, 2, 1], 10) == [[0, 2], [1, 3, 4]]
    with pytest.raises(ValueError, match="more than a block"):
        pack_examples([11], 10)


def test_cpt_block_masks_only_cross_document_predictions():
    row = cpt_block(np.array([4, 5, 1, 6, 1]), np.array([0, 3]), "documents")
    assert row["labels"].tolist() == [4, 5, 1, -100, 1]
    # A block that starts mid-document: its first token has no earlier token in the row to be predicted from.
    row = cpt_block(np.array([9, 1, 6, 7]), np.array([2]), "documents")
    assert row["position_ids"].tolist() == [0, 1, 0, 1] and row["labels"].tolist() == [9, 1, -100, 7]
