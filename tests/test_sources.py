"""Corpus readers take corpora as they come: every good row kept, every problem reported with file and line."""

from __future__ import annotations

import gzip
import inspect
import itertools
import json
import os
import random
import tracemalloc
from pathlib import Path

import pytest

from corpora.sources import DataError, Problem, expand, read_documents, read_file_documents, read_records


def _jsonl(*rows: object) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def _cut_gzip(path: Path, good: list[str]) -> None:
    """A .jsonl.gz whose stream is cut short just after the ``good`` rows."""
    with path.open("wb") as raw:
        gz = gzip.GzipFile(fileobj=raw, mode="wb")
        gz.write(_jsonl(*({"text": t} for t in good)))
        gz.flush()  # a sync flush: everything so far can be decoded from the bytes before `cut`
        cut = raw.tell()
        rng = random.Random(0)  # random text does not compress, so the cut lands well inside the next row
        gz.write(_jsonl({"text": "%x" % rng.getrandbits(16000)}))
        gz.close()
    path.write_bytes(path.read_bytes()[: cut + 20])


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "corpus"
    (root / "notes").mkdir(parents=True)
    (root / "a_rows.jsonl").write_bytes(
        _jsonl({"text": "row one"}) + b'{not json\n' + _jsonl({"body": "no text", "id": 7})
        + '{"text": "café"}\n'.encode("latin-1") + b"\n" + _jsonl({"text": "after the bad byte"}, [1, 2])
        + _jsonl({"text": ""}))  # no trailing newline trouble, blank line 5 skipped silently
    (root / "b_latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (root / "c_image.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (root / "d_empty.jsonl").write_bytes(b"")
    (root / "e_blank.md").write_text("  \n\n")
    (root / "f_rows.jsonl.gz").write_bytes(gzip.compress(_jsonl({"text": "gz one"}, {"text": "gz two"})))
    _cut_gzip(root / "g_cut.jsonl.gz", ["cut one", "cut two", "cut three"])
    pq.write_table(pa.table({"id": [1, 2, 3], "text": ["pq one", None, "pq three"]}), root / "h_table.parquet")
    (root / "i_array.json").write_text(json.dumps([{"text": "arr one"}, "loose", {"text": "arr three"}], indent=2))
    datasets.Dataset.from_dict({"text": ["hf one", "hf two"]}).save_to_disk(str(root / "j_hf"))
    os.symlink(root / "missing-target.jsonl", root / "m_gone.jsonl")  # listed, but cannot be opened
    (root / "notes" / "n.md").write_text("# Notes\n\nA whole file is one document.\n")
    (root / "readme.csv").write_text("not,a,document\n")  # unsupported in a folder: ignored
    return root


def test_every_good_row_kept_every_problem_reported(corpus):
    problems: list[Problem] = []
    docs = list(read_documents([str(corpus)], on_problem=problems.append))
    c = str(corpus)
    assert [(d["id"], d["text"]) for d in docs] == [
        (f"{c}/a_rows.jsonl:1", "row one"),
        (f"{c}/a_rows.jsonl:6", "after the bad byte"),  # the rows after a non-UTF-8 line are kept
        (f"{c}/a_rows.jsonl:8", ""),  # empty text is the length filter's business, not a problem
        (f"{c}/f_rows.jsonl.gz:1", "gz one"),
        (f"{c}/f_rows.jsonl.gz:2", "gz two"),
        (f"{c}/g_cut.jsonl.gz:1", "cut one"),
        (f"{c}/g_cut.jsonl.gz:2", "cut two"),
        (f"{c}/g_cut.jsonl.gz:3", "cut three"),
        (f"{c}/h_table.parquet:1", "pq one"),
        (f"{c}/h_table.parquet:3", "pq three"),
        (f"{c}/i_array.json:1", "arr one"),
        (f"{c}/i_array.json:3", "arr three"),
        (f"{c}/j_hf:1", "hf one"),
        (f"{c}/j_hf:2", "hf two"),
        (f"{c}/notes/n.md", "# Notes\n\nA whole file is one document.\n"),
    ]
    assert [(p.file, p.line, p.reason) for p in problems] == [
        (f"{c}/a_rows.jsonl", 2, "invalid_json"),
        (f"{c}/a_rows.jsonl", 3, "missing_text_field"),
        (f"{c}/a_rows.jsonl", 4, "not_utf8"),
        (f"{c}/a_rows.jsonl", 7, "not_an_object"),
        (f"{c}/b_latin1.txt", None, "not_utf8"),
        (f"{c}/c_image.jsonl", None, "binary_file"),
        (f"{c}/d_empty.jsonl", None, "empty_file"),
        (f"{c}/e_blank.md", None, "empty_file"),
        (f"{c}/g_cut.jsonl.gz", 4, "corrupt_file"),
        (f"{c}/h_table.parquet", 2, "missing_text_field"),
        (f"{c}/i_array.json", 2, "not_an_object"),
        (f"{c}/m_gone.jsonl", None, "unreadable"),
    ]
    detail = {(Path(p.file).name, p.line): p.detail for p in problems}
    assert detail["a_rows.jsonl", 3] == "field 'text' missing (row keys: ['body', 'id'])"
    assert "iconv" in detail["b_latin1.txt", None] and "iconv" in detail["a_rows.jsonl", 4]


def test_without_on_problem_the_first_problem_raises_naming_file_and_line(corpus):
    docs = read_documents([str(corpus)])
    assert next(docs)["text"] == "row one"
    with pytest.raises(DataError, match=rf"^{corpus}/a_rows.jsonl:2: invalid JSON .*; each line must be one JSON"):
        next(docs)
    with pytest.raises(DataError, match=rf"^{corpus}/b_latin1.txt: not UTF-8 .*iconv"):
        list(read_documents([str(corpus / "b_latin1.txt")]))
    with pytest.raises(DataError, match=rf"^{corpus}/h_table.parquet:2: field 'text' is null"):
        list(read_documents([str(corpus / "h_table.parquet")]))


def test_a_folder_lists_document_files_and_datasets_folders_only(corpus):
    names = [p.relative_to(corpus).as_posix() for p in expand(str(corpus))]
    assert "j_hf" in names and not any(n.startswith("j_hf/") for n in names)  # its .json files are metadata
    assert "readme.csv" not in names and names == sorted(names, key=lambda n: Path(n).parts)
    with pytest.raises(DataError, match="unsupported file type"):
        list(read_file_documents(corpus / "readme.csv", "text", print))


def test_json_lines_in_a_json_file_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(b"\xef\xbb\xbf" + _jsonl({"text": "one"}, {"text": "two"}))
    problems: list[Problem] = []
    docs = list(read_file_documents(path, "text", problems.append))
    assert [d["text"] for d in docs] == ["one", "two"] and problems == []


def test_zstd_rows_and_a_cut_zstd_stream(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    rng = random.Random(0)
    rows = [{"text": f"row {i} " + "%x" % rng.getrandbits(512)} for i in range(400)]
    frame = zstandard.ZstdCompressor().compressobj()
    data = frame.compress(_jsonl(*rows[:300])) + frame.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    cut = len(data)  # everything so far can be decoded from the bytes before the cut
    data += frame.compress(_jsonl(*rows[300:])) + frame.flush()
    (tmp_path / "a.jsonl.zst").write_bytes(data + zstandard.ZstdCompressor().compress(_jsonl({"text": "frame 2"})))
    (tmp_path / "b.jsonl.zst").write_bytes(data[: cut + 20])
    problems: list[Problem] = []
    docs = list(read_documents([str(tmp_path)], on_problem=problems.append))
    texts = [r["text"] for r in rows]
    assert [d["text"] for d in docs] == texts + ["frame 2"] + texts[:300]
    assert docs[-1]["id"] == f"{tmp_path / 'b.jsonl.zst'}:300"
    # The cut is reported as such, on the line it cut, not as a malformed row.
    assert [(p.file, p.line, p.reason) for p in problems] == [(str(tmp_path / "b.jsonl.zst"), 301, "corrupt_file")]


def test_a_missing_or_non_text_column_is_one_problem_for_the_file(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"] * 5}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": [1, 2, 3]}), tmp_path / "b.parquet")
    (tmp_path / "c.parquet").write_bytes(b"PAR1 this is not really parquet")
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": ["held out"]}),
                          "train": datasets.Dataset.from_dict({"body": ["no text"]})}).save_to_disk(
        str(tmp_path / "d_hf"))
    problems: list[Problem] = []
    assert list(read_documents([str(tmp_path)], on_problem=problems.append)) == []
    assert [(Path(p.file).name, p.line, p.reason, p.detail) for p in problems] == [
        ("a.parquet", None, "missing_text_field", "field 'text' missing (columns: ['body'])"),
        ("b.parquet", None, "missing_text_field", "field 'text' is a column of int64, not text"),
        ("c.parquet", None, "corrupt_file", problems[2].detail),
        ("d_hf", None, "missing_text_field", "field 'text' missing (columns: ['body'])"),  # the train split
    ]


def test_instruction_readers_stay_strict(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_bytes(_jsonl({"instruction": "q", "response": "a"}) + b"{broken\n")
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        list(read_records([str(path)]))


def _offset_of_open_file(path: Path) -> int | None:
    """The OS file offset of this process's open handle on ``path`` (Linux /proc), None when not open."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                info = Path(f"/proc/self/fdinfo/{fd}").read_text()
                return int(info.split("pos:")[1].split()[0])
        except OSError:
            continue
    return None


@pytest.mark.skipif(not Path("/proc/self/fdinfo").exists(), reason="needs Linux /proc")
def test_reading_streams_and_memory_stays_flat(tmp_path):
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        fh.writelines(f'{{"text": "document number {i:07d} of the big file"}}\n' for i in range(200_000))
    size = path.stat().st_size
    problems: list[Problem] = []
    docs = read_documents([str(path)], on_problem=problems.append)
    assert inspect.isgenerator(docs)
    first = list(itertools.islice(docs, 10))
    assert [d["id"] for d in first] == [f"{path}:{i}" for i in range(1, 11)]
    offset = _offset_of_open_file(path)
    assert offset is not None and offset < size // 20  # only a buffer's worth has been read
    docs.close()
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_documents([str(path)], on_problem=problems.append))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 200_000 and problems == [] and peak < size // 20
