"""Document-aware packing: no document attends to another, in CPT and IFT blocks.

On the CPU SDPA path, transformers builds a block-diagonal causal mask from
``position_ids`` that restart at 0 (and no attention mask): every document's
logits inside a packed row must equal its logits run alone. The GPU twin
(flash-attn's variable-length kernel) is ``test_flash_varlen_matches_alone``,
marked ``gpu``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DataCollatorForSeq2Seq, LlamaConfig, LlamaForCausalLM

from corpora.chat import IGNORE_INDEX
from corpora.packing import cpt_block, ift_block, pack_examples, packing_efficiency, position_ids

TOL = 1e-4


def tiny_llama(attn: str = "sdpa", device: str = "cpu", dtype=torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, use_cache=False)
    return _with_attn(cfg, attn, device, dtype)


def _with_attn(cfg, attn, device, dtype):
    torch.manual_seed(0)
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def _docs(seed: int, lengths: list[int]) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 300, size=n) for n in lengths]


def _alone(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.as_tensor(ids)[None].to(model.device)).logits[0].float().cpu()


def _packed(model, rows: list[dict]) -> torch.Tensor:
    batch = {k: torch.as_tensor(np.stack([r[k] for r in rows])).to(model.device)
             for k in ("input_ids", "position_ids")}
    with torch.no_grad():
        return model(**batch).logits.float().cpu()


def check_cpt_block_equals_documents_alone(model, tol: float) -> None:
    # Two rows (batch of 2) of three documents each, separated by EOS (id 1) as the shards hold them.
    rows, spans = [], []
    for seed in (1, 2):
        docs = [np.append(d, 1) for d in _docs(seed, [17, 40, 23])]
        starts = np.cumsum([0] + [len(d) for d in docs])[:-1]
        rows.append(cpt_block(np.concatenate(docs), starts, "documents"))
        spans.append(list(zip(starts, docs)))
    logits = _packed(model, rows)
    for r, row_spans in enumerate(spans):
        for start, doc in row_spans:
            diff = (logits[r, start:start + len(doc)] - _alone(model, doc)).abs().max().item()
            assert diff < tol, f"row {r}, document at {start}: logits differ by {diff}"


def test_cpt_block_logits_equal_each_document_alone():
    check_cpt_block_equals_documents_alone(tiny_llama(), TOL)


def test_stream_mode_lets_documents_attend_across_so_the_check_can_fail():
    model = tiny_llama()
    docs = [np.append(d, 1) for d in _docs(3, [20, 30])]
    row = cpt_block(np.concatenate(docs), np.array([0, 21]), "stream")
    assert "position_ids" not in row
    with torch.no_grad():
        logits = model(input_ids=torch.as_tensor(row["input_ids"])[None]).logits[0]
    assert (logits[21:] - _alone(model, docs[1])).abs().max() > 1e-2


def _examples(seed: int, n: int) -> list[dict]:
    """Chat-like examples: a prompt (labels -100) then a reply (labels = ids)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt, reply = rng.integers(3, 300, size=rng.integers(4, 20)), rng.integers(3, 300, size=rng.integers(2, 15))
        ids = np.concatenate([prompt, reply]).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * len(prompt) + reply.tolist()})
    return out


def check_ift_block_equals_examples_alone(model, tol: float) -> None:
    examples = _examples(4, 12)
    blocks = pack_examples([len(e["input_ids"]) for e in examples], 64)
    rows = [ift_block([examples[i] for i in b], 64, pad_id=0) for b in blocks]
    logits = _packed(model, rows)
    for r, block in enumerate(blocks):
        offset = 0
        for i in block:
            ids = examples[i]["input_ids"]
            diff = (logits[r, offset:offset + len(ids)] - _alone(model, ids)).abs().max().item()
            assert diff < tol, f"block {r}, example {i}: logits differ by {diff}"
            offset += len(ids)


def test_ift_block_logits_equal_each_example_alone():
    check_ift_block_equals_examples_alone(tiny_llama(), TOL)


def test_packed_and_padded_ift_give_the_same_loss():
    model, examples = tiny_llama(), _examples(5, 16)
    blocks = pack_examples([len(e["input_ids"]) for e in examples], 80)
    rows = [ift_block([examples[i] for i in b], 80, pad_id=0) for b in blocks]
    packed = {k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in rows[0]}
    collate = DataCollatorForSeq2Seq(tokenizer=_PadOnly(), padding="longest", label_pad_token_id=IGNORE_INDEX)
    padded = collate([e | {"attention_mask": [1] * len(e["input_ids"])} for e in examples])
    with torch.no_grad():
        loss_packed, loss_padded = model(**packed).loss.item(), model(**padded).loss.item()
    assert loss_packed == pytest.approx(loss_padded, abs=TOL)
    # Same supervised tokens in both: only the prompts and the padding carry -100.
    supervised = sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in examples)
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == supervised


class _PadOnly:
    """The part of a tokenizer DataCollatorForSeq2Seq uses: padding with id 0 on the right."""

    padding_side, pad_token_id, model_input_names = "right", 0, ["input_ids", "attention_mask"]

    def pad(self, features, padding, max_length=None, pad_to_multiple_of=None, return_tensors="pt"):
        longest = max(len(f["input_ids"]) for f in features)
        return {k: torch.tensor([f[k] + [0] * (longest - len(f[k])) for f in features])
                for k in ("input_ids", "attention_mask")}


def test_ift_blocks_pad_only_the_tail_and_keep_every_example_once():
    examples = _examples(6, 40)
    lengths = [len(e["input_ids"]) for e in examples]
    blocks = pack_examples(lengths, 64)
    assert sorted(i for b in blocks for i in b) == list(range(40))
    for b in blocks:
        row = ift_block([examples[i] for i in b], 64, pad_id=0)
        used = sum(lengths[i] for i in b)
        assert used <= 64
        assert row["input_ids"][:used].tolist() == [t for i in b for t in examples[i]["input_ids"]]
        assert row["labels"][:used].tolist() == [t for i in b for t in examples[i]["labels"]]
        assert (row["labels"][used:] == IGNORE_INDEX).all() and (row["input_ids"][used:] == 0).all()
    # Best-fit decreasing leaves less than one example's worth of room in all but the emptiest block.
    eff = packing_efficiency(lengths, 64, batch=8)
    assert eff["packed"] == sum(lengths) / (64 * len(blocks)) and eff["packed"] > 0.9


def test_position_ids_restart_at_each_document():
    assert position_ids(7, [3, 5]).tolist() == [0, 1, 2, 0, 1, 0, 1]
    row = cpt_block(np.array([5, 6, 1, 7, 8, 1, 9]), np.array([0, 3, 6]), "documents")
    assert row["position_ids"].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert row["labels"].tolist() == [5, 6, 1, IGNORE_INDEX, 8, 1, IGNORE_INDEX]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn's varlen path needs a CUDA GPU")
def test_flash_varlen_matches_alone():
    pytest.importorskip("flash_attn")
    model = _with_attn(tiny_llama().config, "flash_attention_2", "cuda", torch.bfloat16)
    check_cpt_block_equals_documents_alone(model, 2e-2)  # bf16 kernels: compare at bf16 resolution
    check_ift_block_equals_examples_alone(model, 2e-2)
