"""PII scrubbing: replace e-mails, phones, IPs, card numbers and secrets by placeholders.

    text, counts = scrub_pii("Mail bob@example.com from 10.1.2.3")
    # text   == "Mail <EMAIL> from <IPV4>"
    # counts == {"email": 1, "phone": 0, "ipv4": 1, "ipv6": 0, "card": 0, "key": 0}
    text, counts = scrub_pii(text, types=("email", "key"))  # only these two

``counts`` always holds every type of ``PII_TYPES`` (0 when disabled or not
found), so callers can sum or log it without ``.get``.

The corpus is technical docs, legal text and company knowledge, so the rules
lean towards leaving code and numbers alone:

- email needs a dotted domain (``user@host`` and ``@decorator`` stay).
- phone needs a leading ``+`` or the US 3-3-4 shape; bare digit runs, dates,
  times and version numbers stay.
- ipv4 is a dotted quad not inside a longer dotted run and not after a version
  word (``version``, ``v``, ``release``, ``Python``, ``==`` ...). Loopback
  (127/8) and 0.0.0.0 are documentation, not personal, and stay.
- ipv6 is what ``ipaddress`` accepts, minus ``::1``/``::`` and short forms such
  as ``1::2`` that are far more often slices or C++ scopes than addresses.
- card is 13-19 digits (or 4-4-4-4 / 4-6-5 / 4-6-4 groups) that start with 2-6
  (every major network) and pass Luhn.
- key is a token with a well-known vendor prefix, or the value (never the
  name) of an assignment such as ``api_key = "..."`` that contains a digit.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable

PII_TYPES = ("email", "phone", "ipv4", "ipv6", "card", "key")
PLACEHOLDERS = {
    "email": "<EMAIL>", "phone": "<PHONE>", "ipv4": "<IPV4>",
    "ipv6": "<IPV6>", "card": "<CARD>", "key": "<KEY>",
}

# Secrets first: a token can hold digit runs that look like phones or cards.
# E-mails next: their local parts can hold phones or dotted numbers. Cards
# before phones (a grouped card contains phone-like pieces), IPv6 before IPv4
# (``::ffff:10.0.0.1`` embeds a quad).
_ORDER = ("key", "email", "card", "ipv6", "ipv4", "phone")

_B64 = r"[A-Za-z0-9_-]"
_KEY_PREFIXED = re.compile(
    rf"""(?<!{_B64})(?:
        (?:AKIA|ASIA)[0-9A-Z]{{16}}(?![0-9A-Za-z])     # AWS access key id
      | gh[pousr]_[A-Za-z0-9]{{20,}}                    # GitHub tokens
      | github_pat_[A-Za-z0-9_]{{22,}}
      | sk-(?:proj-|ant-)?(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{{20,}}  # OpenAI-style
      | xox[abposr]-[A-Za-z0-9-]{{10,}}                 # Slack
      | AIza{_B64}{{35}}(?!{_B64})                      # Google API key
      | hf_[A-Za-z0-9]{{30,}}                           # Hugging Face
      | eyJ{_B64}+\.eyJ{_B64}+\.{_B64}*                 # JWT (header.payload.sig)
    )""",
    re.X,
)
# `name = value`: the name may carry a prefix (AWS_SECRET_ACCESS_KEY, db_password)
# but no suffix, so `tokenizer = ...` and `max_tokens: 512` are not assignments.
_KEY_ASSIGNED = re.compile(
    r"""(?<![A-Za-z0-9])(?P<name>[A-Za-z0-9_]*?
        (?:api[_-]?key|access[_-]?key|secret(?:[_-]?key)?|token|password|passwd|pwd)
        ["']?\s*[:=]\s*["']?)
    (?P<value>[A-Za-z0-9_\-/+=.]{16,})""",
    re.X | re.I,
)
# A dotted identifier (settings.API_TOKEN) is a reference to a secret, not one.
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![\w-])"
)

# Contiguous, or grouped like the card networks print them (Visa/MC 4-4-4-4,
# Amex 4-6-5, Diners 4-6-4). One separator throughout.
_CARD = re.compile(
    r"""(?<![\w.-])(?:
        \d{13,19}
      | \d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}
      | \d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5}
    )(?![\w-]|\.\d)""",
    re.X,
)

# International numbers need the `+`: without it, digit groups are too often
# part numbers, table cells or ids. Each group after the country code needs a
# separator (or follows a parenthesised trunk code such as "(0)"), which keeps
# backtracking linear. US numbers: (202) 555-0143, 202-555-0143, 202.555.0143
# with one separator throughout, an optional 1- trunk prefix and an area code
# that cannot start with 0/1.
_PHONE = re.compile(
    r"""(?:
        (?<![\w+])\+\d{1,3}
            (?:(?:[ .-]|(?<=\)))\d{1,8}|[ .-]?\(\d{1,4}\)){2,6}
      | (?<![\w+])\+\d{8,15}
      | (?<![\w.+-])(?:1[-.\ ]?)?\([2-9]\d\d\)\ ?\d{3}[-.\ ]\d{4}
      | (?<![\w.+-])(?:1[-.\ ])?[2-9]\d\d(?P<sep>[-.])\d{3}(?P=sep)\d{4}
    )(?!\w|[.-]\d)""",
    re.X,
)

# Not inside a longer dotted run: 10.0.19041.1 and 1.2.3.4.5 are versions.
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_VERSION_CONTEXT = re.compile(
    r"(?:\b(?:v|ver|version|versions|release|rel|rev|revision|build|python|"
    r"firmware|kernel|patch|update)\.?|[=<>~!]=)[\s:=/]*$",
    re.I,
)

_IPV6 = re.compile(
    r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}"
    r"(?:(?<=[0-9A-Fa-f])(?:\.\d{1,3}){3})?(?![\w:]|\.\d)"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _key_prefixed(m: re.Match[str]) -> str | None:
    return PLACEHOLDERS["key"]


def _key_assigned(m: re.Match[str]) -> str | None:
    value = m["value"]
    if not any(c.isdigit() for c in value) or _DOTTED_NAME.fullmatch(value):
        return None
    return m["name"] + PLACEHOLDERS["key"]


def _card(m: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", m[0])
    return PLACEHOLDERS["card"] if digits[0] in "23456" and _luhn_ok(digits) else None


def _phone(m: re.Match[str]) -> str | None:
    # Digit count bounds of E.164 (the US forms always have 10).
    n = sum(c.isdigit() for c in m[0])
    return PLACEHOLDERS["phone"] if 8 <= n <= 15 else None


def _ipv4(m: re.Match[str]) -> str | None:
    try:
        ip = ipaddress.IPv4Address(m[0])  # rejects octets > 255 and leading zeros
    except ValueError:
        return None
    if ip.is_loopback or ip.is_unspecified:
        return None
    before = m.string[max(0, m.start() - 24) : m.start()]
    return None if _VERSION_CONTEXT.search(before) else PLACEHOLDERS["ipv4"]


def _ipv6_plausible(text: str) -> bool:
    # Compressed forms with two short decimal-looking groups (1::2, 10::20) are
    # slices or C++ scopes; real ones carry a 4-digit or hex-lettered group.
    if "::" not in text:
        return True
    groups = [g for g in re.split(r"[:.]", text) if g]
    return len(groups) >= 3 or any(
        len(g) == 4 or (len(g) >= 3 and re.search(r"[A-Fa-f]", g)) for g in groups
    )


def _ipv6(m: re.Match[str]) -> str | None:
    try:
        ip = ipaddress.IPv6Address(m[0])
    except ValueError:
        return None  # times (12:30:45), MACs, slices
    if ip.is_loopback or ip.is_unspecified or not _ipv6_plausible(m[0]):
        return None
    return PLACEHOLDERS["ipv6"]


def _email(m: re.Match[str]) -> str | None:
    return PLACEHOLDERS["email"]


_Replacer = Callable[[re.Match[str]], "str | None"]
_RULES: dict[str, list[tuple[re.Pattern[str], _Replacer]]] = {
    "key": [(_KEY_PREFIXED, _key_prefixed), (_KEY_ASSIGNED, _key_assigned)],
    "email": [(_EMAIL, _email)],
    "card": [(_CARD, _card)],
    "ipv6": [(_IPV6, _ipv6)],
    "ipv4": [(_IPV4, _ipv4)],
    "phone": [(_PHONE, _phone)],
}


def _apply(pattern: re.Pattern[str], replace: _Replacer, text: str) -> tuple[str, int]:
    """One pattern over the text; a replacer returning None keeps the match."""
    count = 0

    def sub(m: re.Match[str]) -> str:
        nonlocal count
        new = replace(m)
        if new is None:
            return m[0]
        count += 1
        return new

    return pattern.sub(sub, text), count


def scrub_pii(text: str, types: Iterable[str] = PII_TYPES) -> tuple[str, dict[str, int]]:
    """Return ``text`` with every match of the enabled ``types`` replaced by its
    placeholder, and the number of replacements per type.

    The counts hold every type of ``PII_TYPES``, 0 for disabled ones. A single
    type name may be passed as a string. Unknown names raise ``ValueError``.
    """
    enabled = {types} if isinstance(types, str) else set(types)
    unknown = enabled - set(PII_TYPES)
    if unknown:
        raise ValueError(f"unknown PII types {sorted(unknown)}; known: {PII_TYPES}")
    counts = dict.fromkeys(PII_TYPES, 0)
    for kind in _ORDER:
        if kind not in enabled:
            continue
        for pattern, replace in _RULES[kind]:
            text, n = _apply(pattern, replace, text)
            counts[kind] += n
    return text, counts
