"""General English text for replay during CPT: Debian's ``fortunes`` quotations.

    from corpora.builtin.fortunes import fortune_documents
    docs = fortune_documents()      # [{"id": "fortunes/literature/000", "text": ...}, ...]
    python -m corpora.builtin.fortunes   # counts and the first document

Replay mixes general text into the domain corpus so that CPT forgets less
(``data.replay``). The text must be general, and disjoint from the general
evaluation suite (licence texts, facts, arithmetic, instruction-following
prompts): quotations, jokes and short pieces of prose from the BSD fortune
files, as Debian ships them in the ``fortunes`` package (``apt-get install
fortunes``; BSD licence, /usr/share/doc/fortunes/copyright). Only the themes
below are used: not ``computers``, ``linux`` or ``debian`` (close to the demo's
domain), and none of the offensive files. Cookies are grouped
``COOKIES_PER_DOCUMENT`` to a document, in file order.
"""

from __future__ import annotations

from pathlib import Path

FORTUNES = Path("/usr/share/games/fortunes")
THEMES = ("art", "education", "food", "humorists", "kids", "literature", "love", "people", "pets", "science",
          "sports", "wisdom", "work")
COOKIES_PER_DOCUMENT = 20


def fortune_documents(folder: Path = FORTUNES) -> list[dict]:
    """One document per ``COOKIES_PER_DOCUMENT`` quotations of each theme, sorted by id."""
    missing = [t for t in THEMES if not (folder / t).is_file()]
    if missing:
        raise FileNotFoundError(f"builtin:fortunes needs Debian's fortune files ({folder}/{missing[0]} is missing): "
                                "apt-get install fortunes")
    docs = []
    for theme in THEMES:
        text = (folder / theme).read_text(encoding="utf-8", errors="replace")
        cookies = [c.strip("\n") for c in text.split("\n%\n") if c.strip()]
        for start in range(0, len(cookies), COOKIES_PER_DOCUMENT):
            chunk = cookies[start: start + COOKIES_PER_DOCUMENT]
            docs.append({"id": f"fortunes/{theme}/{start // COOKIES_PER_DOCUMENT:03d}", "text": "\n\n".join(chunk)})
    return docs


if __name__ == "__main__":
    found = fortune_documents()
    print(f"fortunes: {len(found)} documents, {sum(len(d['text']) for d in found):,} chars")
    print(found[0]["text"][:500])
