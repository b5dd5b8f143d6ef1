"""Tolerant, streaming readers of CPT corpus files (domain and replay documents).

Corpora come as they come. Tools that decode a whole file as text drop every
later row after one bad byte; these readers decode and parse row by row, hand
each problem to ``on_problem`` as a ``Problem`` (file, line, reason, detail),
skip it and go on, so every good row of every file is yielded, in file order,
and memory does not grow with the file.

Files, by name (case-insensitive):
- ``.txt`` ``.md`` ``.rst``: one document per file;
- ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` (needs ``zstandard``): one JSON object a line;
- ``.json``: JSONL content, or a JSON array of objects. An array is loaded
  whole, so use JSONL (the streaming form) for large files;
- ``.parquet``: the text column only, in batches;
- a folder written by ``datasets.save_to_disk``: memory-mapped, row by row.

    for doc in read_file_documents(Path("dump.jsonl"), "text", problems.append): ...
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".rst"}
ROW_KINDS = ("jsonl.gz", "jsonl.zst", "jsonl", "json", "parquet")  # longest first: "x.jsonl.gz" is not ".jsonl"
HEAD = 8192  # bytes looked at for NUL, as git and grep do to tell binary files from text
BATCH = 1024  # parquet / HF rows per batch: memory stays flat whatever the file size
MAX_KEYS = 20  # keys or columns named in a detail, so it stays one line

REASONS = ("invalid_json", "not_an_object", "missing_text_field", "not_utf8", "binary_file", "empty_file",
           "corrupt_file", "unreadable")
ADVICE = {  # what to do, for strict callers that stop at the first problem
    "invalid_json": "each line must be one JSON object",
    "not_an_object": "each line must be one JSON object",
    "missing_text_field": "set data.domain.text_field to the field that holds the text",
    "binary_file": "remove it from the sources",
    "empty_file": "remove it from the sources",
    "corrupt_file": "re-create or re-download it",
    "unreadable": "check that it exists and its permissions",
}
ICONV = "convert it to UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT"


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


@dataclass(frozen=True)
class Problem:
    file: str  # the file's path as given
    line: int | None  # 1-based line (JSONL) or row (parquet / HF / JSON array); None: the whole file
    reason: str  # one of REASONS
    detail: str  # one short human line


ProblemSink = Callable[[Problem], None]


def describe(problem: Problem) -> str:
    """``file:line: detail; what to do`` in one line."""
    where = problem.file if problem.line is None else f"{problem.file}:{problem.line}"
    advice = ADVICE.get(problem.reason)
    return f"{where}: {problem.detail}" + (f"; {advice}" if advice else "")


def raise_problem(problem: Problem) -> None:
    """The strict sink: stop at the first problem."""
    raise DataError(describe(problem))


def is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def document_kind(path: Path) -> str | None:
    """``"hf"``, ``"text"``, one of ``ROW_KINDS``, or None for a file that holds no documents."""
    if is_hf_dataset(path):
        return "hf"
    if path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    name = path.name.lower()
    return next((kind for kind in ROW_KINDS if name.endswith("." + kind)), None)


def read_file_documents(path: Path, text_field: str, on_problem: ProblemSink) -> Iterator[dict]:
    """Yield ``{"id": "<path>:<line>", "text"}`` (``"<path>"`` for a text file) for every good row.

    Problems go to ``on_problem`` and reading goes on; only a file of no
    supported type raises ``DataError`` (a mistake in the sources, not the data).
    """
    kind = document_kind(path)
    bad = functools.partial(_report, on_problem, str(path))
    if kind == "text":
        yield from _text_document(path, bad)
    elif kind == "parquet":
        yield from _parquet_documents(path, text_field, bad)
    elif kind == "hf":
        yield from _hf_documents(path, text_field, bad)
    elif kind is not None:
        yield from _line_documents(path, kind, text_field, bad)
    else:
        raise DataError(f"{path}: unsupported file type; use .txt, .md, .rst, .jsonl, .jsonl.gz, .jsonl.zst, "
                        f".json, .parquet or a datasets.save_to_disk folder")


def _report(on_problem: ProblemSink, file: str, line: int | None, reason: str, detail: str) -> None:
    on_problem(Problem(file, line, reason, detail))


def brief(exc: object, limit: int = 120) -> str:
    """A library's error message on one line (arrow's and zstd's can span several), cut to ``limit``."""
    return " ".join(str(exc).split())[:limit]


def _text_document(path: Path, bad) -> Iterator[dict]:
    try:
        with path.open("rb") as fh:
            data = fh.read()  # one read: the checks below look at these bytes, not the file again
    except OSError as exc:
        return bad(None, "unreadable", f"cannot read: {exc.strerror or exc}")
    if b"\0" in data[:HEAD]:
        return bad(None, "binary_file", f"NUL bytes in the first {HEAD // 1024} KiB: a binary file, not text")
    try:
        text = data.decode("utf-8-sig")  # -sig: a byte-order mark is not part of the text
    except UnicodeDecodeError as exc:
        return bad(None, "not_utf8", f"not UTF-8 ({exc.reason} at byte {exc.start}); {ICONV}")
    del data
    if not text.strip():
        return bad(None, "empty_file", "the file is empty or only whitespace")
    yield {"id": str(path), "text": text}


def _line_documents(path: Path, kind: str, text_field: str, bad) -> Iterator[dict]:
    """JSONL (plain or compressed) or ``.json``, read in binary and decoded line by line."""
    decompress = _decompressor(kind, bad)
    if decompress is None:
        return
    try:
        fh = path.open("rb")
    except OSError as exc:
        return bad(None, "unreadable", f"cannot open: {exc.strerror or exc}")
    with fh:
        head = _head(fh, decompress)
        if head is not None and b"\0" in head:
            return bad(None, "binary_file", f"NUL bytes in the first {HEAD // 1024} KiB: a binary file, not JSON")
        if head is not None and len(head) < HEAD and not head.strip():
            return bad(None, "empty_file", "the file is empty or only whitespace")
        if kind == "json" and head is not None and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            yield from _array_documents(fh, str(path), text_field, bad)
        else:
            yield from _jsonl_documents(decompress(fh), str(path), text_field, bad)


def _decompressor(kind: str, bad) -> Callable[[io.BufferedIOBase], io.BufferedIOBase] | None:
    if kind == "jsonl.gz":
        return lambda fh: gzip.GzipFile(fileobj=fh, mode="rb")
    if kind != "jsonl.zst":
        return lambda fh: fh
    try:
        import zstandard
    except ImportError:
        return bad(None, "unreadable", "reading .zst needs the zstandard package: pip install zstandard")
    return lambda fh: io.BufferedReader(_ZstdReader(fh, zstandard.ZstdDecompressor()), 1 << 16)


class _ZstdReader(io.RawIOBase):
    """zstd content that raises EOFError where the stream is cut short, as gzip does.

    zstandard's own ``stream_reader`` just ends there, and the cut line would
    look like a bad row. Frames may follow one another (``zstd``, ``pzstd``).
    """

    def __init__(self, fh, decompressor):
        self._fh, self._decompressor = fh, decompressor
        self._obj, self._rest, self._in_frame = decompressor.decompressobj(), b"", False
        self._out, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        while self._pos == len(self._out):
            chunk, self._rest = self._rest or self._fh.read(1 << 14), b""
            if not chunk:
                if self._in_frame:
                    raise EOFError("zstd stream ended in the middle of a frame")
                return 0
            self._out, self._pos = self._obj.decompress(chunk), 0
            self._in_frame = not self._obj.eof
            if self._obj.eof:  # the next frame, if any, starts in what this one left over
                self._rest, self._obj = self._obj.unused_data, self._decompressor.decompressobj()
        n = min(len(buf), len(self._out) - self._pos)
        buf[:n] = memoryview(self._out)[self._pos:self._pos + n]
        self._pos += n
        return n


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What a broken or truncated (compressed) stream raises while being read."""
    try:
        from zstandard import ZstdError
    except ImportError:
        return OSError, EOFError, zlib.error
    return OSError, EOFError, zlib.error, ZstdError


def _head(fh, decompress) -> bytes | None:
    """The first ``HEAD`` bytes of the content; None when the stream breaks (the line reader reports where)."""
    try:
        return decompress(fh).read(HEAD)
    except _stream_errors():
        return None
    finally:
        fh.seek(0)


def _jsonl_documents(stream, where: str, text_field: str, bad) -> Iterator[dict]:
    def broken(exc: BaseException, lines_read: int) -> None:
        bad(lines_read + 1, "corrupt_file", f"the stream breaks here ({brief(exc)}); the rows before it were kept")

    with stream:
        for lineno, raw in _guarded(enumerate(stream, 1), _stream_errors(), broken):
            if not raw.strip():
                continue  # blank lines separate nothing in JSONL: not a problem
            row = _parse_line(raw, lineno, bad)
            text = None if row is None else _text_of(row, text_field, lineno, bad)
            if text is not None:
                yield {"id": f"{where}:{lineno}", "text": text}


def _guarded(items: Iterable, errors: tuple, on_error: Callable[[BaseException, int], None]) -> Iterator:
    """Yield ``items``; an error while producing the next one goes to ``on_error(exc, n_yielded)`` and ends it.

    Only ``next()`` is guarded, so an exception from the consumer or from
    ``on_problem`` (a strict sink's DataError is a ValueError) is never taken
    for a broken file.
    """
    count, it = 0, iter(items)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except errors as exc:
            return on_error(exc, count)
        yield item
        count += 1


def _parse_line(raw: bytes, lineno: int, bad) -> dict | None:
    try:
        line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")  # -sig: a byte-order mark opens line 1
    except UnicodeDecodeError as exc:
        return bad(lineno, "not_utf8", f"line is not UTF-8 ({exc.reason} at byte {exc.start}); {ICONV}")
    try:
        row = json.loads(line)
    except (ValueError, RecursionError) as exc:  # ValueError: also the int-digits limit; Recursion: deep nesting
        return bad(lineno, "invalid_json", f"invalid JSON ({brief(getattr(exc, 'msg', exc), 80)})")
    if not isinstance(row, dict):
        return bad(lineno, "not_an_object", f"expected a JSON object, got {_json_type(row)}")
    return row


def _text_of(row: dict, text_field: str, line: int, bad) -> str | None:
    text = row.get(text_field)
    if isinstance(text, str) and (where := lone_surrogate(text)) is not None:
        return bad(line, "not_utf8", f"field {text_field!r} holds a lone surrogate ({where}), not valid "
                                     f"Unicode: fix the \\u escape or drop the row")
    if isinstance(text, str):
        return text  # empty text is no problem here: the length filter drops it and counts it
    if text_field not in row:
        return bad(line, "missing_text_field", f"field {text_field!r} missing (row keys: {sorted(row)[:MAX_KEYS]})")
    return bad(line, "missing_text_field", f"field {text_field!r} is {_json_type(text)}, not a string")


def lone_surrogate(text: str) -> str | None:
    """Where ``text`` holds half a surrogate pair (JSON can escape one: ``"\\ud800"``); None when it does not.

    Such a string cannot be written or hashed as UTF-8 later in the pipeline.
    """
    if text.isascii():  # O(1) in CPython: most documents end here
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"\\u{ord(text[exc.start]):04x} at character {exc.start + 1}"
    return None


def _json_type(value: object) -> str:
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", str: "a string",
             list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _array_documents(fh, where: str, text_field: str, bad) -> Iterator[dict]:
    """A ``.json`` file holding a JSON array: loaded whole (JSONL is the streaming form); line = element number."""
    try:
        rows = json.loads(fh.read().decode("utf-8-sig"))
    except OSError as exc:
        return bad(None, "unreadable", f"cannot read: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        return bad(None, "not_utf8", f"not UTF-8 ({exc.reason} at byte {exc.start}); {ICONV}")
    except (ValueError, RecursionError) as exc:  # line: the text line where parsing failed
        return bad(getattr(exc, "lineno", None), "invalid_json", f"invalid JSON ({brief(getattr(exc, 'msg', exc))})")
    for row_no, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            bad(row_no, "not_an_object", f"array element is {_json_type(row)}, not a JSON object")
        elif (text := _text_of(row, text_field, row_no, bad)) is not None:
            yield {"id": f"{where}:{row_no}", "text": text}


def _parquet_documents(path: Path, text_field: str, bad) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        path.open("rb").close()  # tells "cannot open" from "not a parquet file", which arrow reports alike
    except OSError as exc:
        return bad(None, "unreadable", f"cannot open: {exc.strerror or exc}")
    try:
        parquet = pq.ParquetFile(str(path))
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError, ValueError) as exc:
        return bad(None, "corrupt_file", f"not a readable parquet file ({brief(exc)})")
    if (problem := _column_problem(schema, text_field)) is not None:
        return bad(None, "missing_text_field", problem)
    batches = parquet.iter_batches(batch_size=BATCH, columns=[text_field])
    values = (value for batch in batches for value in batch.column(0).to_pylist())
    yield from _value_documents(values, (pa.ArrowException, OSError, ValueError), str(path), text_field, bad)


def _hf_documents(path: Path, text_field: str, bad) -> Iterator[dict]:
    import datasets
    import pyarrow as pa

    errors = (pa.ArrowException, OSError, ValueError, KeyError)
    try:
        table = datasets.load_from_disk(str(path))  # memory-mapped: nothing is loaded yet
        if isinstance(table, datasets.DatasetDict):
            table = table["train"] if "train" in table else table[next(iter(table))]
        schema = table.features.arrow_schema
    except IndexError:  # datasets saves a 0-row dataset with no data file, then cannot load it back
        return bad(None, "empty_file", "the datasets folder holds no rows (it lists no data files)")
    except (*errors, StopIteration, TypeError, AttributeError) as exc:  # Type/Attribute: metadata JSON of wrong shape
        reason = "unreadable" if isinstance(exc, PermissionError) else "corrupt_file"
        return bad(None, reason, f"not a readable datasets folder ({brief(exc)})")
    if (problem := _column_problem(schema, text_field)) is not None:
        return bad(None, "missing_text_field", problem)
    batches = table.select_columns([text_field]).with_format("arrow").iter(batch_size=BATCH)
    values = (value for batch in batches for value in _validated(batch.column(0)).to_pylist())
    yield from _value_documents(values, errors, str(path), text_field, bad)


def _validated(column):
    """``column`` once arrow has checked it: a damaged file can hold string offsets past its end, and reading
    those from the memory map is a SIGBUS that no ``except`` catches."""
    column.validate(full=True)
    return column


def _column_problem(schema, text_field: str) -> str | None:
    """Why a table's ``text_field`` column cannot hold the documents; None when it can."""
    import pyarrow as pa

    if text_field not in schema.names:
        return f"field {text_field!r} missing (columns: {schema.names[:MAX_KEYS]})"
    if (copies := schema.names.count(text_field)) > 1:
        return f"{copies} columns are named {text_field!r}: rename all but the text column"
    kind = schema.field(text_field).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if str(kind) not in ("string", "large_string", "string_view"):
        return f"field {text_field!r} is a column of {kind}, not text"
    return None


def _value_documents(values: Iterable, errors: tuple, where: str, text_field: str, bad) -> Iterator[dict]:
    def broken(exc: BaseException, rows_read: int) -> None:
        bad(rows_read + 1, "corrupt_file", f"reading breaks here ({brief(exc)}); the rows before it were kept")

    for row_no, text in enumerate(_guarded(values, errors, broken), 1):
        if isinstance(text, str):
            yield {"id": f"{where}:{row_no}", "text": text}
        else:
            bad(row_no, "missing_text_field", f"field {text_field!r} is null")
