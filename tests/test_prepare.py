"""Data preparation from user files: every format, clear errors, honest splits, reuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corpora import manifest as mf
from corpora.prepare import PrepareSpec, prepare
from corpora.sources import DataError, read_documents, read_records
from corpora.shards import TokenShards
from corpora.splits import assign_split
from corpora.steps import content_hash

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _text(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(60 + i)) + f" doc{i}."


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    for i in range(4):
        (root / "notes" / f"n{i}.txt").write_text(_text(i))
    with (root / "rows.jsonl").open("w") as fh:
        for i in range(4, 10):
            fh.write(json.dumps({"body": _text(i)}) + "\n")
    pq.write_table(pa.table({"body": [_text(i) for i in range(10, 14)]}), root / "rows.parquet")
    datasets.Dataset.from_dict({"body": [_text(i) for i in range(14, 17)]}).save_to_disk(str(root / "hf"))
    return root


def test_reads_text_jsonl_parquet_and_hf_folders(corpus):
    sources = [str(corpus / "notes"), str(corpus / "rows.jsonl"), str(corpus / "*.parquet"), str(corpus / "hf")]
    docs = list(read_documents(sources, text_field="body"))
    assert [d["text"] for d in docs] == [_text(i) for i in range(17)]


def test_bad_rows_name_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"body": "ok"}\n\n{"text": "wrong field"}\n')
    with pytest.raises(DataError, match=rf"{path}:3: field 'body' missing"):
        list(read_documents([str(path)], text_field="body"))
    path.write_text('{"body": "ok"}\n{not json\n')
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        list(read_documents([str(path)], text_field="body"))
    with pytest.raises(DataError, match="no such file"):
        list(read_documents([str(tmp_path / "missing.jsonl")]))


def test_instruction_formats_and_errors(tmp_path):
    path = tmp_path / "sft.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]},
        {"instruction": "q2", "input": "ctx", "response": "a2"},
        {"prompt": "q3", "completion": "a3", "group": "g"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = list(read_records([str(path)]))
    assert recs[1]["messages"] == [{"role": "user", "content": "q2\n\nctx"}, {"role": "assistant", "content": "a2"}]
    assert recs[2]["group"] == "g"
    path.write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    with pytest.raises(DataError, match=r"sft.jsonl:1: messages\[0\].role"):
        list(read_records([str(path)]))
    path.write_text(json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match="no 'messages' field"):
        list(read_records([str(path)]))


def _spec(corpus: Path, sft: Path, **kw) -> PrepareSpec:
    return PrepareSpec(
        domain_sources=[str(corpus / "notes"), str(corpus / "rows.jsonl"), str(corpus / "rows.parquet")],
        instruction_sources=[str(sft)], cpt_seq_len=32, ift_seq_len=128, text_field="body", min_chars=20,
        val_fraction=0.1, test_fraction=0.3, instruction_test_fraction=0.3,
        eval_suites={"domain": {"perplexity": ["split:domain/test"], "tasks": {"qa": "split:instructions/test"}}},
        # The synthetic texts cycle through 12 words: repetitive and near-duplicates of each other by design.
        cleaning={"repetition": False, "near_dedup": False},
        **({"cache_dir": str(corpus.parent / "cache")} | kw),
    )


@pytest.fixture
def sft(tmp_path) -> Path:
    path = tmp_path / "sft.jsonl"
    with path.open("w") as fh:
        for g in range(12):
            for k in range(3):
                fh.write(json.dumps({"id": f"m{g}.f{k}", "group": f"m{g}", "messages": [
                    {"role": "user", "content": f"What does m{g}.f{k} do?"},
                    {"role": "assistant", "content": _text(g + k)[:80]}]}) + "\n")
    return path


def test_prepare_splits_keep_test_data_out_of_training(corpus, sft, tiny_tokenizer, tmp_path):
    out = tmp_path / "data"
    manifest = prepare(_spec(corpus, sft), tiny_tokenizer, out)
    docs = list(read_documents(_spec(corpus, sft).domain_sources, "body"))
    split = {d["text"]: assign_split(content_hash(d["text"]), 0, 0.1, 0.3) for d in docs}
    test_texts = {json.loads(line)["text"] for line in (out / "eval/domain/perplexity.jsonl").open()}
    assert test_texts == {t for t, s in split.items() if s == "test"} and test_texts
    # Every training token is accounted for: the train shards hold the train docs + one EOS each.
    trained = TokenShards(Path(manifest["cpt"]["corpus"]) / "shards" / "train").tokens
    expected = sum(len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
                   for t, s in split.items() if s == "train")
    assert trained == expected
    assert (out / "report.md").read_text().startswith("# Data report")
    held_out = {json.loads(line)["id"].split(".")[0] for line in (out / "eval/domain/qa.jsonl").open()}
    n_train = sum(1 for _ in (out / "ift_train.jsonl").open())
    assert held_out and n_train == 3 * (12 - len(held_out))  # whole groups held out, the rest trained
    assert manifest["ift"]["examples"] == n_train


def test_prepare_reuses_matching_data_and_redoes_changed_inputs(corpus, sft, tiny_tokenizer, tmp_path):
    out = tmp_path / "data"
    first = prepare(_spec(corpus, sft), tiny_tokenizer, out)
    again = prepare(_spec(corpus, sft), tiny_tokenizer, out)
    assert again["reused"] and again["fingerprint"] == first["fingerprint"]
    (corpus / "notes" / "n0.txt").write_text(_text(0) + " changed")
    changed = prepare(_spec(corpus, sft), tiny_tokenizer, out)
    assert not changed.get("reused") and changed["fingerprint"] != first["fingerprint"]
    assert not (tmp_path / "data.partial").exists()


def test_exact_duplicates_and_short_documents_are_dropped(tmp_path):
    from corpora.cleaning import clean_documents

    docs = [{"id": "a", "text": "Hello  world \r\nagain"}, {"id": "b", "text": "Hello  world\nagain  "},
            {"id": "c", "text": "tiny"}]
    kept, stats = clean_documents(docs, min_chars=10)
    assert [d["id"] for d in kept] == ["a"] and kept[0]["text"] == "Hello  world\nagain"
    assert (stats.exact_duplicates, stats.too_short, stats.documents_out) == (1, 1, 1)


def test_a_tokenizer_left_padding_by_a_batch_call_tokenises_the_corpus_unpadded(corpus, sft, tiny_model_dir, tmp_path):
    """A ``padding=True`` batch call (generation in an evaluation) leaves padding on in the Rust tokenizer;
    preparation must still write every document's tokens and nothing else (it once wrote the pads)."""
    from stages.modeling import load_tokenizer

    fresh, used = load_tokenizer(tiny_model_dir), load_tokenizer(tiny_model_dir)
    used(["a", "a much longer text than the first"], padding=True)
    assert used.backend_tokenizer.padding is not None  # the state that once leaked into the shards
    # Each in its own cache, so that both really tokenise the corpus.
    tokens = [TokenShards(Path(prepare(_spec(corpus, sft, cache_dir=str(tmp_path / f"cache-{name}")), tok,
                                       tmp_path / name)["cpt"]["corpus"]) / "shards" / "train").tokens
              for tok, name in ((fresh, "fresh"), (used, "used"))]
    assert tokens[0] == tokens[1] > 0
    # ... and with the same cache key: the padding state is not part of the tokenizer.
    assert mf.tokenizer_fingerprint(used) == mf.tokenizer_fingerprint(fresh)
