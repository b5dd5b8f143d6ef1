"""Prepare every data set a pipeline run needs, once, into one folder.

    manifest = prepare(spec, tokenizer, Path("runs/demo/data"))

The CPT corpora (domain and replay) go through ``corpora.engine`` (datatrove)
into a content-addressed cache shared by runs: ``<cache>/corpus-<key>/`` with
``shards/<split>/`` (memory-mapped tokens with document boundaries) and
``docs/<split>/`` (the cleaned text). The key hashes the input files, the
tokenizer and the cleaning settings only, so runs that differ in training
settings prepare once. The run's own folder holds (read back as JSON or
memory-mapped arrays, never pickles):
- ``manifest.json``: fingerprint, where the corpora are, sizes;
- ``report.json`` / ``report.md``: the data report (``corpora.report``);
- ``ift_train.jsonl``: ``{"input_ids", "labels"}`` per rendered example;
- ``eval/<suite>/perplexity.jsonl`` and ``eval/<suite>/<task>.jsonl``.

Documents are split by a seeded hash of their cleaned text and instruction
records by group (``corpora.splits``), so test documents and test questions
are never trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from corpora import manifest as mf
from corpora import report as data_report
from corpora.builtin import builtin_documents
from corpora.chat import render_example
from corpora.cleaning import clean_documents
from corpora.packing import packing_efficiency
from corpora.engine import CorpusJob, Executor, build_corpus, remove_work
from corpora.shards import TokenShards
from corpora.sources import BUILTIN, DataError, expand, read_documents, read_records, read_tasks
from corpora.splits import assign_split
from corpora.steps import TEXT_SUFFIX, read_text_file

SPLIT_PREFIX = "split:"
# Eval tasks that lm-evaluation-harness loads itself at evaluation time
# (stages/lm_eval_tasks.py): not read here, only recorded in the manifest.
LM_EVAL_PREFIX = "lm_eval:"


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
    cleaning: dict = field(default_factory=dict)  # CorpusJob fields: max_chars, repetition, near_dedup, pii, ...
    tasks: int = 8  # datatrove tasks = shards per split (the shards depend on it)
    keep_train_text: bool = False  # also keep the training split's cleaned text next to its tokens
    max_bad_fraction: float = 0.01  # fail when more of the input than this is unreadable
    ift_micro_batch: int = 8  # for the padded-vs-packed efficiency figure only
    cache_dir: str = ""  # "" -> $CPTIFT_CACHE/data
    executor: Executor = field(default_factory=Executor)


def cache_root(spec: PrepareSpec) -> Path:
    if spec.cache_dir:
        return Path(spec.cache_dir)
    return Path(os.environ.get("CPTIFT_CACHE", Path.home() / ".cache" / "cptift")) / "data"


def prepare(spec: PrepareSpec, tokenizer, out_dir: Path) -> dict:
    """Prepare into ``out_dir`` unless a manifest with the same fingerprint is there."""
    key = _fingerprint(spec, tokenizer)
    existing = mf.read_manifest(out_dir)
    if existing and existing.get("fingerprint") == key:
        return existing | {"reused": True}
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "eval").mkdir(parents=True)
    manifest = _build(spec, tokenizer, tmp) | {"fingerprint": key, "format": mf.FORMAT_VERSION}
    data_report.write(manifest, tmp)
    mf.write_json_atomic(tmp / "manifest.json", manifest)
    # Swap in the finished folder only now, so a crash never leaves half-prepared data.
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return manifest


def _fingerprint(spec: PrepareSpec, tokenizer) -> str:
    sources = set(spec.domain_sources + spec.instruction_sources + spec.replay_sources)
    for suite in spec.eval_suites.values():
        sources |= set(suite.get("perplexity", [])) | set(suite.get("tasks", {}).values())
    inputs = [mf.source_fingerprint(s, [] if s.startswith((BUILTIN, SPLIT_PREFIX, LM_EVAL_PREFIX)) else expand(s))
              for s in sorted(sources)]
    settings = dataclasses.asdict(spec)
    settings.pop("executor")  # how preparation runs does not change what it produces
    return mf.fingerprint(inputs, mf.tokenizer_fingerprint(tokenizer), settings)


def _build(spec: PrepareSpec, tokenizer, out: Path) -> dict:
    domain = corpus(spec, spec.domain_sources, tokenizer, spec.val_fraction, spec.test_fraction)
    manifest = {"domain": domain, "cpt": {"seq_len": spec.cpt_seq_len, "corpus": domain["path"]}}
    if spec.replay_sources and spec.replay_ratio > 0:
        replay = corpus(spec, spec.replay_sources, tokenizer, 0.0, 0.0)
        manifest |= {"replay": replay}
        manifest["cpt"] |= {"replay": replay["path"], "replay_ratio": spec.replay_ratio}
    records = _split_records(spec)
    manifest["ift"] = _write_ift(tokenizer, records["train"], spec.ift_seq_len, spec.ift_micro_batch,
                                 out / "ift_train.jsonl")
    test_docs = _read_docs(Path(domain["path"]) / "docs" / "test")
    manifest["eval"] = _write_evals(spec, {"domain/test": test_docs, "instructions/test": records["test"]}, out)
    return manifest


def corpus(spec: PrepareSpec, sources: list[str], tokenizer, val: float, test: float) -> dict:
    """The cleaned, tokenised corpus of ``sources`` from the cache, built there first if absent."""
    if tokenizer.eos_token is None:
        raise DataError("the tokenizer has no EOS token, which CPT puts between documents; "
                        "set tokenizer.eos_token in the model folder's tokenizer_config.json")
    settings = {"text_field": spec.text_field, "min_chars": spec.min_chars, "max_documents": spec.max_documents,
                "seed": spec.seed, "val_fraction": val, "test_fraction": test, "tasks": spec.tasks,
                "keep_train_text": spec.keep_train_text} | spec.cleaning
    inputs = [mf.source_fingerprint(s, [] if s.startswith(BUILTIN) else expand(s)) for s in sources]
    key = mf.fingerprint(inputs, mf.tokenizer_fingerprint(tokenizer), settings)[:24]
    final = cache_root(spec) / f"corpus-{key}"
    if not (final / "corpus.json").exists():
        _build_corpus(spec, sources, tokenizer, settings, final)
    info = json.loads((final / "corpus.json").read_text())
    _check_bad_share(info, spec.max_bad_fraction)
    return info | {"path": str(final)}


def _build_corpus(spec: PrepareSpec, sources: list[str], tokenizer, settings: dict, final: Path) -> None:
    # A per-process partial folder: two runs preparing the same corpus never write into each other.
    tmp = final.with_name(f"{final.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "tokenizer.json").write_text(mf.plain_tokenizer_json(tokenizer))  # datatrove reads it by path
    files = _input_files(sources, tmp / "inputs")
    counts = build_corpus(CorpusJob(files=files, **settings), tmp / "tokenizer.json", tokenizer.eos_token, tmp,
                          spec.executor)
    shards = {s: TokenShards(tmp / "shards" / s) for s in ("train", "val", "test")}
    splits = {s: {"documents": sh.documents, "tokens": sh.tokens} for s, sh in shards.items()}
    remove_work(tmp)
    mf.write_json_atomic(tmp / "corpus.json", counts | {"splits": splits, "sources": sources, "settings": settings})
    try:
        tmp.rename(final)
    except OSError:  # another run finished the same corpus first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _input_files(sources: list[str], builtin_dir: Path) -> list[tuple[str, str]]:
    """(file, source) pairs in read order; built-in corpora are written to JSONL first."""
    files = []
    for source in sources:
        if source.startswith(BUILTIN):
            builtin_dir.mkdir(parents=True, exist_ok=True)
            path = builtin_dir / f"{source[len(BUILTIN):]}.jsonl"
            with path.open("w") as fh:
                for doc in builtin_documents(source[len(BUILTIN):]):
                    fh.write(json.dumps({"id": doc["id"], "text": doc["text"]}) + "\n")
            files.append((str(path), source))
        else:
            files += [(str(p), source) for p in expand(source)]
    return files


def _check_bad_share(info: dict, max_fraction: float) -> None:
    bad, read = len(info["problems"]), info["counts"].get("documents", 0)
    if bad and bad > max_fraction * (bad + read):
        first = info["problems"][0]
        raise DataError(f"{bad} of {bad + read} inputs are unreadable ({100 * bad / (bad + read):.1f}%, more than "
                        f"data.max_bad_fraction={max_fraction}); first: {first['file']}:{first['line']}: "
                        f"{first['detail']}; fix the files or raise data.max_bad_fraction")
    if not info["splits"]["train"]["tokens"]:
        raise DataError("no domain documents left for training after cleaning and splitting; add sources or "
                        "lower data.domain.min_chars (the data report lists what was dropped and why)")


def _read_docs(folder: Path) -> list[dict]:
    docs = []
    for path in sorted(folder.glob("*" + TEXT_SUFFIX)):
        docs += [{"id": row["id"], "text": row["text"]} for row in read_text_file(path)]
    return docs


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


def _write_ift(tokenizer, records: list[dict], max_len: int, batch: int, path: Path) -> dict:
    kept, too_long, lengths = 0, 0, []
    with path.open("w") as fh:
        for rec in tqdm(records, desc="render chat", unit="rec", leave=False):
            ids, labels = render_example(tokenizer, rec["messages"])
            if len(ids) > max_len:
                too_long += 1  # dropped, not truncated: a cut reply would teach the model to stop mid-answer
                continue
            fh.write(json.dumps({"input_ids": ids, "labels": labels}) + "\n")
            kept += 1
            lengths.append(len(ids))
    efficiency = packing_efficiency(lengths, max_len, batch)
    return {"examples": kept, "dropped_too_long": too_long, "seq_len": max_len,
            "packed_blocks": efficiency.pop("packed_rows"), "packing_efficiency": efficiency}


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
            if source.startswith(LM_EVAL_PREFIX):
                report[f"{suite}/{name}_lm_eval"] = source[len(LM_EVAL_PREFIX):]
                continue
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
