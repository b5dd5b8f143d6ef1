"""The built-in domain corpus: Python standard-library documentation via pydoc.

    from corpora.builtin.stdlib_docs import stdlib_documents
    docs = stdlib_documents()        # [{"id": "json", "text": "..."}, ...]
    python -m corpora.builtin.stdlib_docs   # prints counts, size and render time

Everything is rendered offline by the installed Python, so the text is fixed
by the Python version: sections that depend on the machine (FILE paths,
MODULE REFERENCE URLs, DATA values such as ``os.environ``) are dropped, and
install paths and memory addresses are normalised (pydoc's reprlib already
sorts sets, so hash randomisation does not show).
pydoc reads live objects, so rendering runs in a fresh isolated interpreter
(``python -I``): a host that patched ``pdb.set_trace`` (pytest) or added
logging handlers would otherwise change the text. Measured on CPython 3.11.7:
185 modules, ~3.6 MB, ~7 s on 2 cores (see docs/data.md).
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pydoc
import re
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path

# Curated, import-safe modules: nothing that opens windows, prints, reads the
# terminal or the network at import, and nothing deprecated in 3.11-3.13 (their
# warnings would make the list shrink from one Python version to the next).
STDLIB_MODULES: tuple[str, ...] = (
    # text and binary data
    "string", "re", "difflib", "textwrap", "unicodedata", "codecs", "struct",
    "base64", "binascii", "quopri",
    # data types
    "datetime", "zoneinfo", "calendar", "collections", "collections.abc", "heapq",
    "bisect", "array", "weakref", "types", "copy", "pprint", "reprlib", "enum",
    "graphlib", "dataclasses", "abc",
    # numbers and functional tools
    "numbers", "math", "cmath", "decimal", "fractions", "random", "statistics",
    "itertools", "functools", "operator",
    # files and directories
    "pathlib", "os.path", "fileinput", "stat", "filecmp", "tempfile", "glob",
    "fnmatch", "linecache", "shutil",
    # persistence, compression, file formats, cryptography
    "pickle", "shelve", "marshal", "dbm", "sqlite3", "zlib", "gzip", "bz2", "lzma",
    "zipfile", "tarfile", "csv", "configparser", "tomllib", "netrc", "plistlib",
    "hashlib", "hmac", "secrets",
    # operating system services
    "os", "io", "time", "argparse", "getopt", "logging", "logging.config",
    "logging.handlers", "getpass", "platform", "ctypes", "shlex", "cmd",
    # concurrency
    "threading", "multiprocessing", "multiprocessing.shared_memory",
    "concurrent.futures", "subprocess", "sched", "queue", "contextvars",
    # networking and interprocess communication
    "asyncio", "socket", "ssl", "select", "selectors", "signal", "mmap",
    # internet data handling and markup
    "email", "email.message", "email.parser", "email.policy", "email.utils",
    "email.headerregistry", "json", "json.decoder", "json.encoder", "mailbox",
    "mimetypes", "html", "html.parser", "xml.etree.ElementTree", "xml.dom.minidom",
    "xml.sax", "xml.sax.saxutils", "xml.parsers.expat",
    # internet protocols
    "webbrowser", "wsgiref.simple_server", "wsgiref.util", "urllib.request",
    "urllib.parse", "urllib.error", "urllib.robotparser", "http", "http.client",
    "http.server", "http.cookies", "http.cookiejar", "ftplib", "poplib", "imaplib",
    "smtplib", "uuid", "socketserver", "xmlrpc.client", "xmlrpc.server", "ipaddress",
    # multimedia and internationalisation
    "wave", "colorsys", "gettext", "locale",
    # development tools, debugging and profiling
    "typing", "pydoc", "doctest", "unittest", "unittest.mock", "bdb", "faulthandler",
    "pdb", "timeit", "trace", "tracemalloc", "cProfile", "profile", "pstats",
    # packaging and runtime services
    "venv", "zipapp", "sys", "builtins", "warnings", "contextlib", "atexit",
    "traceback", "gc", "inspect", "site", "code", "codeop",
    # importing
    "zipimport", "pkgutil", "modulefinder", "runpy", "importlib", "importlib.metadata",
    "importlib.resources", "importlib.util", "importlib.abc",
    # language services
    "ast", "symtable", "tokenize", "tabnanny", "pyclbr", "py_compile", "compileall",
    "dis",
    # Unix-specific services
    "pwd", "grp", "fcntl", "resource",
)

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding corpora/
# Child bootstrap, argv = [-c, root, module, --json, FILE]: leaves the module
# seeing [its path, --json, FILE]. -I ignores PYTHON* env vars and the cwd.
_BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); module = sys.argv.pop(1); "
         "runpy.run_module(module, run_name='__main__', alter_sys=True)")

_CHILD_FLAG = "CPTIFT_BUILTIN_CHILD"

MAX_MODULE_CHARS = 60_000  # cap per module so builtins/ast/asyncio do not dominate

# Top-level pydoc sections whose content depends on the machine, not on Python.
_DROPPED_SECTIONS = frozenset({"FILE", "MODULE REFERENCE", "DATA"})
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _local_paths() -> list[tuple[str, str]]:
    """Install paths that leak into signatures (default arguments), longest first.

    e.g. ``platform.architecture(executable=sys.executable)`` and
    ``pydoc.HTMLDoc.getdocloc(basedir=<stdlib dir>)``. Prefixes alone are not
    replaced: on Debian ``sys.prefix`` is ``/usr``, which docstrings mention.
    """
    pairs = {sys.executable: "python3"}
    for key, placeholder in (("stdlib", "<stdlib>"), ("platstdlib", "<stdlib>"),
                             ("purelib", "<site-packages>"), ("platlib", "<site-packages>")):
        pairs.setdefault(sysconfig.get_path(key), placeholder)
    pairs.pop("", None)
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


@contextlib.contextmanager
def _quiet():
    """Silence stdout, stderr and warnings while foreign code runs."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield


def import_module(name: str):
    """Import a stdlib module quietly; None when this Python lacks it."""
    try:
        with _quiet():
            return importlib.import_module(name)
    except Exception:  # noqa: BLE001 - a missing optional module only shrinks the corpus
        return None


def _drop_sections(text: str) -> str:
    """Remove machine-specific top-level sections (unindented headings)."""
    kept, dropping = [], False
    for line in text.splitlines():
        if line and not line[0].isspace():
            dropping = line.strip() in _DROPPED_SECTIONS
        if not dropping:
            kept.append(line.rstrip())
    return "\n".join(kept).strip() + "\n"


def _truncate(text: str, limit: int) -> str:
    """Cut at the last line boundary before ``limit`` characters."""
    if len(text) <= limit:
        return text
    return text[: text.rfind("\n", 0, limit) + 1]


def clean_render(text: str, limit: int = MAX_MODULE_CHARS) -> str:
    """Make pydoc output machine-independent and cap its length."""
    text = _drop_sections(text)
    for path, placeholder in _local_paths():
        text = text.replace(path, placeholder)
    text = _ADDRESS.sub("", text)
    return _truncate(text, limit)


def render_module(name: str) -> str | None:
    """Plain-text pydoc page of one module, cleaned; None if it cannot load."""
    module = import_module(name)
    if module is None:
        return None
    try:
        with _quiet():
            raw = pydoc.render_doc(module, renderer=pydoc.plaintext)
    except Exception:  # noqa: BLE001 - pydoc can trip on odd objects; skip the module
        return None
    return clean_render(raw)


def render_documents() -> list[dict]:
    """Render ``STDLIB_MODULES`` in this process, sorted by id (see module doc)."""
    docs = []
    for name in sorted(STDLIB_MODULES):
        text = render_module(name)
        if text:
            docs.append({"id": name, "text": text})
    return docs


def run_fresh(module: str) -> list[dict]:
    """Run ``module`` as ``__main__ --json FILE`` in ``python -I`` and load FILE."""
    # A child that spawned children of its own would fork without end; refuse it.
    if os.environ.get(_CHILD_FLAG):
        raise RuntimeError(f"{module}: a fresh-interpreter build tried to start another one")
    with tempfile.TemporaryDirectory(prefix="cptift-builtin-") as tmp:
        out = Path(tmp, "out.json")
        command = [sys.executable, "-I", "-c", _BOOT, str(_PACKAGE_ROOT), module,
                   "--json", str(out)]
        proc = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=600, env=os.environ | {_CHILD_FLAG: "1"})
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(
                f"building {module} in a fresh interpreter failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text(encoding="utf-8"))


def run_as_script(argv: list[str], build, fresh) -> list[dict] | None:
    """``--json FILE``: child mode, write ``build()``; else time ``fresh()`` and return it."""
    if argv[:1] == ["--json"]:
        Path(argv[1]).write_text(json.dumps(build(), ensure_ascii=False), encoding="utf-8")
        return None
    import time

    start = time.perf_counter()
    items = fresh()
    print(f"{len(items)} items built in {time.perf_counter() - start:.1f} s (fresh interpreter)")
    return items


def stdlib_documents() -> list[dict]:
    """One document per importable module of ``STDLIB_MODULES``, sorted by id."""
    return run_fresh("corpora.builtin.stdlib_docs")


if __name__ == "__main__":
    documents = run_as_script(sys.argv[1:], render_documents, stdlib_documents)
    if documents:
        print(f"{sum(len(d['text']) for d in documents):,} characters of text")
