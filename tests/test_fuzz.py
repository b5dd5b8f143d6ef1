"""Property-based fuzzing of everything that reads user input (issue 7).

    .venv/bin/pytest tests/test_fuzz.py tests/test_fuzz_config.py    # "ci" profile: 50 derandomized cases a target
    CPTIFT_FUZZ_PROFILE=deep .venv/bin/pytest tests/test_fuzz.py     # 1,000 cases a target
    .venv/bin/python tests/benchmarks/bench_fuzz.py                  # >= 10,000 cases in all, timed

Each target is given hostile input written to a fresh temporary file: random
bytes, broken UTF-8, cut or damaged gzip/zstd streams, JSON of random shapes
and types, YAML with anchors, tags and duplicate keys, malformed overrides.
Every call must end in a clean result or in one of the product's own errors
(ConfigError, DataError, TemplateError) with a one-line message; anything else
(KeyError, UnicodeDecodeError, a yaml or pyarrow error, RecursionError, ...) is
a bug. The tolerant corpus readers must also keep every good row and report
every bad one as a ``Problem``; the config must survive a save/load round trip.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import zstandard
from hypothesis import given
from hypothesis import strategies as st

from corpora.chat import IGNORE_INDEX, TemplateError, render_example
from corpora.readers import HEAD, REASONS, DataError, Problem, describe, raise_problem, read_file_documents
from corpora.sources import normalise_record, read_records, read_tasks
from fuzzing import FIELDS, JSON_VALUES, RUNS, TEXTS, document_rows, ended, ended_reading, lines_of, one_line, scratch
from corpora.checks import followed
from fuzzing import datasets_cache  # noqa: F401 (an autouse fixture: keeps the readers' caches out of ~/.cache)


def read_tolerant(path: Path, field: str) -> tuple[list[dict], list[Problem]]:
    """Read twice: with a sink (must not raise) and strictly (must raise the first problem, or agree)."""
    problems: list[Problem] = []
    docs = list(read_file_documents(path, field, problems.append))
    for doc in docs:
        assert set(doc) == {"id", "text"} and isinstance(doc["text"], str)
        doc["text"].encode("utf-8")  # a good row is one the pipeline can write: no lone surrogates
    lines = [int(d["id"].rsplit(":", 1)[1]) for d in docs if d["id"] != str(path)]
    assert lines == sorted(set(lines)) and all(n >= 1 for n in lines)
    for problem in problems:
        assert problem.file == str(path) and problem.reason in REASONS
        assert problem.line is None or (problem.line >= 1 and problem.line not in lines)
        assert problem.detail.strip() and len(describe(problem).splitlines()) == 1
    assert not (docs and any(p.line is None for p in problems)), "a whole-file problem, yet rows were read"
    try:
        assert list(read_file_documents(path, field, raise_problem)) == docs and not problems
    except DataError as exc:
        assert problems and str(exc) == describe(problems[0]) and one_line(exc)
    return docs, problems


def expected_lines(data: bytes, field: str, kind: str) -> tuple[list[tuple[int, str]], list[int]] | None:
    """What a correct reader finds in JSONL (or a .json array) content: (line, text) kept, lines reported.

    None: the whole file is reported (binary, empty, or a .json array that does not parse).
    """
    head = data[:HEAD]
    if b"\0" in head or (len(head) < HEAD and not head.strip()):
        return None
    if kind == "json" and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        try:
            rows = list(enumerate(json.loads(data.decode("utf-8-sig")), 1))
        except (ValueError, RecursionError):
            return None
    else:
        rows = []
        for n, raw in enumerate(data.split(b"\n"), 1):
            if raw.strip():
                try:
                    rows.append((n, json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8"))))
                except (ValueError, RecursionError):
                    rows.append((n, None))
    good = [(n, r[field]) for n, r in rows if isinstance(r, dict) and isinstance(r.get(field), str)
            and (r[field].isascii() or _encodes(r[field]))]
    return good, [n for n, _ in rows if n not in dict(good)]


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@given(data=st.binary(max_size=300) | TEXTS.map(lambda t: t.encode("utf-8", "surrogatepass"))
       | st.sampled_from([b"", b"  \n", b"\xef\xbb\xbf", b"a\x00b", b"\xe9t\xe9", b"x" * 9000 + b"\x00",
                          "é".encode("utf-16")]),
       suffix=st.sampled_from([".txt", ".md", ".RST"]))
def test_text_files_give_one_document_or_one_problem(data, suffix):
    RUNS["text files"] += 1
    with scratch() as folder:
        path = folder / ("doc" + suffix)
        path.write_bytes(data)
        docs, problems = read_tolerant(path, "text")
        assert len(docs) + len(problems) == 1
        if docs:
            assert docs[0]["text"] == data.decode("utf-8-sig")
    ended_reading("text files", docs, problems)


def _compress(data: bytes, kind: str, near: int) -> tuple[bytes, set[int]]:
    """``data`` gzip- or zstd-compressed (zstd: two frames, split at a line end); the frame ends' offsets."""
    if kind == "jsonl.gz":
        return gzip.compress(data), set()
    split = data.find(b"\n", near % (len(data) + 1)) + 1 or len(data)
    first = zstandard.ZstdCompressor().compress(data[:split])
    return first + zstandard.ZstdCompressor().compress(data[split:]), {len(first)}


@given(field=FIELDS, data=st.data(), kind=st.sampled_from(["jsonl", "json", "jsonl.gz", "jsonl.zst", "JSONL"]),
       damage=st.sampled_from([None, None, "cut", "flip", "append", "replace"]), at=st.integers(0, 10**6),
       junk=st.binary(min_size=1, max_size=30))
def test_jsonl_and_json_keep_every_good_row_and_report_every_bad_one(field, data, kind, damage, at, junk):
    RUNS["jsonl / json / gz / zst"] += 1
    array = st.lists(document_rows(field) | JSON_VALUES, max_size=6).map(lambda rows: json.dumps(rows).encode())
    content = data.draw(lines_of(document_rows(field)) | array if kind == "json" else lines_of(document_rows(field)))
    stored, frame_ends = _compress(content, kind, at) if kind.startswith("jsonl.") else (content, set())
    cut = at % (len(stored) + 1)
    if damage == "cut":
        stored = stored[:cut]
    elif damage == "flip" and stored:
        stored = stored[:at % len(stored)] + bytes([stored[at % len(stored)] ^ 0x5A]) + stored[at % len(stored) + 1:]
    elif damage == "append":
        stored += junk
    elif damage == "replace":
        stored = junk
    with scratch() as folder:
        path = folder / f"rows.{kind}"
        path.write_bytes(stored)
        docs, problems = read_tolerant(path, field)
    ended_reading("jsonl / json / gz / zst", docs, problems)
    expected = expected_lines(content, field, kind.lower())
    found = [(int(d["id"].rsplit(":", 1)[1]), d["text"]) for d in docs]
    if damage is None:  # intact: exactly the good rows, and every bad line reported once
        assert expected is not None or (not docs and len(problems) == 1)
        if expected is not None:
            assert found == expected[0] and [p.line for p in problems] == expected[1]
    elif damage == "cut" and expected is not None:
        assert found == expected[0][:len(found)]  # a cut stream keeps the rows before the cut...
        if len(found) < len(expected[0]) and cut not in frame_ends:
            assert problems  # ...and the rows after it are never lost in silence (unless a whole frame was)


@st.composite
def arrow_tables(draw):
    """A table whose text column is strings (with nulls), or of another type, absent, or duplicated."""
    import pyarrow as pa

    field = draw(FIELDS)
    texts = draw(st.lists(st.none() | TEXTS.filter(_encodes), max_size=12))
    kind = draw(st.sampled_from(["string", "string", "large_string", "dictionary", "int64", "null", "binary",
                                 "list", "missing", "duplicate"]))
    column = {"string": pa.array(texts, pa.string()), "large_string": pa.array(texts, pa.large_string()),
              "dictionary": pa.array(texts, pa.string()).dictionary_encode(),
              "int64": pa.array([len(t or "") for t in texts]), "null": pa.nulls(len(texts)),
              "binary": pa.array([None if t is None else t.encode() for t in texts], pa.binary()),
              "list": pa.array([[t] for t in texts])}.get(kind, pa.array(texts, pa.string()))
    names = {"missing": ["other", "id"], "duplicate": [field, field]}.get(kind, [field, "id"])
    table = pa.Table.from_arrays([column, pa.array(range(len(texts)))], names=names)
    good = kind in ("string", "large_string", "dictionary")
    return table, field, (texts if good else None)


def _damage(path: Path, how: str | None, at: int) -> None:
    data = path.read_bytes()
    if how == "cut":
        path.write_bytes(data[: at % (len(data) + 1)])
    elif how == "flip" and data:
        path.write_bytes(data[:at % len(data)] + bytes([data[at % len(data)] ^ 0xFF]) + data[at % len(data) + 1:])


def _check_table(docs: list[dict], problems: list[Problem], texts: list | None, damaged: bool) -> None:
    if damaged:
        return
    if texts is None or (not texts and problems):  # datasets cannot load a 0-row folder back: one problem
        assert texts is None or [p.reason for p in problems] == ["empty_file"]
        assert not docs and [p.line for p in problems] == [None]
    else:
        assert [d["text"] for d in docs] == [t for t in texts if t is not None]
        assert [p.line for p in problems] == [n for n, t in enumerate(texts, 1) if t is None]


@given(case=arrow_tables(), group=st.integers(1, 5), damage=st.sampled_from([None, None, "cut", "flip"]),
       at=st.integers(0, 10**6))
def test_parquet_keeps_every_good_row_and_reports_every_bad_one(case, group, damage, at):
    import pyarrow.parquet as pq

    RUNS["parquet"] += 1
    table, field, texts = case
    with scratch() as folder:
        path = folder / "rows.parquet"
        pq.write_table(table, path, row_group_size=group)
        _damage(path, damage, at)
        docs, problems = read_tolerant(path, field)
    ended_reading("parquet", docs, problems)
    _check_table(docs, problems, texts, damage is not None)


HF_FILES = ["state.json", "dataset_info.json", "data-00000-of-00001.arrow", "dataset_dict.json",
            "train/state.json", "train/dataset_info.json", "train/data-00000-of-00001.arrow"]


@given(case=arrow_tables(), splits=st.sampled_from([None, ["train"], ["test", "train"], ["a", "b"]]),
       victim=st.sampled_from(HF_FILES), damage=st.sampled_from([None, None, "cut", "flip", "json", "delete"]),
       junk=JSON_VALUES, at=st.integers(0, 10**6))
def test_datasets_folders_keep_every_good_row_and_report_every_bad_one(case, splits, victim, damage, junk, at):
    import datasets

    RUNS["datasets folders"] += 1
    table, field, texts = case
    if table.column_names[0] == table.column_names[1]:  # datasets holds no two columns of one name
        table, texts = table.rename_columns(["other", "id"]), None
    with scratch() as folder:
        path = folder / "hf"
        one = datasets.Dataset(table)
        (one if splits is None else datasets.DatasetDict({s: one for s in splits})).save_to_disk(str(path))
        target = path / victim
        damaged = damage is not None and target.exists()
        if damaged and damage == "json":
            target.write_text(json.dumps(junk))
        elif damaged and damage == "delete":
            target.unlink()
        elif damaged:
            _damage(target, damage, at)
        try:
            docs, problems = read_tolerant(path, field)
        except DataError as exc:  # a folder that lost its datasets metadata is no source at all
            assert damaged
            return ended("datasets folders", exc)
    ended_reading("datasets folders", docs, problems)
    _check_table(docs, problems, texts, damaged)


# ---------------------------------------------------------------- strict instruction and task readers

MESSAGES = st.lists(st.fixed_dictionaries({}, optional={"role": st.sampled_from(["user", "assistant", "system", 1])
                                                        | TEXTS, "content": TEXTS | JSON_VALUES}) | JSON_VALUES,
                    max_size=4)
RECORDS = st.fixed_dictionaries({}, optional={
    "messages": MESSAGES | JSON_VALUES, "instruction": TEXTS | JSON_VALUES, "response": TEXTS | JSON_VALUES,
    "input": TEXTS | JSON_VALUES, "output": TEXTS | JSON_VALUES, "prompt": TEXTS | JSON_VALUES,
    "completion": TEXTS | JSON_VALUES, "id": JSON_VALUES, "group": JSON_VALUES})
CHECKS = st.fixed_dictionaries({"type": st.sampled_from(["max_words", "json", "lowercase", "bullets", "ends_with",
                                                          "nope"]) | JSON_VALUES},
                               optional={"n": st.integers(-1, 5) | JSON_VALUES, "phrase": TEXTS | JSON_VALUES,
                                         "keys": st.lists(TEXTS, max_size=2) | JSON_VALUES})
TASKS = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["choice", "generate", "instruction", "other"]) | JSON_VALUES,
    "prompt": TEXTS | JSON_VALUES, "checks": st.lists(CHECKS | JSON_VALUES, max_size=3) | JSON_VALUES,
    "choices": st.lists(TEXTS) | JSON_VALUES, "answer": st.integers(-2, 5) | JSON_VALUES,
    "answers": st.lists(TEXTS) | JSON_VALUES})
GOOD_TASKS = st.builds(lambda p, cs, a: {"kind": "choice", "prompt": p, "choices": cs, "answer": a % len(cs)},
                       TEXTS, st.lists(TEXTS, min_size=1, max_size=4), st.integers(0, 9)) | st.builds(
    lambda p, answers: {"kind": "generate", "prompt": p, "answers": answers}, TEXTS, st.lists(TEXTS, min_size=1)
) | st.builds(lambda p, n: {"kind": "instruction", "prompt": p, "checks": [{"type": "max_words", "n": n}]},
              TEXTS, st.integers(1, 50))
CHATS = st.builds(lambda turns, last: {"messages": turns + [{"role": "assistant", "content": last}]},
                  st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                                  "content": TEXTS}), max_size=5), TEXTS)


def _write_rows(folder: Path, content: bytes, suffix: str) -> Path:
    """JSONL as it is; parquet or a datasets folder (suffix "") of its rows, or of its bytes where arrow
    cannot type the rows (a damaged file, or a datasets folder with damaged metadata)."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / f"rows{suffix}"
    if suffix == ".jsonl":
        path.write_bytes(content)
        return path
    rows = [json.loads(line) for line in content.splitlines() if line.strip()]
    try:
        table = pa.Table.from_pylist(rows)
        pq.write_table(table, path) if suffix else datasets.Dataset(table).save_to_disk(str(path))
    except (pa.ArrowException, ValueError, TypeError, OverflowError):
        if suffix:
            path.write_bytes(content)
        else:
            path.mkdir(exist_ok=True)
            (path / "dataset_info.json").write_bytes(content)
    return path


def _strict_case(rows: st.SearchStrategy) -> st.SearchStrategy:
    as_jsonl = lines_of(rows)
    as_table = st.lists(rows, max_size=4).map(lambda rs: b"\n".join(json.dumps(r).encode() for r in rs))
    return st.tuples(as_jsonl, st.just(".jsonl")) | st.tuples(as_table, st.sampled_from([".parquet", ""]))


def read_strictly(target: str, case: tuple[bytes, str], read, noun: str) -> list:
    """``read(path)`` of the case's file: its rows, or ``[]`` after a DataError naming the file."""
    RUNS[target] += 1
    with scratch() as folder:
        path = _write_rows(folder, *case)
        try:
            rows = read(path)
        except DataError as exc:
            assert str(path) in str(exc)
            ended(target, exc)
            return []
    ended(target, f"{'some' if rows else 'no'} {noun}")
    return rows


@given(case=_strict_case(RECORDS | CHATS))
def test_instruction_reader_returns_records_or_a_data_error(case):
    records = read_strictly("instruction records", case, lambda path: list(read_records([str(path)])), "records")
    for rec in records:
        assert rec["messages"] and rec["messages"][-1]["role"] == "assistant"
        assert all(isinstance(m["content"], str) and _encodes(m["content"]) for m in rec["messages"])
        assert isinstance(rec["id"], str) and isinstance(rec["group"], str)


@given(case=_strict_case(TASKS | GOOD_TASKS))
def test_task_reader_returns_items_or_a_data_error(case):
    for item in read_strictly("task items", case, lambda path: read_tasks(str(path)), "items"):
        assert item["kind"] in ("choice", "generate", "instruction") and isinstance(item["prompt"], str)
        if item["kind"] == "instruction":  # every check the reader lets through can be scored
            assert item["checks"] and all(isinstance(followed(reply, item["checks"]), bool)
                                          for reply in ("", "- a\n- b", '{"answer": 1}', item["prompt"]))
            continue
        texts = item["choices"] if item["kind"] == "choice" else item["answers"]
        assert texts and all(isinstance(t, str) and _encodes(t) for t in texts + [item["prompt"]])
        assert item["kind"] == "generate" or type(item["answer"]) is int and 0 <= item["answer"] < len(texts)


@given(row=RECORDS | CHATS)
def test_chat_rendering_masks_or_raises_a_product_error(row, tiny_tokenizer):
    RUNS["chat rendering"] += 1
    try:
        record = normalise_record(row, "rows.jsonl:1")
    except DataError as exc:
        assert str(exc).startswith("rows.jsonl:1: ")
        return ended("chat rendering", exc)
    try:
        ids, labels = render_example(tiny_tokenizer, record["messages"])
    except TemplateError as exc:
        return ended("chat rendering", exc)
    assert len(ids) == len(labels) and all(lab in (IGNORE_INDEX, tok) for tok, lab in zip(ids, labels))
    assert any(lab != IGNORE_INDEX for lab in labels), "the reply carries no loss"
    ended("chat rendering", "rendered")

