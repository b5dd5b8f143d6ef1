"""Read documents, instruction records and eval items from user sources.

A source is a file, a folder, a glob, or ``builtin:<name>`` (see
``corpora.builtin``). Supported files: ``.txt``/``.md`` (one document per
file), ``.jsonl`` (one row per line), ``.parquet``; a folder written by
``datasets.save_to_disk`` is read with ``datasets.load_from_disk``; any other
folder is searched recursively for supported files.

    docs = list(read_documents(["notes/*.md", "dump.jsonl"], text_field="text"))

Bad rows fail with the file, the line and the field, and what to do.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from corpora.builtin import builtin_documents, builtin_records, builtin_tasks

TEXT_SUFFIXES = {".txt", ".md", ".rst"}
ROW_SUFFIXES = {".jsonl", ".parquet"}
BUILTIN = "builtin:"


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def expand(source: str) -> list[Path]:
    """The files a source names, sorted so that reading is deterministic."""
    if any(ch in source for ch in "*?["):
        paths = [Path(p) for p in sorted(glob.glob(source, recursive=True))]
    else:
        paths = [Path(source)]
    files: list[Path] = []
    for path in paths:
        if path.is_dir() and not _is_hf_dataset(path):
            files += sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES | ROW_SUFFIXES)
        elif path.exists():
            files.append(path)
    if not files:
        raise DataError(f"source {source!r}: no such file, or no .txt/.md/.jsonl/.parquet files in it")
    return files


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists())


def iter_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) pairs of a JSONL/parquet file or HF dataset folder."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield lineno, _parse_json(line, path, lineno)
        return
    import datasets  # imported lazily: it is slow to import

    if path.suffix == ".parquet":
        table = datasets.load_dataset("parquet", data_files=str(path), split="train")
    elif _is_hf_dataset(path):
        table = datasets.load_from_disk(str(path))
        if isinstance(table, datasets.DatasetDict):
            table = table["train"] if "train" in table else next(iter(table.values()))
    else:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .txt, .md, .jsonl or .parquet")
    for row_no, row in enumerate(table, 1):
        yield row_no, row


def _parse_json(line: str, path: Path, lineno: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg}); each line must be one JSON object") from None
    if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def read_documents(sources: list[str], text_field: str = "text") -> Iterator[dict]:
    """Yield ``{"id", "text"}`` documents from every source, in order."""
    for source in sources:
        if source.startswith(BUILTIN):
            yield from builtin_documents(source[len(BUILTIN):])
            continue
        for path in expand(source):
            if path.suffix in TEXT_SUFFIXES:
                yield {"id": str(path), "text": path.read_text(encoding="utf-8", errors="replace")}
                continue
            for lineno, row in iter_rows(path):
                text = row.get(text_field)
                if not isinstance(text, str):
                    raise DataError(
                        f"{path}:{lineno}: field {text_field!r} missing or not a string; "
                        f"set data.domain.text_field to the field that holds the text (row keys: {sorted(row)})"
                    )
                yield {"id": f"{path}:{lineno}", "text": text}


def read_records(sources: list[str]) -> Iterator[dict]:
    """Yield instruction records normalised to ``{"id", "group", "messages", ...}``."""
    for source in sources:
        if source.startswith(BUILTIN):
            yield from builtin_records(source[len(BUILTIN):])
            continue
        for path in expand(source):
            for lineno, row in iter_rows(path):
                yield normalise_record(row, f"{path}:{lineno}")


def normalise_record(row: dict, where: str) -> dict:
    """Accept chat ``messages`` or ``instruction``/``response`` (or ``prompt``/``completion``)."""
    if "messages" in row:
        messages = row["messages"]
    elif "instruction" in row and ("response" in row or "output" in row):
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
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's response (it carries the loss)")


def read_tasks(source: str) -> list[dict]:
    """Eval items: ``{"kind": "choice", "prompt", "choices", "answer"}`` or ``{"kind": "generate", "prompt", "answers"}``."""
    if source.startswith(BUILTIN):
        return builtin_tasks(source[len(BUILTIN):])
    items = []
    for path in expand(source):
        for lineno, row in iter_rows(path):
            items.append(check_task_item(row, f"{path}:{lineno}"))
    return items


def check_task_item(row: dict, where: str) -> dict:
    kind = row.get("kind")
    if kind == "choice":
        ok = isinstance(row.get("choices"), list) and isinstance(row.get("answer"), int) \
            and 0 <= row["answer"] < len(row["choices"])
        if not ok:
            raise DataError(f"{where}: a choice item needs 'choices' (list) and 'answer' (index into choices)")
    elif kind == "generate":
        if not isinstance(row.get("answers"), list) or not row["answers"]:
            raise DataError(f"{where}: a generate item needs 'answers', a non-empty list of acceptable strings")
    else:
        raise DataError(f"{where}: field 'kind' must be 'choice' or 'generate', got {kind!r}")
    if not isinstance(row.get("prompt"), str):
        raise DataError(f"{where}: field 'prompt' must be a string (the user message)")
    return row
