"""Instruction-following checks: is a reply in the asked-for format?

    from corpora.checks import followed
    followed("- a\\n- b", [{"type": "bullets", "n": 2}])    # True

An ``instruction`` eval item carries ``checks``, a list of ``{"type", ...params}``;
the item counts as followed when every check passes (IFEval's prompt-level
strict accuracy, Zhou et al. 2023, arXiv:2311.07911). Each check is a pure
function of the reply and its parameters, with its rule in its docstring.
The parameters each type takes are validated when the items are read, by
``corpora.sources.CHECK_PARAMETERS``, which reads them off these functions'
signatures (the parameters after the reply; one without a default is required).
The module lives in ``corpora`` for that reason: the evaluation
(``stages.metrics``) scores replies with it, and corpora never imports stages.

The replies are the decoded greedy text with surrounding whitespace removed
(``stages.evaluate``), scored as they are: no "loose" variants (IFEval's
second score that also tries the reply without its first or last line or
without markdown asterisks).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

BULLET = re.compile(r"^\s*[-*] ")  # "- item" or "* item"; "**bold**" and "-5" are not bullets
FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?```$", re.DOTALL)


def max_words(reply: str, n: int) -> bool:
    """1 to ``n`` words, a word being a run of non-whitespace characters ("don't" and "3.5" are one word).

    IFEval counts words with nltk's tokenizer; whitespace splitting needs no
    model data and counts punctuation as part of its word. An empty reply
    fails (IFEval would pass it): a model that has stopped answering must not
    score as following the instruction.
    """
    return 0 < len(reply.split()) <= n


def json_object(reply: str, keys: list[str] | None = None) -> bool:
    """The reply is one JSON object (nothing before or after it) holding every key of ``keys``.

    One enclosing markdown code fence (```` ```json ... ``` ````) is tolerated,
    as in IFEval's ``JsonFormat`` check: chat models fence JSON by habit.
    Further keys are allowed: ``keys`` lists the required ones.
    """
    text = reply.strip()
    if fenced := FENCE.match(text):
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, dict) and all(key in value for key in keys or [])


def lowercase(reply: str) -> bool:
    """At least one letter and no upper-case letter anywhere (``str.islower``): "NASA" fails, "" and "42" fail."""
    return reply.islower()


def bullets(reply: str, n: int) -> bool:
    """Exactly ``n`` lines that start (after indentation) with "- " or "* ".

    Other lines are allowed, as in IFEval's ``BulletListChecker``: an
    introduction, a closing line, blank lines between the items. Numbered
    lists ("1. ...") are not bullets.
    """
    return sum(bool(BULLET.match(line)) for line in reply.splitlines()) == n


def ends_with(reply: str, phrase: str) -> bool:
    """The reply ends with ``phrase``, case-insensitively; trailing whitespace and one final period are tolerated.

    IFEval's ``EndChecker`` compares in lower case too. "…Is there anything
    else?" passes for the phrase "Is there anything else?", and so do
    "…have a nice day." and "…have a nice day" for "Have a nice day";
    a closing quote or markdown after the phrase fails.
    """
    text, want = reply.rstrip().lower(), phrase.strip().lower()
    return bool(want) and (text.endswith(want) or (text.endswith(".") and text[:-1].endswith(want)))


# check type (the "type" field of a check) -> its function; parameters are the
# other fields of the check, passed as keyword arguments.
CHECKS: dict[str, Callable[..., bool]] = {
    "max_words": max_words,
    "json": json_object,
    "lowercase": lowercase,
    "bullets": bullets,
    "ends_with": ends_with,
}


def passes(reply: str, check: dict) -> bool:
    """One check, ``{"type": ..., **params}``, on a reply."""
    params = {k: v for k, v in check.items() if k != "type"}
    return CHECKS[check["type"]](reply, **params)


def followed(reply: str, checks: list[dict]) -> bool:
    """Every check passes (prompt-level strict accuracy)."""
    return all(passes(reply, check) for check in checks)
