"""Registry of the built-in demo data, addressed in configs as ``builtin:<name>``.

    from corpora.builtin import builtin_documents, builtin_records, builtin_tasks
    docs = builtin_documents("stdlib-docs")     # [{"id": "json", "text": ...}, ...]
    qa = builtin_records("stdlib-qa")           # chat records with a 4-way choice
    facts = builtin_tasks("general-facts")      # [{"id", "kind", "prompt", "answers"}, ...]
    ifeval = builtin_tasks("instruction-following")  # [{"id", "kind": "instruction", "prompt", "checks"}, ...]

Everything is built offline from the installed Python and packages, on every
call (no cache: callers own and may mutate what they get). Provenance, sizes
and licences are in docs/data.md.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["BUILTIN_NAMES", "builtin_documents", "builtin_records", "builtin_tasks"]


# Builders import their module on call: importing the registry stays cheap, and
# ``python -m corpora.builtin.<module>`` does not find its module pre-imported.
def _stdlib_docs() -> list[dict]:
    from corpora.builtin.stdlib_docs import stdlib_documents

    return stdlib_documents()


def _licenses() -> list[dict]:
    from corpora.builtin.general import license_documents

    return license_documents()


def _fortunes() -> list[dict]:
    from corpora.builtin.fortunes import fortune_documents

    return fortune_documents()


def _stdlib_qa() -> list[dict]:
    from corpora.builtin.stdlib_qa import stdlib_qa_records

    return stdlib_qa_records()


def _general_facts() -> list[dict]:
    from corpora.builtin.general import general_facts

    return general_facts()


def _arithmetic() -> list[dict]:
    from corpora.builtin.general import arithmetic_items

    return arithmetic_items()


def _instruction_following() -> list[dict]:
    from corpora.builtin.instructions import instruction_items

    return instruction_items()


# kind -> name -> builder; one explicit table instead of string dotpaths.
_BUILDERS: dict[str, dict[str, Callable[[], list[dict]]]] = {
    "documents": {"stdlib-docs": _stdlib_docs, "licenses": _licenses, "fortunes": _fortunes},
    "records": {"stdlib-qa": _stdlib_qa},
    "tasks": {"general-facts": _general_facts, "arithmetic": _arithmetic,
              "instruction-following": _instruction_following},
}

BUILTIN_NAMES: dict[str, tuple[str, ...]] = {
    kind: tuple(builders) for kind, builders in _BUILDERS.items()
}


def _build(kind: str, name: str) -> list[dict]:
    builders = _BUILDERS[kind]
    if name not in builders:
        valid = ", ".join(BUILTIN_NAMES[kind])
        raise ValueError(f"unknown built-in {kind} {name!r}; valid names: {valid}")
    return builders[name]()


def builtin_documents(name: str) -> list[dict]:
    """Plain-text corpus ``[{"id", "text"}, ...]``, sorted by id."""
    return _build("documents", name)


def builtin_records(name: str) -> list[dict]:
    """Instruction records with ``messages``, ``group``, ``choices`` and ``answer``."""
    return _build("records", name)


def builtin_tasks(name: str) -> list[dict]:
    """Evaluation items ``[{"id", "kind", "prompt", ...}, ...]`` (formats: ``corpora.sources.read_tasks``)."""
    return _build("tasks", name)
