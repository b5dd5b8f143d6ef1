"""The datatrove corpus pipeline: every token kept once, duplicates and PII removed, bad input reported.

Each test runs the real pipeline (``corpora.prepare.corpus`` -> datatrove's
local executor, MinHash stages, our SplitTokenizer) on a corpus it plants.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from corpora.engine import Executor
from corpora.prepare import PrepareSpec, corpus
from corpora.shards import TokenShards
from corpora.steps import TEXT_SUFFIX, read_text_file

WORDS = ("river stone lamp orbit cedar maple quartz falcon harbor meadow copper violet summit lantern "
         "pillow garnet thistle canyon ember willow saffron tundra beacon marble glacier").split()


def _doc(seed: int, n: int = 120) -> str:
    rng = random.Random(seed)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + "." for _ in range(n // 12)]
    return "\n".join(" ".join(sentences[i:i + 3]) for i in range(0, len(sentences), 3))


def _near_copy(text: str, seed: int, changes: int = 3) -> str:
    words, rng = text.split(" "), random.Random(seed)
    for k in rng.sample(range(len(words)), changes):
        words[k] = "zebra"
    return " ".join(words)


def _spec(tmp_path: Path, **kw) -> PrepareSpec:
    """The training split's text kept too (``keep_train_text``), for the tests to read what was kept."""
    return PrepareSpec(domain_sources=[], instruction_sources=[], cpt_seq_len=64, ift_seq_len=64, min_chars=20,
                       cache_dir=str(tmp_path / "cache"), executor=Executor(workers=1),
                       **({"keep_train_text": True} | kw))


def _stream_docs(info: dict, split: str = "train") -> list[dict]:
    docs = []
    for path in sorted((Path(info["path"]) / "docs" / split).glob("*" + TEXT_SUFFIX)):
        docs += list(read_text_file(path))
    return docs


def test_every_kept_token_once_in_order_with_one_eos_between_documents(tmp_path, tiny_tokenizer):
    src = tmp_path / "corpus"
    src.mkdir()
    for f in range(3):  # three files -> three tasks -> three shards, read as one stream
        (src / f"part{f}.jsonl").write_text("".join(json.dumps({"text": _doc(10 * f + i)}) + "\n" for i in range(7)))
    info = corpus(_spec(tmp_path), [str(src)], tiny_tokenizer, 0.0, 0.0)
    shards = TokenShards(Path(info["path"]) / "shards" / "train")
    assert len(shards.files) == 3
    kept = _stream_docs(info)
    assert len(kept) == 21 and [d["id"] for d in kept][:2] == [f"{src}/part0.jsonl:1", f"{src}/part0.jsonl:2"]
    eos = tiny_tokenizer.eos_token_id
    expected = [t for d in kept for t in tiny_tokenizer(d["text"], add_special_tokens=False)["input_ids"] + [eos]]
    assert shards.read(0, shards.tokens).tolist() == expected
    assert [len(d) for d in shards.documents_in(0, shards.tokens)] == \
        [len(tiny_tokenizer(d["text"], add_special_tokens=False)["input_ids"]) + 1 for d in kept]
    assert info["splits"]["train"] == {"documents": 21, "tokens": len(expected)}


def test_exact_and_near_duplicates_removed_the_rest_kept(tmp_path, tiny_tokenizer):
    originals = {f"orig{i}": _doc(i) for i in range(40)}
    planted = {f"exact{i}": originals[f"orig{i}"] for i in range(10)}
    planted |= {f"near{i}": _near_copy(originals[f"orig{10 + i}"], i) for i in range(10)}
    # Copies in another file (another task) than their originals: the task that keeps an original removes
    # nothing itself, which is where exact copies were once miscounted as near ones.
    for name, part in (("a_orig.jsonl", originals), ("b_copies.jsonl", planted)):
        (tmp_path / name).write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in part.items()))
    info = corpus(_spec(tmp_path), [str(tmp_path / "*.jsonl")], tiny_tokenizer, 0.0, 0.0)
    kept = [d["text"] for d in _stream_docs(info)]
    # Precision: every original kept once, so nothing removed was not a planted copy (1.0 required).
    assert all(kept.count(v) == 1 for v in originals.values()), "an original was removed or kept twice"
    near_left = [k for k in planted if k.startswith("near") and planted[k] in kept]
    # Recall: every exact copy, and near copies with 3 of ~120 words changed (Jaccard ~0.9): at least 90%.
    recall = (len(planted) - len(near_left)) / len(planted)
    assert recall >= 0.9, f"recall {recall}: near copies kept: {near_left}"
    assert len(kept) == 40 + len(near_left)
    assert info["exact_duplicates"] == 10 and info["near_duplicates"] == 10 - len(near_left)


PII = {
    "email": "jane.doe+cpt@example.co.uk",
    "phone": "+44 20 7946 0958",
    "ipv4": "192.168.14.27",
    "ipv6": "2001:db8:85a3::8a2e:370:7334",
    "card": "4111 1111 1111 1111",
    "key": "AKIAIOSFODNN7EXAMPLE",
}


def test_planted_pii_is_absent_from_the_shards_and_counted(tmp_path, tiny_tokenizer):
    texts = [_doc(100 + i) + f"\nContact: {value}. Requires version 1.2.3.4 of the tool (v2.0.1)."
             for i, value in enumerate(PII.values())]
    path = tmp_path / "pii.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    info = corpus(_spec(tmp_path), [str(path)], tiny_tokenizer, 0.0, 0.0)
    shards = TokenShards(Path(info["path"]) / "shards" / "train")
    decoded = tiny_tokenizer.decode(shards.read(0, shards.tokens).tolist())
    for kind, value in PII.items():
        assert value not in decoded, kind
        assert info["counts"][f"replaced_{kind}"] == 1, kind
    assert decoded.count("1.2.3.4") == len(PII) and decoded.count("2.0.1") == len(PII)  # versions survive
    for kind in PII:
        assert f"<{kind.upper()}>" in decoded


def _write_bad_corpus(root: Path) -> dict[str, list[str]]:
    """Every kind of bad input next to good rows; returns the good texts per file."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    good = {name: [_doc(hash(name) % 1000 + i) for i in range(3)]
            for name in ("a.jsonl", "c.jsonl.gz", "d.parquet", "e.txt", "hf")}
    rows = [json.dumps({"text": good["a.jsonl"][0]}), "{not json", json.dumps({"body": "no text field"}),
            json.dumps({"text": good["a.jsonl"][1]}), json.dumps({"text": good["a.jsonl"][2]})]
    (root / "a.jsonl").write_text("\n".join(rows) + "\n")
    (root / "b.jsonl").write_bytes(b'{"text": "caf\xe9 latin-1 line"}\n')  # not UTF-8
    with gzip.open(root / "c.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps({"text": t}) + "\n" for t in good["c.jsonl.gz"]))
    pq.write_table(pa.table({"text": good["d.parquet"]}), root / "d.parquet")
    (root / "e.txt").write_text(good["e.txt"][0])
    good["e.txt"] = good["e.txt"][:1]
    (root / "f.txt").write_bytes(b"\x00\x01\x02binary\x00" * 50)
    (root / "g.jsonl").write_text("")
    datasets.Dataset.from_dict({"text": good["hf"]}).save_to_disk(str(root / "hf"))
    return good


def test_bad_inputs_are_reported_with_file_and_line_and_good_rows_kept(tmp_path, tiny_tokenizer):
    root = tmp_path / "messy"
    good = _write_bad_corpus(root)
    sources = [str(root / "*.jsonl"), str(root / "*.gz"), str(root / "*.parquet"), str(root / "*.txt"), str(root / "hf")]
    spec = _spec(tmp_path, max_bad_fraction=0.5)
    info = corpus(spec, sources, tiny_tokenizer, 0.0, 0.0)
    kept = {d["text"] for d in _stream_docs(info)}
    assert kept == {t for texts in good.values() for t in texts}
    problems = {(Path(p["file"]).name, p["line"], p["reason"]) for p in info["problems"]}
    assert problems == {("a.jsonl", 2, "invalid_json"), ("a.jsonl", 3, "missing_text_field"),
                        ("b.jsonl", 1, "not_utf8"), ("f.txt", None, "binary_file"), ("g.jsonl", None, "empty_file")}
    with pytest.raises(Exception, match=r"5 of 18 inputs are unreadable.*a\.jsonl:2"):
        corpus(_spec(tmp_path / "strict"), sources, tiny_tokenizer, 0.0, 0.0)


def test_splits_follow_the_text_not_the_neighbours(tmp_path, tiny_tokenizer):
    texts = [_doc(500 + i) for i in range(30)]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    two.write_text("".join(json.dumps({"text": t}) + "\n" for t in [_doc(999)] + texts[::-1]))
    split_of = []
    for path in (one, two):
        info = corpus(_spec(tmp_path), [str(path)], tiny_tokenizer, 0.2, 0.2)
        split_of.append({d["text"]: s for s in ("train", "val", "test") for d in _stream_docs(info, s)})
    assert all(split_of[0][t] == split_of[1][t] for t in texts)
    assert {"train", "val", "test"} == set(split_of[0].values())


def test_only_the_held_out_splits_keep_their_text_by_default(tmp_path, tiny_tokenizer):
    """Without keep_train_text: no docs/train, and the test split's text is exactly its shards' documents."""
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": _doc(700 + i)}) + "\n" for i in range(30)))
    info = corpus(_spec(tmp_path, keep_train_text=False), [str(path)], tiny_tokenizer, 0.2, 0.2)
    assert not (Path(info["path"]) / "docs" / "train").exists()
    assert info["splits"]["train"]["documents"] > 0
    for split in ("val", "test"):
        texts = [d["text"] for d in _stream_docs(info, split)]
        assert len(texts) == info["splits"][split]["documents"] > 0, split
        shards = TokenShards(Path(info["path"]) / "shards" / split)
        eos = tiny_tokenizer.eos_token_id
        assert shards.read(0, shards.tokens).tolist() == \
            [t for x in texts for t in tiny_tokenizer(x, add_special_tokens=False)["input_ids"] + [eos]], split
    kept = corpus(_spec(tmp_path), [str(path)], tiny_tokenizer, 0.2, 0.2)
    assert len(_stream_docs(kept)) == kept["splits"]["train"]["documents"] == info["splits"]["train"]["documents"]


def test_a_second_run_reuses_the_cached_corpus(tmp_path, tiny_tokenizer):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"text": _doc(i)}) + "\n" for i in range(5)))
    first = corpus(_spec(tmp_path), [str(path)], tiny_tokenizer, 0.0, 0.0)
    stamp = (Path(first["path"]) / "corpus.json").stat().st_mtime_ns
    again = corpus(_spec(tmp_path), [str(path)], tiny_tokenizer, 0.0, 0.0)
    assert again["path"] == first["path"] and (Path(first["path"]) / "corpus.json").stat().st_mtime_ns == stamp
    assert not list((tmp_path / "cache").glob("*.partial*"))
    assert np.asarray(TokenShards(Path(first["path"]) / "shards" / "train").read(0, 10)).size == 10


def test_cpt_blocks_read_the_shards_and_mix_replay_by_tokens(tmp_path, tiny_tokenizer):
    from stages.cpt import BlockDataset

    domain, general = tmp_path / "domain.jsonl", tmp_path / "general.jsonl"
    domain.write_text("".join(json.dumps({"text": _doc(700 + i)}) + "\n" for i in range(20)))
    general.write_text("".join(json.dumps({"text": _doc(800 + i)}) + "\n" for i in range(6)))
    d = TokenShards(Path(corpus(_spec(tmp_path), [str(domain)], tiny_tokenizer, 0.0, 0.0)["path"]) / "shards/train")
    r = TokenShards(Path(corpus(_spec(tmp_path), [str(general)], tiny_tokenizer, 0.0, 0.0)["path"]) / "shards/train")
    ds = BlockDataset(d, 32, "documents", replay=r, replay_ratio=0.25, seed=0)
    assert ds.n_domain == d.tokens // 32 and len(ds) - ds.n_domain == round(ds.n_domain / 3)
    replay_rows = {tuple(ds[i]["input_ids"].tolist()) for i in range(ds.n_domain, len(ds))}
    replay_blocks = {tuple(r.read(32 * k, 32 * (k + 1)).tolist()) for k in range(r.tokens // 32)}
    assert replay_rows <= replay_blocks and len(replay_rows) == min(len(replay_blocks), len(ds) - ds.n_domain)
    assert ds[0]["input_ids"].tolist() == d.read(0, 32).tolist()  # block i is tokens [32 i, 32 i + 32)
    starts = d.doc_starts(0, 32 * ds.n_domain)
    boundary = int(starts[starts > 0][0])  # the first document start after the beginning
    row = ds[boundary // 32]
    assert row["position_ids"][boundary % 32] == 0 and row["labels"][boundary % 32] == -100
