"""The CPT corpus pipeline on datatrove: read, clean, deduplicate, scrub, split, tokenise, write shards.

    info = build_corpus(CorpusJob(files=[("dump.jsonl.gz", "corpus/*.jsonl.gz")], ...), Path("cache/cpt-<key>"))

Stages (each a datatrove executor run; ``workers`` processes locally, or an
sbatch array per stage on Slurm with ``engine.executor: slurm``):

1. ``clean``   (T tasks): read (our validated reader) -> normalise -> length and
   repetition filters -> PII scrub -> tag hash and split -> write -> MinHash signatures
2. ``buckets`` (one task per MinHash bucket): candidate duplicate pairs
3. ``cluster`` (1 task): duplicate clusters, one kept per cluster
4. ``dedup``   (T tasks): drop cluster members; write each kept document's tokens + EOS
   to ``shards/<split>/`` and the text of the val and test documents to ``docs/<split>/``
   (of train too with ``keep_train_text``)

With near-dedup off, stage 1 ends with stage 4's writers and is the only stage.

Task ``r`` of every stage reads exactly the files task ``r`` of the stage before
wrote, so shard ``r`` holds the documents of input files ``r, r+T, ...`` in
order: the output depends on the inputs, the settings and ``T``, never on the
number of workers or on the executor. Exact copies always share a MinHash
signature, so they are removed by the same mechanism as near copies (Jaccard
of word 5-grams >= ~0.8) and told apart afterwards by their content hash
(``_duplicate_kinds``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corpora.pii import PII_TYPES
from corpora.steps import (LengthFilter, Normalise, PlainWords, QuietLocalExecutor, RankFileReader, Route, ScrubPII,
                           SourceReader, SplitTextWriter, SplitTokenizer, Tag, TEXT_SUFFIX, hash_prefix, read_text_file,
                           text_writer)

SPLITS = ("train", "val", "test")
# Documents per tokenizer call: the encodings of a batch are held at once, so a
# large batch (datatrove's default is 10,000) makes memory grow with document size.
TOKENIZE_BATCH = 64
# Below this input size a pool of worker processes (started per stage) costs more than it saves.
SMALL_CORPUS_BYTES = 32 << 20


@dataclass
class CorpusJob:
    """Everything that decides the output of ``build_corpus`` (and so its cache key)."""

    files: list[tuple[str, str]]  # (path, source string from the config), in read order
    text_field: str = "text"
    min_chars: int = 200
    max_chars: int = 0  # 0: no upper bound
    max_documents: int = 0  # 0: all; else read only the first N documents (one task)
    repetition: bool = True  # line / paragraph / 10-gram repetition filter (thresholds below)
    max_duplicate_paragraph_fraction: float = 0.5
    max_duplicate_line_fraction: float = 0.95
    near_dedup: bool = True  # MinHash near-duplicate removal (exact copies are always removed with it)
    pii: list[str] = field(default_factory=lambda: list(PII_TYPES))
    seed: int = 0
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    tasks: int = 8  # output shards per split (<= number of files)
    keep_train_text: bool = False  # also write the training split's cleaned text (val and test: always)


@dataclass
class Executor:
    """How stages run; does not change the output."""

    kind: str = "local"  # local | slurm
    workers: int = 2
    slurm: dict = field(default_factory=dict)  # partition, time, cpus_per_task, mem_per_cpu_gb, sbatch_args


def build_corpus(job: CorpusJob, tokenizer_json: Path, eos_token: str, out: Path, executor: Executor) -> dict:
    """Run every stage into ``out`` (``shards/<split>/``, ``docs/<split>/``, ``work/``); return the counts."""
    tasks = 1 if job.max_documents else max(1, min(job.tasks, len(job.files)))
    if sum(os.path.getsize(path) for path, _ in job.files) < SMALL_CORPUS_BYTES:
        executor = dataclasses.replace(executor, workers=1) if executor.kind == "local" else executor
    work = out / "work"
    stages = _stages(job, tasks, work, out, str(tokenizer_json), eos_token)
    _run(stages, tasks, job, work, executor)
    return _collect(work, out, tasks)


def _minhash_config(seed: int):
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    return MinhashConfig(seed=seed + 1)  # defaults: 5-grams, 14 buckets x 8 hashes


def _stages(job: CorpusJob, tasks: int, work: Path, out: Path, tokenizer_json: str, eos: str) -> list:
    """(name, pipeline, number of tasks) for every stage, in order."""
    from datatrove.pipeline.dedup.minhash import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                                  MinhashDedupSignature)
    from datatrove.pipeline.filters import GopherRepetitionFilter

    mh, words = _minhash_config(job.seed), PlainWords()
    clean = [SourceReader(job.files, job.text_field, str(work / "problems"), job.max_documents),
             Normalise(), LengthFilter(job.min_chars, job.max_chars)]
    if job.repetition:
        # Thresholds for technical and legal text: the web defaults (0.3 / 0.2 and
        # 2- to 10-gram checks) dropped most code files and licences.
        p, line = job.max_duplicate_paragraph_fraction, job.max_duplicate_line_fraction
        clean.append(GopherRepetitionFilter(dup_para_frac=p, dup_para_char_frac=p, dup_line_frac=line,
                                            dup_line_char_frac=line, top_n_grams=(), dup_n_grams=((10, line),),
                                            language=words))
    clean += [ScrubPII(job.pii), Tag(job.seed, job.val_fraction, job.test_fraction)]
    # The cleaned text of the held-out splits (the evaluation reads the test split's), then every split's tokens.
    text_splits = SPLITS if job.keep_train_text else SPLITS[1:]
    route_out = [SplitTextWriter(str(out / "docs"), list(text_splits)),
                 SplitTokenizer(str(out / "shards"), tokenizer_json, eos, TOKENIZE_BATCH)]
    if not job.near_dedup:  # nothing to remove: route to the splits in the same pass
        return [("clean", [*clean, *route_out], tasks)]
    clean += [text_writer(str(work / "clean"), "${rank}"),
              MinhashDedupSignature(str(work / "signatures"), config=mh, language=words)]
    route = [RankFileReader(str(work / "clean")),
             MinhashDedupFilter(str(work / "remove"), exclusion_writer=text_writer(str(work / "removed"), "${rank}")),
             Route(str(work / "hashes")), *route_out]
    return [("clean", clean, tasks),
            ("buckets", [MinhashDedupBuckets(str(work / "signatures"), str(work / "buckets"), config=mh)],
             mh.num_buckets),
            ("cluster", [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)], 1),
            ("dedup", route, tasks)]


def _run(stages: list, tasks: int, job: CorpusJob, work: Path, executor: Executor) -> None:
    import hashlib

    previous = None
    # Job names unique to this build, so that waiting never confuses our jobs with another build's.
    tag = hashlib.sha1(str(work.resolve()).encode()).hexdigest()[:8]
    job_names = [f"cptift-{name}-{tag}" for name, *_ in stages]
    for (name, pipeline, n_tasks), job_name in zip(stages, job_names):
        logs = str(work / "logs" / name)  # never the default ./logs: a re-run there silently does nothing
        if executor.kind == "slurm":  # submitted up front, so every stage runs
            previous = _slurm_executor(job_name, pipeline, n_tasks, logs, executor, previous)
        else:
            QuietLocalExecutor(pipeline, tasks=n_tasks, workers=min(executor.workers, n_tasks),
                               logging_dir=logs, start_method="forkserver").run()
    if executor.kind == "slurm":
        # launch_job submits the ``depends`` chain first (each stage afterok on the one before), then this
        # stage; every stage also gets a merge_stats job (same name) that writes its stats.json.
        previous.run()
        _wait_for_slurm(work / "logs", [s[0] for s in stages], [s[2] for s in stages], job_names)


def _slurm_executor(job_name: str, pipeline: list, tasks: int, logs: str, executor: Executor, depends):
    import subprocess

    from datatrove.executor import SlurmPipelineExecutor

    opts = {"time": "24:00:00", "partition": "", "cpus_per_task": 1, "mem_per_cpu_gb": 2} | executor.slurm
    if not opts["partition"]:
        # datatrove always writes "#SBATCH --partition=<value>" (a bare "--partition" when empty, which sbatch
        # rejects): "" means the cluster's default partition, which sinfo marks with a "*".
        listed = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
        default = [p[:-1] for p in listed.stdout.split() if p.endswith("*")]
        if not default:
            raise RuntimeError(f"data.engine.slurm.partition is not set and Slurm names no default partition "
                               f"(sinfo: {(listed.stdout + listed.stderr).strip()!r}); set the partition")
        opts["partition"] = default[0]
    return SlurmPipelineExecutor(pipeline, tasks=tasks, job_name=job_name, logging_dir=logs,
                                 slurm_logs_folder=os.path.join(logs, "slurm"), depends=depends,
                                 venv_path=_venv_activate(), workers=executor.workers, **opts)


def _venv_activate() -> str | None:
    """The running venv's activate script, so every Slurm task uses this Python.

    From the interpreter itself (``sys.prefix``), not ``$VIRTUAL_ENV``: a venv's Python run by its path
    (``.venv/bin/pytest``, ``.venv/bin/cptift``) has no ``$VIRTUAL_ENV``, and its tasks would then look for
    ``launch_pickled_pipeline`` on a PATH without the venv.
    """
    import sys

    if sys.prefix == sys.base_prefix:  # not in a venv: the tasks use the PATH exported with the job
        return None
    path = Path(sys.prefix) / "bin" / "activate"
    return str(path) if path.exists() else None


def _wait_for_slurm(logs: Path, names: list[str], tasks: list[int], job_names: list[str],
                    poll_seconds: float = 2.0) -> None:
    """Block until every stage wrote all its completion markers and its stats.json; raise if a job failed.

    A failed task leaves the stages after it pending for ever (reason DependencyNeverSatisfied: their
    ``afterok`` can no longer be met), so that reason, or an empty queue with work missing, is a failure;
    the jobs still queued are then cancelled.
    """
    import subprocess
    import time

    def finished(name: str, n_tasks: int) -> bool:  # stats.json comes from the stage's merge_stats job
        marks = logs / name / "completions"
        return (logs / name / "stats.json").exists() and marks.is_dir() and len(list(marks.iterdir())) >= n_tasks

    def done() -> bool:
        return all(finished(n, t) for n, t in zip(names, tasks))

    def failure(why: str, queued_ids: list[str]) -> RuntimeError:
        if queued_ids:
            subprocess.run(["scancel", *queued_ids], capture_output=True)
        stage = next((n for n, t in zip(names, tasks) if not finished(n, t)), names[-1])
        outs = sorted((logs / stage / "slurm").glob("*.out"), key=lambda p: p.stat().st_mtime)
        tail = "\n".join(outs[-1].read_text(errors="replace").splitlines()[-20:]) if outs else "(no Slurm log)"
        return RuntimeError(f"the Slurm preparation jobs failed ({why}); first unfinished stage {stage!r}, "
                            f"logs in {logs / stage / 'slurm'}; last lines of {outs[-1] if outs else '-'}:\n{tail}")

    squeue_errors = 0
    while not done():
        # %F: the array's base job id ("12"), which scancel takes; %i may read "12_[0-7%2]", which it refuses.
        result = subprocess.run(["squeue", "-h", "-o", "%F %r", "-n", ",".join(job_names)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            squeue_errors += 1
            if squeue_errors >= 10:
                raise RuntimeError(f"squeue keeps failing: {result.stderr.strip()}")
            time.sleep(poll_seconds)
            continue
        squeue_errors = 0
        queued = [line.split(None, 1) for line in result.stdout.splitlines() if line.strip()]
        ids = list(dict.fromkeys(q[0] for q in queued))
        if any(len(q) > 1 and q[1].strip() == "DependencyNeverSatisfied" for q in queued):
            raise failure("a job failed, so the jobs that depend on it can never start", ids)
        if not queued and not done():
            raise failure("no job left in the queue", [])
        time.sleep(poll_seconds)


def _collect(work: Path, out: Path, tasks: int) -> dict:
    """Counts per stage from datatrove's stats.json, problems, exact/near duplicates, shard list."""
    stats = {p.parent.name: json.loads(p.read_text()) for p in sorted((work / "logs").glob("*/stats.json"))}
    counts: Counter = Counter()
    for stage in stats.values():
        for step in stage:
            for key, value in step["stats"].items():
                counts[key] += value["total"] if isinstance(value, dict) else value
    problems = [json.loads(line) for p in sorted((work / "problems").glob("*.jsonl"))
                for line in p.read_text().splitlines()]
    exact, near = _duplicate_kinds(work)
    return {"counts": dict(counts), "problems": problems, "exact_duplicates": exact, "near_duplicates": near,
            "tasks": tasks}


def _duplicate_kinds(work: Path) -> tuple[int, int]:
    """(exact, near) among the removed documents.

    A removed document is an exact copy if its text hash is that of a kept
    document, or of another removed one seen before it; otherwise it was
    removed as a near copy. Kept hashes are read one shard at a time.
    """
    removed = []
    for path in sorted((work / "removed").glob("*" + TEXT_SUFFIX)):
        removed += [hash_prefix(row["metadata"]["hash"]) for row in read_text_file(path)]
    if not removed:
        return 0, 0
    wanted = np.array(removed, dtype=np.uint64)
    in_kept = np.zeros(len(wanted), dtype=bool)
    for path in (work / "hashes").glob("*.npy"):
        in_kept |= np.isin(wanted, np.load(path, allow_pickle=False))
    seen, exact = set(), 0
    for h, kept in zip(removed, in_kept):
        exact += bool(kept or h in seen)
        seen.add(h)
    return exact, len(removed) - exact


def remove_work(out: Path) -> None:
    """Intermediate files (cleaned copies, signatures) are not needed once shards exist."""
    for name in ("clean", "signatures", "buckets", "remove", "removed", "hashes"):
        shutil.rmtree(out / "work" / name, ignore_errors=True)
