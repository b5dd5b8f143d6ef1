"""Tests of the built-in demo data (corpora/builtin/): content, sizes, determinism.

    .venv/bin/pytest -q tests/test_builtin_corpora.py      # ~20 s on 2 cores

The stdlib render takes ~7 s, so it is built once per module; the
determinism test builds it a second time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

import pytest

from corpora.builtin import BUILTIN_NAMES, builtin_documents, builtin_records, builtin_tasks
from corpora.builtin import general
from corpora.builtin.stdlib_docs import MAX_MODULE_CHARS, STDLIB_MODULES, clean_render
from corpora.builtin.stdlib_qa import summarize

# Short system prefixes (Debian's sys.prefix is /usr) legitimately occur in docs.
_SYSTEM_DIRS = {"", "/", "/usr", "/usr/local", "/opt"}


def _digest(docs: list[dict], records: list[dict]) -> str:
    blob = json.dumps([docs, records], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@pytest.fixture(scope="module")
def stdlib_docs() -> list[dict]:
    return builtin_documents("stdlib-docs")


@pytest.fixture(scope="module")
def qa_records() -> list[dict]:
    return builtin_records("stdlib-qa")


# ---------------------------------------------------------------- stdlib-docs


def test_stdlib_docs_sizes(stdlib_docs):
    ids = [d["id"] for d in stdlib_docs]
    assert ids == sorted(set(ids)) and set(ids) <= set(STDLIB_MODULES)
    assert len(ids) >= 150, "most curated modules must import and render"
    assert {"json", "os", "collections", "re"} <= set(ids)
    assert all(0 < len(d["text"]) <= MAX_MODULE_CHARS for d in stdlib_docs)
    total_chars = sum(len(d["text"]) for d in stdlib_docs)
    assert 3_000_000 <= total_chars <= 4_500_000
    json_doc = next(d["text"] for d in stdlib_docs if d["id"] == "json")
    assert "dumps(obj" in json_doc and json_doc.startswith("Python Library Documentation")


def _local_paths() -> set[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.executable, os.getcwd(),
             sysconfig.get_path("stdlib"), sysconfig.get_path("purelib")}
    return {p.rstrip("/") for p in paths} - _SYSTEM_DIRS


def test_no_machine_specific_text(stdlib_docs, qa_records):
    texts = [d["text"] for d in stdlib_docs] + [r["messages"][1]["content"] for r in qa_records]
    for path in _local_paths():
        leaks = [t[:60] for t in texts if path in t]
        assert not leaks, f"{path} leaks into {leaks[:3]}"
    for doc in stdlib_docs:
        headings = set(re.findall(r"^([A-Z][A-Z ]+)$", doc["text"], re.M))
        assert not headings & {"FILE", "MODULE REFERENCE", "DATA"}, doc["id"]
        assert not re.search(r" at 0x[0-9a-f]+", doc["text"]), doc["id"]


def test_two_calls_give_identical_output(stdlib_docs, qa_records):
    # Each call renders in a new ``python -I``, whose str hashing is randomised
    # (-I ignores PYTHONHASHSEED): catches hash-order and address leaks.
    assert _digest(builtin_documents("stdlib-docs"), builtin_records("stdlib-qa")) == (
        _digest(stdlib_docs, qa_records))


def test_render_ignores_host_patches(stdlib_docs, qa_records):
    # pytest swaps pdb.set_trace for its own wrapper in this process; the
    # fresh interpreter must document the real one.
    pdb_doc = next(d["text"] for d in stdlib_docs if d["id"] == "pdb")
    assert "set_trace(*" in pdb_doc and "IO capturing" not in pdb_doc
    assert not any("IO capturing" in r["messages"][1]["content"] for r in qa_records)


def test_clean_render_drops_machine_sections_and_normalises():
    raw = (
        "Python Library Documentation: module m\n\nNAME\n    m - demo\n\n"
        "MODULE REFERENCE\n    https://docs.python.org/3/library/m.html\n\n"
        "FUNCTIONS\n    f(x=<object object at 0x7f00aa>, s={'b', 'a'})\n\n"
        "DATA\n    environ = {'HOME': '/home/me'}\n\nFILE\n    /opt/py/m.py\n"
    )
    text = clean_render(raw)
    assert "MODULE REFERENCE" not in text and "/home/me" not in text and "/opt/py" not in text
    assert "f(x=<object object>, s={'b', 'a'})" in text
    assert clean_render("line one\nline two\nline three\n", limit=15) == "line one\n"


# ---------------------------------------------------------------- stdlib-qa


def test_summarize_skips_signatures_and_bad_lengths():
    assert summarize("sqrt(x)\n\nReturn the square root of x.") == "Return the square root of x."
    assert summarize("partial(func, *args) - new function with partial application.") == (
        "New function with partial application.")
    assert summarize("Short.") is None
    assert summarize("word " * 100) is None
    assert summarize(None) is None and summarize(property()) is None


def test_qa_records_well_formed(qa_records):
    assert len(qa_records) >= 1000
    ids = [r["id"] for r in qa_records]
    assert len(set(ids)) == len(ids)
    questions = [r["messages"][0]["content"] for r in qa_records]
    assert len(set(questions)) == len(questions)
    for record in qa_records:
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert f"`{record['id']}`" in user["content"]
        assert record["group"] == record["id"].rsplit(".", 1)[0]
        assert record["group"] in STDLIB_MODULES
        assert len(record["choices"]) == 4 == len(set(record["choices"]))
        assert record["choices"][record["answer"]] == assistant["content"]
        assert 20 <= len(assistant["content"]) <= 300


def test_qa_answers_stay_in_their_group(qa_records):
    # An answer shared by two modules would leak test answers into training.
    answers = [r["messages"][1]["content"] for r in qa_records]
    assert len(set(answers)) == len(answers)
    by_group: dict[str, set[str]] = {}
    for record in qa_records:
        by_group.setdefault(record["group"], set()).add(record["messages"][1]["content"])
    for record in qa_records:
        if len(by_group[record["group"]]) >= 4:
            assert set(record["choices"]) <= by_group[record["group"]], record["id"]
    assert {r["answer"] for r in qa_records} == {0, 1, 2, 3}


def test_qa_known_record(qa_records):
    record = next(r for r in qa_records if r["id"] == "json.dumps")
    assert record["group"] == "json"
    assert "JSON" in record["messages"][1]["content"]


# ---------------------------------------------------------------- general


def _by_id(items: list[dict]) -> dict[str, dict]:
    return {item["id"]: item for item in items}


def test_general_facts_content():
    items = builtin_tasks("general-facts")
    assert len(items) == len(_by_id(items)) == 110
    assert all(i["kind"] == "generate" and i["answers"] for i in items)
    facts = _by_id(items)
    assert "Paris" in facts["capital/FR"]["answers"]
    assert "France" in facts["capital/FR"]["prompt"]
    assert "Euro" in facts["currency/FR"]["answers"]
    assert facts["element/Fe"]["answers"] == ["iron"]
    assert "symbol Fe?" in facts["element/Fe"]["prompt"]
    kinds_in_head = {i["id"].split("/")[0] for i in items[:15]}
    assert kinds_in_head == {"capital", "currency", "element"}
    assert items == builtin_tasks("general-facts")


def test_arithmetic_answers_are_correct():
    items = builtin_tasks("arithmetic")
    assert len(items) == 40 and len({i["prompt"] for i in items}) == 40
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__}
    for item in items:
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\? Reply with the number only\.",
                                item["prompt"]).groups()
        a, b = int(a), int(b)
        assert item["answers"] == [str(ops[op](a, b))]
        assert a < 100 and b < 100 and (op != "*" or (a < 10 and b < 10))
    assert items == builtin_tasks("arithmetic")


def test_licenses_documents():
    docs = builtin_documents("licenses")
    ids = [d["id"] for d in docs]
    assert ids == sorted(set(ids)) and all(d["text"].strip() for d in docs)
    assert docs == builtin_documents("licenses")
    if general.DEBIAN_LICENSES.is_dir():
        assert "common-licenses/GPL-3" in ids
        assert "common-licenses/GPL" not in ids, "symlinks must be skipped"
    if general.python_license_path() is not None:
        python = next(d["text"] for d in docs if d["id"] == "python/LICENSE")
        assert "PYTHON SOFTWARE FOUNDATION LICENSE" in python


def test_licenses_fallback_and_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(general, "DEBIAN_LICENSES", tmp_path / "absent")
    fake = tmp_path / "LICENSE.txt"
    fake.write_text("PSF licence text")
    monkeypatch.setattr(general, "python_license_path", lambda: fake)
    assert general.license_documents() == [{"id": "python/LICENSE", "text": "PSF licence text"}]
    monkeypatch.setattr(general, "python_license_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="LICENSE.txt"):
        general.license_documents()


# ---------------------------------------------------------------- registry


def test_builtin_names():
    assert BUILTIN_NAMES == {
        "documents": ("stdlib-docs", "licenses", "fortunes"),
        "records": ("stdlib-qa",),
        "tasks": ("general-facts", "arithmetic", "instruction-following"),
    }


@pytest.mark.parametrize("kind, loader", [("documents", builtin_documents),
                                          ("records", builtin_records),
                                          ("tasks", builtin_tasks)])
def test_unknown_name_lists_valid_ones(kind, loader):
    with pytest.raises(ValueError) as error:
        loader("no-such-data")
    message = str(error.value)
    assert "no-such-data" in message
    assert all(name in message for name in BUILTIN_NAMES[kind])


def test_fortunes_are_general_text_disjoint_from_the_general_suite(tmp_path):
    """The replay corpus: grouped quotations, none from the computer themes; a clear error without the package."""
    from corpora.builtin.fortunes import COOKIES_PER_DOCUMENT, THEMES, fortune_documents

    assert not {"computers", "linux", "debian"} & set(THEMES)
    (tmp_path / "art").write_text("First.\n%\nSecond,\ntwo lines.\n%\n" + "x\n%\n" * (COOKIES_PER_DOCUMENT + 3))
    for theme in THEMES[1:]:
        (tmp_path / theme).write_text("One.\n")
    docs = fortune_documents(tmp_path)
    assert docs[0] == {"id": "fortunes/art/000", "text": "First.\n\nSecond,\ntwo lines.\n\n" + "\n\n".join(
        ["x"] * (COOKIES_PER_DOCUMENT - 2))}
    assert docs[1] == {"id": "fortunes/art/001", "text": "\n\n".join(["x"] * 5)}
    assert len(docs) == 2 + len(THEMES) - 1
    (tmp_path / "wisdom").unlink()
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        fortune_documents(tmp_path)
    general = builtin_documents("licenses")
    if Path("/usr/share/games/fortunes/art").is_file():  # installed: no licence text is replayed
        texts = {d["text"] for d in general}
        assert not any(d["text"] in texts for d in builtin_documents("fortunes"))
