"""Built-in instruction data: questions about stdlib objects, answered by their docstrings.

    from corpora.builtin.stdlib_qa import stdlib_qa_records
    records = stdlib_qa_records()    # [{"id": "json.dumps", "group": "json", ...}, ...]
    python -m corpora.builtin.stdlib_qa   # prints the record count and one example

Each public function or class of the modules in ``STDLIB_MODULES`` that has a
usable docstring summary yields one chat record ("What does `json.dumps` do?"
-> first paragraph of the docstring) plus a 4-way multiple-choice form whose
distractors are summaries of other objects of the same module. ``group`` is the
module, so a split by group keeps test questions about modules never trained on.
Like the docs, records are built in a fresh ``python -I`` so that objects the
host process patched (pytest replaces ``pdb.set_trace``) do not leak in.
"""

from __future__ import annotations

import inspect
import random
import re
import sys
import zlib

from corpora.builtin.stdlib_docs import STDLIB_MODULES, import_module, run_as_script, run_fresh

MIN_SUMMARY_CHARS = 20  # shorter summaries ("Return x.") teach nothing
MAX_SUMMARY_CHARS = 300  # longer first paragraphs are descriptions, not summaries
N_CHOICES = 4  # correct answer + 3 distractors
SHUFFLE_SEED = 0  # seeds distractor choice and the position of the correct answer

QUESTION_TEMPLATES = (
    "What does `{name}` do?",
    "In Python's standard library, what is `{name}` for?",
    "Briefly explain the purpose of `{name}`.",
)

# "sqrt(x)", "sqrt(x) -> float", "chain(*iterables) --> chain object": C
# docstrings often open with a signature paragraph; the summary follows it.
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)(\s*-+>\s*.+)?$")
# "partial(func, *args) - new function ...", "enable(file=...): enable ...":
# a signature glued in front of the summary sentence.
_SIGNATURE_PREFIX = re.compile(r"^[\w.]+\((?:[^()]|\([^()]*\))*\)\s*(?:-+>?|:|=>)?\s+")
_WHITESPACE = re.compile(r"\s+")


def summarize(doc: object) -> str | None:
    """First paragraph of a docstring that is not a signature, or None if unfit."""
    if not isinstance(doc, str):  # some C types expose __doc__ as a descriptor
        return None
    for paragraph in inspect.cleandoc(doc).split("\n\n"):
        text = _WHITESPACE.sub(" ", paragraph).strip()
        if not text or _SIGNATURE.match(text):
            continue
        text = _SIGNATURE_PREFIX.sub("", text)
        text = text[:1].upper() + text[1:]
        if MIN_SUMMARY_CHARS <= len(text) <= MAX_SUMMARY_CHARS:
            return text
        return None
    return None


def _public_objects(module) -> list[tuple[str, object]]:
    """(name, object) for public functions and classes the module exposes."""
    names = getattr(module, "__all__", None) or dir(module)
    found = []
    for name in sorted(set(names)):
        obj = getattr(module, name, None)
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        # Without __all__, dir() also lists what the module merely imported.
        home = getattr(obj, "__module__", None)
        home = home if isinstance(home, str) else ""
        if "__all__" in vars(module) or home.lstrip("_") == module.__name__.lstrip("_"):
            found.append((name, obj))
    return found


def _candidates() -> dict[int, list[tuple[str, str, object]]]:
    """Object identity -> every (module, name, object) that exposes it."""
    seen: dict[int, list[tuple[str, str, object]]] = {}
    for module_name in sorted(STDLIB_MODULES):
        module = import_module(module_name)
        if module is None:
            continue
        for name, obj in _public_objects(module):
            seen.setdefault(id(obj), []).append((module_name, name, obj))
    return seen


def _owner(exposures: list[tuple[str, str, object]]) -> tuple[str, str, object]:
    """Pick one module per object so no answer leaks across groups.

    Prefer the module that defines the object (``json.decoder.JSONDecoder``
    rather than the ``json.JSONDecoder`` re-export), else the first by name.
    """
    home = getattr(exposures[0][2], "__module__", None)
    for exposure in exposures:
        if exposure[0] == home:
            return exposure
    return exposures[0]


def qa_pairs() -> list[tuple[str, str, str]]:
    """(module, qualified id, summary), sorted by id, each summary unique."""
    pairs = []
    for exposures in _candidates().values():
        module_name, name, obj = _owner(exposures)
        summary = summarize(getattr(obj, "__doc__", None))
        if summary:
            pairs.append((module_name, f"{module_name}.{name}", summary))
    pairs.sort(key=lambda p: p[1])
    seen, unique = set(), []
    for pair in pairs:
        # Identical summaries (aliases, generated exception classes) would make
        # two choices of a question indistinguishable.
        if pair[2] not in seen:
            seen.add(pair[2])
            unique.append(pair)
    return unique


def _distractors(rng: random.Random, correct: str, same_module: list[str],
                 everything: list[str]) -> list[str]:
    """Three other summaries, from the same module when it has enough."""
    pool = [s for s in same_module if s != correct]
    if len(pool) < N_CHOICES - 1:
        pool = [s for s in everything if s != correct]
    return rng.sample(pool, N_CHOICES - 1)


def _question(qualified: str) -> str:
    # crc32 is stable across runs and machines, unlike hash() on str.
    template = QUESTION_TEMPLATES[zlib.crc32(qualified.encode()) % len(QUESTION_TEMPLATES)]
    return template.format(name=qualified)


def _record(module_name: str, qualified: str, summary: str, choices: list[str]) -> dict:
    return {
        "id": qualified,
        "group": module_name,
        "messages": [
            {"role": "user", "content": _question(qualified)},
            {"role": "assistant", "content": summary},
        ],
        "choices": choices,
        "answer": choices.index(summary),
    }


def build_records(seed: int = SHUFFLE_SEED) -> list[dict]:
    """All QA records built in this process, sorted by id; per-record seeded RNG."""
    pairs = qa_pairs()
    by_module: dict[str, list[str]] = {}
    for module_name, _, summary in pairs:
        by_module.setdefault(module_name, []).append(summary)
    everything = [summary for _, _, summary in pairs]
    records = []
    for module_name, qualified, summary in pairs:
        rng = random.Random(f"{seed}:{qualified}")
        choices = [summary, *_distractors(rng, summary, by_module[module_name], everything)]
        rng.shuffle(choices)
        records.append(_record(module_name, qualified, summary, choices))
    return records


def stdlib_qa_records() -> list[dict]:
    """All QA records, built in a fresh interpreter (see module doc)."""
    return run_fresh("corpora.builtin.stdlib_qa")


if __name__ == "__main__":
    import json

    all_records = run_as_script(sys.argv[1:], build_records, stdlib_qa_records)
    if all_records:
        print(f"over {len({r['group'] for r in all_records})} modules, e.g.")
        print(json.dumps(all_records[0], indent=2))
