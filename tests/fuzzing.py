"""Shared pieces of the fuzz tests (tests/test_fuzz.py, tests/test_fuzz_config.py): hypothesis
profiles, the per-target case counters that tests/benchmarks/bench_fuzz.py prints, and the
building blocks of hostile input."""

from __future__ import annotations

import collections
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st

# deadline=None: file and arrow I/O time varies with the machine, not with the input.
settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True, database=None)
settings.register_profile("deep", max_examples=1000, deadline=None, derandomize=True, database=None)
settings.load_profile(os.environ.get("CPTIFT_FUZZ_PROFILE", "ci"))

RUNS: collections.Counter[str] = collections.Counter()  # cases run per target (the benchmark prints them)
OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()  # (target, how each case ended)
TINY_YAML = (Path(__file__).parents[1] / "configs" / "tiny.yaml").read_text()


@pytest.fixture(scope="module", autouse=True)
def datasets_cache(tmp_path_factory):
    """The strict parquet reader's load_dataset caches every file it reads: keep that out of ~/.cache."""
    import datasets

    old, datasets.config.HF_DATASETS_CACHE = datasets.config.HF_DATASETS_CACHE, tmp_path_factory.mktemp("hf")
    yield
    datasets.config.HF_DATASETS_CACHE = old


@contextmanager
def scratch():
    """A fresh folder per example (pytest's tmp_path is per test, shared by all its examples)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as folder:
        yield Path(folder)


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message.strip() and len(message.splitlines()) == 1, f"not one line: {message[:300]!r}"
    return message


def ended(target: str, how: str | BaseException) -> None:
    """Count how a case ended: a clean result, or one of the product's errors (whose message is one line)."""
    if isinstance(how, BaseException):
        one_line(how)
    OUTCOMES[target, how if isinstance(how, str) else type(how).__name__] += 1


def ended_reading(target: str, docs: list, problems: list) -> None:
    ended(target, ("rows" if docs else "no rows") + (" + problems" if problems else ""))


# ---------------------------------------------------------------- building blocks

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # lone surrogates included
SPECIAL_TEXT = st.sampled_from(["", " ", "\n", "\x00", "\ufeff", "\u2028", "<|im_end|>", "<|im_start|>user\n",
                                "{{ messages }}", "{% endfor %}", "\ud800", "x" * 20_000, "é" * 3000])
TEXTS = ANY_TEXT | SPECIAL_TEXT
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | TEXTS
           | st.integers(min_value=2**63, max_value=2**70))
JSON_VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(TEXTS, kids, max_size=4),
                           max_leaves=10)
FIELDS = st.sampled_from(["text", "text", "text", "body", "", "tëxt", "a.b"])
HOSTILE_LINES = [b"[" * 5000, b'{"text": ' * 3000, b"1" * 5000, b'{"text": 1' + b"0" * 5000 + b"}",
                 b'{"text": "\\ud800"}', b'{"text": "a\\udc00b"}', b"\xff\xfe{}", b"\xef\xbb\xbf{}", b"\x00",
                 b"{", b'{"text": NaN}', b'{"text": 1e999}', b"null", b'"text"', b"\x1b[31m", b"\r", b" \t "]


def dumps(value: object, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def lines_of(rows: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    """JSONL content: good rows, rows of the wrong shape, random bytes and hostile lines, in any mix."""
    line = (st.tuples(rows, st.booleans()).map(lambda a: dumps(*a)) | st.binary(max_size=40)
            | st.sampled_from(HOSTILE_LINES) | st.tuples(JSON_VALUES, st.booleans()).map(lambda a: dumps(*a)))
    return st.builds(lambda ls, sep, bom, tail: bom + sep.join(ls) + tail, st.lists(line, max_size=8),
                     st.sampled_from([b"\n", b"\r\n", b"\n\n"]), st.sampled_from([b"", b"\xef\xbb\xbf"]),
                     st.sampled_from([b"", b"\n"]))


def document_rows(field: str) -> st.SearchStrategy[dict]:
    return st.dictionaries(st.sampled_from([field, "id", "meta"]), TEXTS | JSON_VALUES, max_size=3)
