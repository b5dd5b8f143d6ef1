"""Read documents, instruction records and eval items from user sources.

A source is a file, a folder, a glob, or ``builtin:<name>`` (see
``corpora.builtin``). A folder is searched recursively for supported files;
a folder written by ``datasets.save_to_disk`` is one source, wherever it is.

Two kinds of reader:
- documents (CPT domain and replay text) are read by ``corpora.readers``:
  streaming and tolerant. With ``on_problem`` every problem is handed over as
  a ``Problem`` (file, line, reason) and reading goes on; without it the first
  problem raises ``DataError``. Formats: ``.txt``/``.md``/``.rst`` (one
  document per file), ``.jsonl`` (also ``.gz``/``.zst``), ``.json``,
  ``.parquet``, datasets folders.
- instruction records and eval items are strict: a bad row raises
  ``DataError`` with the file, the line and the field, and what to do (a
  broken training example or eval item must be fixed, not skipped). They
  read ``.jsonl``, ``.parquet`` and datasets folders.

    docs = read_documents(["notes/*.md", "dump.jsonl"], text_field="text", on_problem=problems.append)
"""

from __future__ import annotations

import glob
import inspect
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from corpora.builtin import builtin_documents, builtin_records, builtin_tasks
from corpora.checks import CHECKS
from corpora.readers import (ICONV, TEXT_SUFFIXES, DataError, Problem, ProblemSink, brief, describe, document_kind,
                             is_hf_dataset, lone_surrogate, raise_problem, read_file_documents)

__all__ = ["BUILTIN", "DataError", "Problem", "ProblemSink", "describe", "expand", "read_documents",
           "read_file_documents", "read_records", "read_tasks", "normalise_record", "check_task_item",
           "CHECK_PARAMETERS"]

ROW_SUFFIXES = {".jsonl", ".parquet"}
RECORD_SUFFIXES = TEXT_SUFFIXES | ROW_SUFFIXES  # what the strict readers take from a folder, as before
BUILTIN = "builtin:"
_is_hf_dataset = is_hf_dataset  # the old private name


def expand(source: str, suffixes: set[str] | None = None) -> list[Path]:
    """The files (and datasets folders) a source names, sorted so that reading is deterministic.

    A folder yields the document files in it (``corpora.readers.document_kind``),
    or, with ``suffixes``, the files with those suffixes. A file named outright
    is returned whatever its type.
    """
    if any(ch in source for ch in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(source, recursive=True))]
    else:
        paths = [Path(source)]
    wanted = (lambda p: document_kind(p) is not None) if suffixes is None else (lambda p: p.suffix in suffixes)
    files: list[Path] = []
    for path in paths:
        if path.is_dir() and not is_hf_dataset(path):
            files += _search(path, wanted)
        elif path.exists():
            files.append(path)
    if not files:
        raise DataError(f"source {source!r}: no such file, or no .txt/.md/.rst/.jsonl/.jsonl.gz/.jsonl.zst/"
                        f".json/.parquet files or datasets folders in it")
    return files


def _search(root: Path, wanted: Callable[[Path], bool]) -> list[Path]:
    """``wanted`` files under ``root``; a datasets folder is one entry, never searched (its .json are metadata)."""
    found = []
    for folder, dirs, names in os.walk(root):  # like rglob: symlinked folders are not followed
        here = Path(folder)
        for sub in [d for d in dirs if is_hf_dataset(here / d)]:
            dirs.remove(sub)
            if wanted(here / sub):
                found.append(here / sub)
        found += [here / name for name in names if wanted(here / name)]
    return sorted(found)


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) pairs of a JSONL/parquet file or HF dataset folder."""
    if path.suffix == ".jsonl":
        with path.open("rb") as fh:  # decoded line by line, so that a bad byte is reported with its line
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield lineno, _parse_json(line, path, lineno)
        return
    if path.suffix != ".parquet" and not is_hf_dataset(path):
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .txt, .md, .jsonl or .parquet")
    import pyarrow as pa

    rows, row_no = iter(_load_table(path)), 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except (pa.ArrowException, ValueError, TypeError) as exc:  # e.g. a struct with two fields of one name
            raise DataError(f"{path}:{row_no + 1}: cannot read this row ({brief(exc)}); re-create the file") from None
        row_no += 1
        yield row_no, row


def _load_table(path: Path):
    """A parquet file or a datasets folder as a ``datasets.Dataset`` (no rows: ``[]``); DataError if unreadable."""
    import datasets  # imported lazily: it is slow to import
    import pyarrow as pa
    from datasets.exceptions import DatasetsError

    what = "parquet file" if path.suffix == ".parquet" else "datasets folder"
    try:
        if path.suffix == ".parquet":
            return datasets.load_dataset("parquet", data_files=str(path), split="train")
        table = datasets.load_from_disk(str(path))
        if isinstance(table, datasets.DatasetDict):
            table = table["train"] if "train" in table else next(iter(table.values()))
        table.data.validate(full=True)  # damaged offsets would point past the memory map: a SIGBUS when read
        return table
    except IndexError:  # datasets saves a 0-row dataset with no data file, then cannot load it back
        return []
    # Arrow: a damaged file; Type/Attribute/KeyError: datasets' metadata JSON of the wrong shape.
    except (pa.ArrowException, DatasetsError, OSError, ValueError, KeyError, TypeError, AttributeError,
            StopIteration) as exc:
        raise DataError(f"{path}: not a readable {what} ({brief(exc.__cause__ or exc)}); "
                        f"re-create or re-download it") from None


def _parse_json(line: bytes, path: Path, lineno: int) -> dict:
    try:
        row = json.loads(line.decode("utf-8-sig" if lineno == 1 else "utf-8"))  # -sig: a byte-order mark opens line 1
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}:{lineno}: line is not UTF-8 ({exc.reason} at byte {exc.start}); {ICONV}") from None
    except (ValueError, RecursionError) as exc:  # ValueError: also the int-digits limit; Recursion: deep nesting
        raise DataError(f"{path}:{lineno}: invalid JSON ({brief(getattr(exc, 'msg', exc), 80)}); "
                        f"each line must be one JSON object") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def read_documents(sources: list[str], text_field: str = "text",
                   on_problem: ProblemSink | None = None) -> Iterator[dict]:
    """Yield ``{"id", "text"}`` documents from every source, in order, streaming.

    ``on_problem`` receives every bad input (``Problem``) and reading goes on;
    None: the first one raises ``DataError`` naming the file and line.
    """
    sink = on_problem or raise_problem
    for source in sources:
        if source.startswith(BUILTIN):
            yield from builtin_documents(source[len(BUILTIN):])
            continue
        for path in expand(source):
            yield from read_file_documents(path, text_field, sink)


def read_records(sources: list[str]) -> Iterator[dict]:
    """Yield instruction records normalised to ``{"id", "group", "messages", ...}``."""
    for source in sources:
        if source.startswith(BUILTIN):
            yield from builtin_records(source[len(BUILTIN):])
            continue
        for path in expand(source, RECORD_SUFFIXES):
            for lineno, row in iter_rows(path):
                yield normalise_record(row, f"{path}:{lineno}")


def normalise_record(row: dict, where: str) -> dict:
    """Accept chat ``messages`` or ``instruction``/``response`` (or ``prompt``/``completion``)."""
    if "messages" in row:
        messages = row["messages"]
    elif "instruction" in row and ("response" in row or "output" in row):
        if not isinstance(row["instruction"], str) or not isinstance(row.get("input") or "", str):
            raise DataError(f"{where}: fields 'instruction' and 'input' must be strings (the user message)")
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        messages = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": row.get("response", row.get("output"))}]
    elif "prompt" in row and "completion" in row:
        messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
    else:
        raise DataError(
            f"{where}: no 'messages' field and no 'instruction'+'response' (or 'prompt'+'completion') fields; "
            f"got keys {sorted(row)}"
        )
    _check_messages(messages, where)
    out = {k: v for k, v in row.items() if k in ("choices", "answer")}
    return {"id": str(row.get("id", where)), "group": str(row.get("group", row.get("id", where))),
            "messages": messages, **out}


def _check_messages(messages: object, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise DataError(f"{where}: messages[{i}].role must be system, user or assistant")
        if not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: messages[{i}].content must be a string")
        if (at := lone_surrogate(msg["content"])) is not None:  # the tokenizer cannot encode it
            raise DataError(f"{where}: messages[{i}].content holds a lone surrogate ({at}), not valid Unicode; "
                            f"fix the \\u escape")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's response (it carries the loss)")
    if messages[0]["role"] == "assistant":  # chat templates render no prompt from no messages
        raise DataError(f"{where}: messages[0] is the assistant's; a reply needs a user or system message before it")


def read_tasks(source: str) -> list[dict]:
    """Eval items, each ``{"id", "kind", "prompt", ...}`` by kind (docs/metrics.md):

    - ``{"kind": "choice", "choices": [str], "answer": index}``
    - ``{"kind": "generate", "answers": [str]}`` (accepted answers)
    - ``{"kind": "instruction", "checks": [{"type": ..., **params}]}`` (``CHECK_PARAMETERS``)
    """
    if source.startswith(BUILTIN):
        return builtin_tasks(source[len(BUILTIN):])
    items = []
    for path in expand(source, RECORD_SUFFIXES):
        for lineno, row in iter_rows(path):
            items.append(check_task_item(row, f"{path}:{lineno}"))
    return items


# Instruction check type -> {parameter: required?}, read off the check functions (corpora/checks.py):
# every parameter after the reply, required when it has no default.
CHECK_PARAMETERS: dict[str, dict[str, bool]] = {
    kind: {p.name: p.default is p.empty for p in list(inspect.signature(fn).parameters.values())[1:]}
    for kind, fn in CHECKS.items()}
# parameter -> (what a valid value is, test)
_PARAMETER_TYPES = {
    "n": ("a positive integer", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0),
    "keys": ("a list of strings", lambda v: _texts(v)),
    "phrase": ("a non-empty string", lambda v: _texts([v]) and bool(v.strip())),
}


def check_task_item(row: dict, where: str) -> dict:
    """The row if it is a valid eval item; else ``DataError`` naming ``where`` (file:line) and the field."""
    kind = row.get("kind")
    if kind == "choice":
        answer = row.get("answer")
        ok = _texts(row.get("choices")) and isinstance(answer, int) and not isinstance(answer, bool) \
            and 0 <= answer < len(row["choices"])
        if not ok:
            raise DataError(f"{where}: a choice item needs 'choices' (list of strings) and 'answer' "
                            f"(index into choices)")
    elif kind == "generate":
        if not _texts(row.get("answers")) or not row["answers"]:
            raise DataError(f"{where}: a generate item needs 'answers', a non-empty list of acceptable strings")
    elif kind == "instruction":
        _check_checks(row.get("checks"), where)
    else:
        raise DataError(f"{where}: field 'kind' must be 'choice', 'generate' or 'instruction', "
                        f"got {brief(repr(kind), 80)}")
    if not _texts([row.get("prompt")]):
        raise DataError(f"{where}: field 'prompt' must be a string (the user message)")
    return row


def _check_checks(checks: object, where: str) -> None:
    """An instruction item's ``checks``: known types, each with its parameters and no others."""
    if not isinstance(checks, list) or not checks or not all(isinstance(c, dict) for c in checks):
        raise DataError(f"{where}: an instruction item needs 'checks', a non-empty list of "
                        f"{{\"type\": ..., parameters}} objects")
    for i, check in enumerate(checks):
        kind = check.get("type")
        if not isinstance(kind, str) or kind not in CHECK_PARAMETERS:
            raise DataError(f"{where}: checks[{i}].type must be one of {', '.join(CHECK_PARAMETERS)}; "
                            f"got {brief(repr(kind), 80)}")
        params = CHECK_PARAMETERS[kind]
        if unknown := sorted(set(check) - {"type"} - set(params)):
            raise DataError(f"{where}: checks[{i}] ({kind}) has unknown parameter {brief(repr(unknown[0]), 80)}; "
                            f"it takes: {', '.join(params) or 'none'}")
        for name, required in params.items():
            what, valid = _PARAMETER_TYPES[name]
            if name not in check and required:
                raise DataError(f"{where}: checks[{i}] ({kind}) needs parameter '{name}' ({what})")
            if name in check and not valid(check[name]):
                raise DataError(f"{where}: checks[{i}].{name} must be {what}, got {brief(repr(check[name]), 80)}")


def _texts(value: object) -> bool:
    """A list of strings the tokenizer can encode (JSON can escape half a surrogate pair)."""
    return isinstance(value, list) and all(isinstance(v, str) and lone_surrogate(v) is None for v in value)
