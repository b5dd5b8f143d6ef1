"""Prepare every data set a pipeline run needs, once, into one folder.

    manifest = prepare(spec, tokenizer, Path("runs/demo/data"))

Writes (all read back with ``allow_pickle=False`` or as JSON):
- ``cpt_train.npz`` / ``cpt_val.npz``: packed blocks, tail and document starts;
- ``ift_train.jsonl``: ``{"input_ids", "labels"}`` per rendered example;
- ``eval/<suite>/perplexity.jsonl`` and ``eval/<suite>/<task>.jsonl``;
- ``manifest.json``: fingerprint, sizes and cleaning statistics (the data report).

Documents are split by id and instruction records by group with a seeded hash
(``corpora.splits``), so test documents and test questions are never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from corpora import manifest as mf
from corpora.chat import render_example
from corpora.cleaning import clean_documents
from corpora.packing import mix_blocks, pack_documents
from corpora.sources import expand, read_documents, read_records, read_tasks
from corpora.splits import assign_split

SPLIT_PREFIX = "split:"


@dataclass
class PrepareSpec:
    domain_sources: list[str]
    instruction_sources: list[str]
    cpt_seq_len: int
    ift_seq_len: int
    seed: int = 0
    text_field: str = "text"
    min_chars: int = 200
    max_documents: int = 0
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    instruction_test_fraction: float = 0.2
    max_records: int = 0
    replay_sources: list[str] = field(default_factory=list)
    replay_ratio: float = 0.0
    # suite -> {"perplexity": [sources], "tasks": {name: source}}
    eval_suites: dict[str, dict] = field(default_factory=dict)


def prepare(spec: PrepareSpec, tokenizer, out_dir: Path) -> dict:
    """Prepare into ``out_dir`` unless a manifest with the same fingerprint is there."""
    key = _fingerprint(spec, tokenizer)
    existing = mf.read_manifest(out_dir)
    if existing and existing.get("fingerprint") == key:
        return existing | {"reused": True}
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "eval").mkdir(parents=True)
    report = _build(spec, tokenizer, tmp) | {"fingerprint": key, "format": mf.FORMAT_VERSION}
    mf.write_json_atomic(tmp / "manifest.json", report)
    # Swap in the finished folder only now, so a crash never leaves half-prepared data.
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return report


def _fingerprint(spec: PrepareSpec, tokenizer) -> str:
    sources = set(spec.domain_sources + spec.instruction_sources + spec.replay_sources)
    for suite in spec.eval_suites.values():
        sources |= set(suite.get("perplexity", [])) | set(suite.get("tasks", {}).values())
    inputs = [mf.source_fingerprint(s, [] if s.startswith(("builtin:", SPLIT_PREFIX)) else expand(s))
              for s in sorted(sources)]
    return mf.fingerprint(inputs, mf.tokenizer_fingerprint(tokenizer), dataclasses.asdict(spec))


def _build(spec: PrepareSpec, tokenizer, out: Path) -> dict:
    docs, stats = clean_documents(read_documents(spec.domain_sources, spec.text_field), spec.min_chars)
    if spec.max_documents:
        docs = docs[: spec.max_documents]
    split = {s: [d for d in docs if assign_split(d["id"], spec.seed, spec.val_fraction, spec.test_fraction) == s]
             for s in ("train", "val", "test")}
    if not split["train"]:
        raise ValueError("no domain documents left for training after cleaning and splitting; "
                         "add sources or lower data.domain.min_chars")
    report = {"cleaning": dataclasses.asdict(stats), "documents": {k: len(v) for k, v in split.items()}}
    report["cpt"] = _write_cpt(spec, tokenizer, split, out)
    records = _split_records(spec)
    report["ift"] = _write_ift(tokenizer, records["train"], spec.ift_seq_len, out / "ift_train.jsonl")
    report["eval"] = _write_evals(spec, {"domain/test": split["test"], "instructions/test": records["test"]}, out)
    return report


def _tokenize(tokenizer, docs: list[dict], desc: str) -> list[list[int]]:
    out = []
    for i in tqdm(range(0, len(docs), 64), desc=f"tokenise {desc}", unit="batch", leave=False):
        batch = [d["text"] for d in docs[i: i + 64]]
        out += tokenizer(batch, add_special_tokens=False)["input_ids"]
    return out


def _write_cpt(spec: PrepareSpec, tokenizer, split: dict, out: Path) -> dict:
    eos = tokenizer.eos_token_id
    train = pack_documents(_tokenize(tokenizer, split["train"], "domain"), eos, spec.cpt_seq_len)
    blocks = train.blocks
    info = {"block_len": spec.cpt_seq_len, "domain_blocks": len(blocks), "tail_tokens": int(train.tail.size)}
    if spec.replay_ratio > 0 and spec.replay_sources:
        replay_docs, _ = clean_documents(read_documents(spec.replay_sources, spec.text_field), spec.min_chars)
        replay = pack_documents(_tokenize(tokenizer, replay_docs, "replay"), eos, spec.cpt_seq_len).blocks
        blocks = mix_blocks(blocks, replay, spec.replay_ratio, spec.seed)
        info["replay_blocks"] = len(blocks) - info["domain_blocks"]
    np.savez(out / "cpt_train.npz", blocks=blocks, tail=train.tail, doc_starts=train.doc_starts)
    val = pack_documents(_tokenize(tokenizer, split["val"], "val"), eos, spec.cpt_seq_len)
    np.savez(out / "cpt_val.npz", blocks=val.blocks, tail=val.tail, doc_starts=val.doc_starts)
    return info | {"train_blocks": len(blocks), "train_tokens": int(blocks.size), "val_blocks": len(val.blocks)}


def _split_records(spec: PrepareSpec) -> dict[str, list[dict]]:
    split: dict[str, list[dict]] = {"train": [], "test": []}
    for rec in read_records(spec.instruction_sources):
        part = assign_split(rec["group"], spec.seed + 1, 0.0, spec.instruction_test_fraction)
        split["test" if part == "test" else "train"].append(rec)
    if spec.max_records:
        split["train"] = split["train"][: spec.max_records]
    if not split["train"]:
        raise ValueError("no instruction records left for training; add data.instructions.sources")
    return split


def _write_ift(tokenizer, records: list[dict], max_len: int, path: Path) -> dict:
    kept = too_long = 0
    with path.open("w") as fh:
        for rec in tqdm(records, desc="render chat", unit="rec", leave=False):
            ids, labels = render_example(tokenizer, rec["messages"])
            if len(ids) > max_len:
                too_long += 1  # dropped, not truncated: a cut reply would teach the model to stop mid-answer
                continue
            fh.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")
            kept += 1
    return {"examples": kept, "dropped_too_long": too_long}


def _write_evals(spec: PrepareSpec, splits: dict[str, list[dict]], out: Path) -> dict:
    report = {}
    for suite, conf in spec.eval_suites.items():
        (out / "eval" / suite).mkdir(parents=True, exist_ok=True)
        docs = []
        for source in conf.get("perplexity", []):
            docs += splits[source[len(SPLIT_PREFIX):]] if source.startswith(SPLIT_PREFIX) \
                else clean_documents(read_documents([source], spec.text_field), 1)[0]
        _write_jsonl(out / "eval" / suite / "perplexity.jsonl", docs)
        report[f"{suite}/perplexity_documents"] = len(docs)
        for name, source in conf.get("tasks", {}).items():
            items = _records_to_items(splits[source[len(SPLIT_PREFIX):]]) if source.startswith(SPLIT_PREFIX) \
                else read_tasks(source)
            _write_jsonl(out / "eval" / suite / f"{name}.jsonl", items)
            report[f"{suite}/{name}_items"] = len(items)
    return report


def _records_to_items(records: list[dict]) -> list[dict]:
    """Held-out instruction records as eval items: multiple choice when they carry choices."""
    items = []
    for rec in records:
        base = {"id": rec["id"], "messages": rec["messages"][:-1]}
        if "choices" in rec:
            items.append(base | {"kind": "choice", "choices": rec["choices"], "answer": rec["answer"]})
        else:
            items.append(base | {"kind": "generate", "answers": [rec["messages"][-1]["content"]], "reference": True})
    return items


def read_jsonl(path: Path) -> list[dict]:
    """Read back a JSONL file that ``prepare`` wrote."""
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
