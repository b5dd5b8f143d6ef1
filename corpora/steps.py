"""Our datatrove pipeline steps: the parts of corpus preparation datatrove lacks or gets wrong.

Each step is a ``datatrove`` ``PipelineStep``, so it runs unchanged on the
local executor (N worker processes) and on the Slurm executor, and its
``stat_update`` counts land in the executor's ``stats.json`` (the data report
reads them from there). ``corpora.engine`` assembles them into stages.

- ``SourceReader``: our validated readers instead of datatrove's, because
  datatrove's skip a malformed line or a row without the text field with a log
  line only, drop the rest of a file after one non-UTF-8 byte, and say nothing
  about an empty file. Ours skip, count and list every problem with its file
  and line (``problems/<rank>.jsonl``) and keep every good row.
- ``Normalise`` / ``ScrubPII``: formatters over ``corpora.cleaning.normalise``
  and ``corpora.pii.scrub_pii`` (datatrove's PIIFormatter knows e-mail and IPv4
  only and takes version numbers for addresses).
- ``LengthFilter``: characters after cleaning.
- ``Route``: after near-duplicate removal, tags each document's split and
  records minhash cluster representatives, so exact and near duplicates can
  be told apart in the report.
- ``SplitTokenizer``: tokens + EOS into each split's shards in the routing
  pass (datatrove's ``DocumentTokenizer`` writes one folder from a pass of its own).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import sys
from functools import cached_property
from pathlib import Path

import datatrove.executor
import fsspec.compression
import datatrove.executor.base
import datatrove.utils._import_utils
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.tokens.tokenizer import TokenizedFile, get_output_filename
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.batching import batched
from datatrove.utils.tokenization import PipelineStepWithTokenizer
from datatrove.utils.word_tokenizers import WhitespaceTokenizer

import numpy as np
from loguru import logger

from corpora.cleaning import normalise
from corpora.pii import scrub_pii
from corpora.sources import Problem, read_file_documents
from corpora.splits import assign_split


class PlainWords(WhitespaceTokenizer):
    """Words as runs of letters/digits or single punctuation marks, for MinHash and repetition.

    datatrove 0.10's WhitespaceTokenizer splits words with spaCy's multilingual
    model (a 200 MB dependency); a regex is enough for n-gram overlap.
    """

    def word_tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(text)


_WORDS = re.compile(r"\w+|[^\w\s]")


def _quiet_task_logger(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
    """datatrove's task log file, with stderr kept at WARNING (it prints every task at INFO).

    One file sink per task, and the process's one stderr sink left in place: datatrove's own
    version removes and re-adds every sink per task, and each ``logger.add`` costs loguru ~6 ms of
    ``sysconfig`` look-ups (0.6 s of a 6 s preparation of 16 tasks). Installed when this module is
    imported, which every datatrove worker does to unpickle our steps, so spawned and Slurm
    workers are quiet too.
    """
    logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
    prefix = f"[NODE {node_rank}] " if node_rank != -1 else ""
    _TASK_SINKS[id(logfile)] = logger.add(
        logfile, level="DEBUG", colorize=False,
        format=prefix + "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}")
    return logfile


def _quiet_close(logfile) -> None:
    logger.complete()
    logger.remove(_TASK_SINKS.pop(id(logfile)))
    logfile.close()


def _has_distribution(name: str) -> bool | None:
    """datatrove's dependency check by a direct look-up: its own parses every installed package's
    metadata for each name (0.14 s a name, paid in every worker process)."""
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return None  # what datatrove's check returns for a missing distribution


_TASK_SINKS: dict[int, int] = {}
datatrove.executor.base.add_task_logger = _quiet_task_logger
datatrove.executor.base.close_task_logger = _quiet_close
datatrove.utils._import_utils._is_distribution_available = functools.cache(_has_distribution)
logger.remove()
logger.add(sys.stderr, level=os.environ.get("CPTIFT_DATATROVE_LOG", "WARNING"))


class QuietLocalExecutor(datatrove.executor.LocalPipelineExecutor):
    """datatrove's local executor, defined here so that every spawned worker imports this module
    (unpickling the executor) and so gets the quiet task logger above."""


# The cleaned text between and after stages, as zstd at level 3: gzip's default level 9 took
# 4 s and fsspec's zstd (level 10) 1.6 s of a 25 s run on the benchmark corpus; level 3, 0.2 s.
TEXT_SUFFIX = ".jsonl.zst"


def _zstd_fast(file, mode: str = "rb"):
    import zstandard

    if "r" in mode:
        return zstandard.ZstdDecompressor().stream_reader(file)
    return zstandard.ZstdCompressor(level=3).stream_writer(file)


fsspec.compression.register_compression("cptift-zstd", _zstd_fast, [], force=True)


def text_writer(folder: str, name: str):
    """datatrove's JSONL writer into ``folder/<name>.jsonl.zst`` (``name`` may hold ``${rank}``, ``${split}``)."""
    return JsonlWriter(folder, output_filename=name + TEXT_SUFFIX, compression="cptift-zstd")


class SplitTextWriter(JsonlWriter):
    """``text_writer``'s output, ``<folder>/<split>/<rank>.jsonl.zst``, for the documents of ``splits`` only.

    The evaluation reads the test split's text; the training split is kept as
    tokens alone unless asked (``data.keep_train_text``): its text copy took 8%
    of the preparation time, and a compressed second copy of the corpus on disk.
    """

    name = "split text writer"

    def __init__(self, folder: str, splits: list[str]):
        super().__init__(folder, output_filename="${split}/${rank}" + TEXT_SUFFIX, compression="cptift-zstd")
        self.splits = frozenset(splits)

    def write(self, document: Document, rank: int = 0, **kwargs):
        if document.metadata["split"] in self.splits:
            super().write(document, rank, **kwargs)


def read_text_file(path: Path):
    """The rows of one file that ``text_writer`` wrote."""
    import zstandard

    with zstandard.open(path, "rt", encoding="utf-8") as fh:
        yield from map(json.loads, fh)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class SourceReader(PipelineStep):
    """Reads task ``rank``'s share of the files (``files[rank::world_size]``), in order.

    ``files`` is a list of ``(path, source)`` pairs: ``source`` is the config's
    source string the file came from, kept in each document's metadata for the
    per-source counts. ``limit`` caps the documents of a task (0: all).
    """

    name = "cptift reader"
    type = "READER"

    def __init__(self, files: list[tuple[str, str]], text_field: str, problems_dir: str, limit: int = 0):
        super().__init__()
        self.files, self.text_field, self.problems_dir, self.limit = files, text_field, problems_dir, limit

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        log_path = Path(self.problems_dir) / f"{rank:05d}.jsonl"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        with log_path.open("w") as log:
            def on_problem(problem: Problem) -> None:
                log.write(json.dumps(dataclasses.asdict(problem)) + "\n")
                self.stat_update(f"bad_{problem.reason}")

            for path, source in self.files[rank::world_size]:
                for doc in read_file_documents(Path(path), self.text_field, on_problem):
                    if self.limit and count >= self.limit:
                        return
                    count += 1
                    self.stat_update("documents", f"documents:{source}")
                    self.stat_update(f"chars:{source}", value=len(doc["text"]))
                    yield Document(text=doc["text"], id=doc["id"], metadata={"source": source})


class RankFileReader(PipelineStep):
    """Task ``r`` reads ``<folder>/<r:05d>.jsonl.zst`` (what task ``r`` of the stage before wrote), or nothing.

    datatrove's JsonlReader deals the *existing* files out by position, so a
    task that wrote nothing would shift every later task onto the wrong file
    and break MinHash's positional matching.
    """

    name = "rank file reader"
    type = "READER"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        path = Path(self.folder) / f"{rank:05d}{TEXT_SUFFIX}"
        if path.exists():
            for row in read_text_file(path):
                yield Document(text=row["text"], id=row["id"], metadata=row.get("metadata", {}))


class Normalise(BaseFormatter):
    """Unicode NFC, line endings, control characters, blank-line runs (``corpora.cleaning``)."""

    name = "normalise"

    def format(self, text: str) -> str:
        return normalise(text)


class LengthFilter(BaseFilter):
    name = "length"

    def __init__(self, min_chars: int, max_chars: int = 0):
        super().__init__()
        self.min_chars, self.max_chars = min_chars, max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if len(doc.text) < self.min_chars:
            return False, "too_short"
        if self.max_chars and len(doc.text) > self.max_chars:
            return False, "too_long"
        return True


class ScrubPII(PipelineStep):
    """Replaces e-mail addresses, phones, IPs, card numbers and keys by typed placeholders."""

    name = "pii"
    type = "FORMAT"

    def __init__(self, types: list[str]):
        super().__init__()
        self.types = list(types)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            if self.types:
                doc.text, counts = scrub_pii(doc.text, self.types)
                for kind, n in counts.items():
                    if n:
                        self.stat_update(f"replaced_{kind}", value=n)
            yield doc


class Tag(PipelineStep):
    """Content hash and split of each document.

    The split is a seeded hash of the cleaned text, so it is the same for a
    document whatever else the corpus holds, wherever the file lives, and
    exact copies land in the same split.
    """

    name = "tag"
    type = "FORMAT"

    def __init__(self, seed: int, val_fraction: float, test_fraction: float):
        super().__init__()
        self.seed, self.val, self.test = seed, val_fraction, test_fraction

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for doc in data:
            digest = content_hash(doc.text)
            doc.metadata["hash"] = digest
            doc.metadata["split"] = assign_split(digest, self.seed, self.val, self.test)
            self.stat_update(f"split_{doc.metadata['split']}")
            yield doc


class Route(PipelineStep):
    """After MinHash filtering: record the hash of every kept document (``hashes/<rank>.npy``).

    The report tells exact from near duplicates by looking up each removed
    document's hash among the kept ones (8 bytes a document on disk).
    """

    name = "route"
    type = "FORMAT"

    def __init__(self, hashes_dir: str):
        super().__init__()
        self.hashes_dir = hashes_dir

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        kept = []
        for doc in data:
            kept.append(hash_prefix(doc.metadata["hash"]))
            yield doc
        Path(self.hashes_dir).mkdir(parents=True, exist_ok=True)
        np.save(Path(self.hashes_dir) / f"{rank:05d}.npy", np.array(kept, dtype=np.uint64))


def hash_prefix(digest: str) -> int:
    return int(digest[:16], 16)


class SplitTokenizer(PipelineStepWithTokenizer):
    """Tokens + EOS of each document into its split's shard, ``<folder>/<split>/<rank:05d>_unshuffled.ds``.

    Runs at the end of the routing pass, so the cleaned text is tokenised as it
    goes by instead of being written, read back and parsed again by a separate
    stage per split. The files are datatrove's tokenized format (tokens,
    ``.index`` of document ends, ``.metadata``), the same that its
    ``DocumentTokenizer`` writes with shuffling off. Counts tokens per source.
    """

    name = "tokenise"
    type = "TOKENIZER"

    def __init__(self, folder: str, tokenizer_name_or_path: str, eos_token: str, batch_size: int):
        super().__init__(tokenizer_name_or_path, eos_token)
        self.folder, self.batch_size = folder, batch_size

    @cached_property
    def tokenizer(self):
        # One load per worker process, not per task (a task set-up cost that added up to seconds).
        key = (self.tokenizer_name_or_path, self.eos_token)
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = super().tokenizer
        return _TOKENIZERS[key]

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        files: dict[str, TokenizedFile] = {}
        dtype = np.dtype("<u4") if self.token_size == 4 else np.dtype("<u2")
        try:
            for batch in batched(data, self.batch_size):
                with self.track_time(unit="batch"):
                    for doc, encoded in zip(batch, self.tokenizer.encode_batch_fast([d.text for d in batch])):
                        split = doc.metadata["split"]
                        if split not in files:
                            files[split] = TokenizedFile(
                                f"{self.folder}/{split}", get_output_filename(None, rank, "unshuffled"),
                                tokenizer_name_or_path=self.tokenizer_name_or_path, save_final_metadata=True,
                                token_size=self.token_size)
                        files[split].write_bytes(np.asarray(encoded.ids, dtype=dtype).tobytes())
                        self.stat_update("tokens", f"tokens:{doc.metadata.get('source', '?')}",
                                         value=len(encoded.ids))
                yield from batch
        finally:
            for file in files.values():
                file.close()


_TOKENIZERS: dict = {}
