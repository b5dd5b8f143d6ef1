"""The Slurm executor prepares the same corpus as the local one, byte for byte, on a real single-host Slurm.

``Executor(kind="slurm")`` turns every stage of ``corpora.engine`` into a
datatrove ``SlurmPipelineExecutor`` (an sbatch array job, ``afterok`` on the
stage before, plus a ``merge_stats`` job), submitted with the real ``sbatch``
to the throw-away cluster of ``tests/slurm_cluster.py``; each task runs under
``srun`` with the venv activated. Skipped where Slurm cannot be installed or
started (not root, no apt-get), failed instead under CPTIFT_REQUIRE_SLURM=1.

The shared test cluster's node declares no memory (RealMemory=1 MB), and sbatch
refuses any job that asks for more; datatrove asks for memory per CPU (2 GB by
default, 1 GB for its merge_stats jobs, not configurable), so this module starts
its own cluster from the same template with RealMemory added to the node line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from corpora.engine import SPLITS, CorpusJob, Executor, build_corpus
from corpora.prepare import PrepareSpec, corpus
from corpora.steps import TEXT_SUFFIX, read_text_file
from tests import slurm_cluster
from tests.test_corpus_engine import _doc, _near_copy

pytestmark = pytest.mark.slow

SLURM_OPTIONS = {"partition": "debug", "time": "10"}  # the test cluster's partition; defaults otherwise


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """tests/slurm_cluster.py's cluster, its node declaring 16 GB (not enforced: no cgroups, no accounting)."""
    root = tmp_path_factory.mktemp("slurm-cluster")
    template = root / "slurm.conf.template"
    text = slurm_cluster.SLURM_CONF_TEMPLATE.read_text()
    template.write_text(text.replace("CPUs={cpus} ", "CPUs={cpus} RealMemory=16384 "))
    assert template.read_text() != text, "the template's node line changed; update this fixture"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slurm_cluster, "SLURM_CONF_TEMPLATE", template)
        with slurm_cluster.slurm_or_skip(root) as cluster:
            mp.undo()
            yield cluster


@pytest.fixture
def slurm_env(slurm, monkeypatch):
    """sbatch, squeue and scancel (run by datatrove and the engine with os.environ) talk to the test cluster."""
    for key in list(os.environ):
        if key not in slurm.env:  # outer SLURM_* variables
            monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    return slurm


def _write_corpus(root: Path) -> list[str]:
    """3 files of 10 documents: an exact and a near copy, PII to scrub, one malformed line."""
    root.mkdir()
    texts = [[_doc(700 + 10 * f + i) for i in range(10)] for f in range(3)]
    # The exact copy sits in another file than its original: the task keeping the original removes nothing.
    texts[1][8] = texts[0][2]  # exact copy
    texts[2][6] = _near_copy(texts[0][5], seed=1)  # near copy in another file (3 of ~120 words changed)
    texts[1][7] += "\nWrite to jane.doe@example.org or call +44 20 7946 0958."
    for f, rows in enumerate(texts):
        (root / f"part{f}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    (root / "part1.jsonl").write_text((root / "part1.jsonl").read_text() + "{broken json\n")  # one problem
    return [str(root / "*.jsonl")]


def _spec(cache: Path, executor: Executor) -> PrepareSpec:
    return PrepareSpec(domain_sources=[], instruction_sources=[], cpt_seq_len=64, ift_seq_len=64, min_chars=20,
                       max_bad_fraction=0.5, cache_dir=str(cache), executor=executor, keep_train_text=True)


def _docs(path: Path, split: str) -> dict[str, str]:
    """file name -> rows (compressed bytes may differ, the content must not)."""
    return {file.name: list(read_text_file(file)) for file in sorted((path / "docs" / split).glob("*" + TEXT_SUFFIX))}


@pytest.mark.timeout(300)
def test_slurm_executor_prepares_the_same_corpus_as_the_local_one(slurm_env, tmp_path, tiny_tokenizer):
    sources = _write_corpus(tmp_path / "corpus")
    local = corpus(_spec(tmp_path / "local", Executor(kind="local", workers=2)), sources, tiny_tokenizer, 0.2, 0.2)
    on_slurm = corpus(_spec(tmp_path / "slurm", Executor(kind="slurm", workers=2, slurm=SLURM_OPTIONS)),
                      sources, tiny_tokenizer, 0.2, 0.2)
    a, b = Path(local["path"]), Path(on_slurm["path"])
    assert a.name == b.name and a != b  # same content key, two caches

    # The corpus exercises what the report counts: every split, both kinds of duplicate, PII, a problem.
    assert all(local["splits"][s]["documents"] > 0 for s in SPLITS), local["splits"]
    assert (local["exact_duplicates"], local["near_duplicates"]) == (1, 1)
    assert local["counts"]["replaced_email"] == 1 and len(local["problems"]) == 1

    for split in SPLITS:
        names = sorted(p.name for p in (a / "shards" / split).glob("*.ds*") if not p.name.endswith(".metadata"))
        assert names == sorted(p.name for p in (b / "shards" / split).glob("*.ds*")
                               if not p.name.endswith(".metadata"))
        # at most one shard per task (a task with no document of this split writes none)
        assert 0 < len([n for n in names if n.endswith(".ds")]) <= 3, names
        for name in names:
            assert (a / "shards" / split / name).read_bytes() == (b / "shards" / split / name).read_bytes(), \
                f"shards/{split}/{name} differs"
        assert _docs(a, split) == _docs(b, split) != {}, split
    assert on_slurm["counts"] == local["counts"]
    for key in ("exact_duplicates", "near_duplicates", "problems", "splits", "tasks"):
        assert on_slurm[key] == local[key], key
    # Really ran on Slurm: one array job log per task of the first stage.
    assert len(list((b / "work" / "logs" / "clean" / "slurm").glob("*_*.out"))) >= 3


@pytest.mark.timeout(180)
def test_a_failed_slurm_task_ends_the_wait_with_an_error(slurm_env, tmp_path):
    """The tokenising stage fails (no tokenizer.json): the wait raises, naming the stage, and cancels what is left."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": _doc(900 + i)}) + "\n" for i in range(3)))
    job = CorpusJob(files=[(str(path), str(path))], min_chars=20, tasks=1)  # near-dedup on: tokenised in "dedup"
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="first unfinished stage 'dedup'") as failed:
        build_corpus(job, tmp_path / "missing" / "tokenizer.json", "</s>", out,
                     Executor(kind="slurm", workers=1, slurm=SLURM_OPTIONS))
    assert "missing/tokenizer.json" in str(failed.value)  # the failed task's log tail is in the message
    assert (out / "work" / "logs" / "cluster" / "stats.json").exists()  # the stages before it finished
    deadline = time.monotonic() + 30  # scancel is asynchronous
    while (queued := slurm_env.run("squeue", "--noheader").stdout.strip()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert queued == "", f"jobs left after the failure:\n{queued}"
