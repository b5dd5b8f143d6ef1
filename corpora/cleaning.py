"""Document cleaning: Unicode normalisation, length filter, exact de-duplication.

    docs, stats = clean_documents(read_documents(sources), min_chars=200)

Exact duplicates are found by the SHA-256 of the normalised text, so two
copies that differ only in whitespace at line ends or in Unicode composition
count as one. The first copy (in source order) is kept.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

# Control characters other than tab and newline carry no meaning in prose and
# break some tokenizers' byte fallbacks.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass
class CleaningStats:
    documents_in: int = 0
    too_short: int = 0
    exact_duplicates: int = 0
    documents_out: int = 0


def normalise(text: str) -> str:
    # The substring checks skip a regex pass where it has nothing to do: on the
    # benchmark corpus they halve the time of this function.
    text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if " \n" in text or "\t\n" in text:
        # Per line, not a regex: "[ \t]+\n" tries a match at every space of indented code (4x slower).
        text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))
    if "\n\n\n" in text:
        text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip()


def clean_documents(docs: Iterable[dict], min_chars: int) -> tuple[list[dict], CleaningStats]:
    stats = CleaningStats()
    seen: set[str] = set()
    kept = []
    for doc in docs:
        stats.documents_in += 1
        text = normalise(doc["text"])
        if len(text) < min_chars:
            stats.too_short += 1
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()
        if digest in seen:
            stats.exact_duplicates += 1
            continue
        seen.add(digest)
        kept.append({**doc, "text": text})
    stats.documents_out = len(kept)
    return kept, stats
