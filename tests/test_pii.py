"""corpora.pii: each type's matches, its look-alikes that must stay, type order and selection."""

from __future__ import annotations

import pytest

from corpora.pii import PII_TYPES, PLACEHOLDERS, scrub_pii

ZERO = dict.fromkeys(PII_TYPES, 0)


def only(kind: str, n: int = 1) -> dict[str, int]:
    return {**ZERO, kind: n}


def assert_replaced(kind: str, text: str, expected: str) -> None:
    """``text`` scrubs to ``expected``, counting one ``kind`` per placeholder in it."""
    assert scrub_pii(text) == (expected, only(kind, expected.count(PLACEHOLDERS[kind])))


def assert_unchanged(text: str) -> None:
    out, counts = scrub_pii(text)
    assert out == text
    assert counts == ZERO


def test_constants():
    assert PII_TYPES == ("email", "phone", "ipv4", "ipv6", "card", "key")
    assert PLACEHOLDERS == {
        "email": "<EMAIL>", "phone": "<PHONE>", "ipv4": "<IPV4>",
        "ipv6": "<IPV6>", "card": "<CARD>", "key": "<KEY>",
    }


# --- email -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected", "n"), [
    ("Write to bob@example.com today.", "Write to <EMAIL> today.", 1),
    ("first.last+newsletter@mail.sub.example.co.uk.", "<EMAIL>.", 1),
    ("<jane_doe99@corp-mail.example.org>", "<<EMAIL>>", 1),
    ("a@example.com, b.c@example.net", "<EMAIL>, <EMAIL>", 2),
    ("mailto:ops%team@example.io", "mailto:<EMAIL>", 1),
])
def test_email_replaced(text, expected, n):
    assert scrub_pii(text) == (expected, only("email", n))


@pytest.mark.parametrize("text", [
    "@property\ndef name(self): ...",
    "@app.route('/index')",
    "ssh to root@localhost or admin@host",
    "y = a@b",
    "pip install pkg @ git+https://example.com/pkg",
])
def test_email_lookalikes_kept(text):
    assert_unchanged(text)


# --- phone -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Call +44 20 7946 0958 now", "Call <PHONE> now"),
    ("Call +1-202-555-0143.", "Call <PHONE>."),
    ("UK: +44 (0)20 7946 0958", "UK: <PHONE>"),
    ("E.164: +442079460958", "E.164: <PHONE>"),
    ("Office (202) 555-0143", "Office <PHONE>"),
    ("Office 202-555-0143, fax 202.555.0143", "Office <PHONE>, fax <PHONE>"),
    ("Toll free 1-800-555-0199", "Toll free <PHONE>"),
    ("Desk (ext. in brackets: (202-555-0143))", "Desk (ext. in brackets: (<PHONE>))"),
])
def test_phone_replaced(text, expected):
    assert_replaced("phone", text, expected)


@pytest.mark.parametrize("text", [
    "Released on 2024-01-15 at 12:30:45.",
    "Dates 2024.01.15 and 15.01.2024",
    "id = 1234567890",
    "| 1234567890 | 9876543210 |",
    "listen on port 8080 since 2019",
    "version 2.10.3 and 10.0.19041.1",
    "SSN-like 123-45-6789 and part 000-123-4567",
    "202-555.0143 mixes separators",
    "ISBN 978-3-16-148410-0",
    "x = a + 1 2 3",
    "offset +12 34",
    "moved +1 2 3 rows",  # phone-shaped, but too few digits
    "range +1.5-2.0 dB",
    "+1 234 5678 9012 3456 7890 is longer than E.164 allows",
])
def test_phone_lookalikes_kept(text):
    assert_unchanged(text)


# --- ipv4 --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Server at 10.0.0.5.", "Server at <IPV4>."),
    ("ping 8.8.8.8 and 192.168.1.10", "ping <IPV4> and <IPV4>"),
    ("subnet 172.16.0.0/12", "subnet <IPV4>/12"),
    ("host=203.0.113.255:8080", "host=<IPV4>:8080"),
    ("build server 10.1.2.3", "build server <IPV4>"),
])
def test_ipv4_replaced(text, expected):
    assert_replaced("ipv4", text, expected)


@pytest.mark.parametrize("text", [
    "version 1.2.3.4",
    "Version: 1.2.3.4",
    "v1.2.3.4",
    "rev 4.3.2.1",
    "release 10.0.19041.1",
    "Python 3.11.7",
    "1.2.3",
    "1.2.3.4.5",
    "pkg==1.2.3.4 and pkg>=2.0.0.1",
    "localhost is 127.0.0.1, also 127.8.9.10",
    "bind 0.0.0.0",
    "256.1.1.1 and 1.2.3.999",
    "01.02.03.04",
])
def test_ipv4_lookalikes_kept(text):
    assert_unchanged(text)


# --- ipv6 --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("addr 2001:db8::1 ok", "addr <IPV6> ok"),
    ("link-local fe80::1ff:fe23:4567:890a.", "link-local <IPV6>."),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "<IPV6>"),
    ("url http://[2001:db8::1]:8080/", "url http://[<IPV6>]:8080/"),
    ("prefix fe80::/10", "prefix <IPV6>/10"),
])
def test_ipv6_replaced(text, expected):
    assert_replaced("ipv6", text, expected)


@pytest.mark.parametrize("text", [
    "at 12:30:45 sharp",
    "std::vector<int> v; std::map m;",
    "b = a[::2]; c = a[1::2]; d = a[10::20]",
    "C++ a::b and A::f()",
    "loopback ::1 and any ::",
    "mac 00:1a:2b:3c:4d:5e",
])
def test_ipv6_lookalikes_kept(text):
    assert_unchanged(text)


# --- card --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Visa 4111 1111 1111 1111 exp", "Visa <CARD> exp"),
    ("MC 5500-0000-0000-0004.", "MC <CARD>."),
    ("raw 4111111111111111", "raw <CARD>"),
    ("Amex 378282246310005 / 3782 822463 10005", "Amex <CARD> / <CARD>"),
])
def test_card_replaced(text, expected):
    assert_replaced("card", text, expected)


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",  # fails Luhn
    "4111111111111112",
    "ts 1700000000000",  # Luhn-valid, but no card network starts with 1
    "0000 0000 0000 0000",
    "4111 1111-1111 1111",  # mixed separators
    "41111111111111111111111",  # too long
])
def test_card_lookalikes_kept(text):
    assert_unchanged(text)


# --- key ---------------------------------------------------------------------

@pytest.mark.parametrize("token", [
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "gho_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "ghs_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
    "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz",
    "sk-abc123def456ghi789jkl012mno",
    "sk-proj-Ab3dEf6hIj9lMn2pQr5tUv8x",
    "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
    "AIzaSyA1234567890abcdefghijklmnopqrstuv",
    "hf_abcdefghijklmnopqrstuvwxyzABCDEFGH",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
])
def test_prefixed_key_replaced(token):
    assert scrub_pii(f"use {token} here") == ("use <KEY> here", only("key"))


@pytest.mark.parametrize(("text", "expected"), [
    ('api_key = "abcd1234efgh5678ijkl"', 'api_key = "<KEY>"'),
    ("token: abcd1234efgh5678ijkl", "token: <KEY>"),
    ("secret=abcd1234efgh5678ijkl\n", "secret=<KEY>\n"),
    ("password = 'hunter2hunter2hunter2'", "password = '<KEY>'"),
    ('{"api_key": "abcd1234efgh5678ijkl"}', '{"api_key": "<KEY>"}'),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
     "AWS_SECRET_ACCESS_KEY=<KEY>"),
    ("export GITHUB_TOKEN=abcdEFGH1234ijklMNOP", "export GITHUB_TOKEN=<KEY>"),
])
def test_assigned_key_value_replaced(text, expected):
    assert scrub_pii(text) == (expected, only("key"))


@pytest.mark.parametrize("text", [
    "Fixed in commit 3f2a9c1.",
    "commit 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a3f",
    "request id 123e4567-e89b-12d3-a456-426614174000",
    "tokenizer = AutoTokenizer.from_pretrained(name)",
    "token = settings.API_TOKEN_2",
    "password = get_password_from_vault()",
    "api_key = YOUR_API_KEY_GOES_HERE",
    "max_tokens: 1234567890123456",
    "password = short1",
    "scikit is sk-learn-is-the-short-name-for-it",
    "the task-oriented approach; AKIA is a prefix",
])
def test_key_lookalikes_kept(text):
    assert_unchanged(text)


# --- order, selection, whole documents --------------------------------------

@pytest.mark.parametrize(("text", "expected", "kind"), [
    # A phone-shaped piece of a secret: key must run first or the value breaks.
    ('token = "202-555-0143-abcdef-1234"', 'token = "<KEY>"', "key"),
    # A phone-shaped local part: email must run before phone.
    ("sms 202-555-0143@sms.example.com", "sms <EMAIL>", "email"),
    # An embedded quad: IPv6 must run before IPv4.
    ("mapped ::ffff:192.0.2.1", "mapped <IPV6>", "ipv6"),
])
def test_order_avoids_partial_overlaps(text, expected, kind):
    assert scrub_pii(text) == (expected, only(kind))


def test_mixed_paragraph():
    text = (
        "Contact Jane (jane.doe+hr@example.com, +1-202-555-0143) about host "
        "10.20.30.40 / 2001:db8::42. Runs version 1.2.3.4 on Python 3.11.7, "
        "binds 127.0.0.1, card 4111 1111 1111 1111, api_key = \"abcd1234efgh5678ijkl\", "
        "fixed in commit 3f2a9c1 on 2024-01-15 at 12:30:45."
    )
    expected = (
        "Contact Jane (<EMAIL>, <PHONE>) about host "
        "<IPV4> / <IPV6>. Runs version 1.2.3.4 on Python 3.11.7, "
        "binds 127.0.0.1, card <CARD>, api_key = \"<KEY>\", "
        "fixed in commit 3f2a9c1 on 2024-01-15 at 12:30:45."
    )
    out, counts = scrub_pii(text)
    assert out == expected
    assert counts == dict.fromkeys(PII_TYPES, 1)
    # Placeholders contain nothing a second pass would match.
    assert scrub_pii(out) == (out, ZERO)


def test_disabled_type_left_alone():
    text = "mail bob@example.com from 10.1.2.3"
    assert scrub_pii(text, types=("ipv4",)) == ("mail bob@example.com from <IPV4>", only("ipv4"))
    assert scrub_pii(text, types=["email"]) == ("mail <EMAIL> from 10.1.2.3", only("email"))
    assert scrub_pii(text, types="email") == ("mail <EMAIL> from 10.1.2.3", only("email"))
    assert scrub_pii(text, types=()) == (text, ZERO)


def test_disabling_key_exposes_the_pieces_it_would_have_hidden():
    out, counts = scrub_pii('token = "202-555-0143-abcdef-1234"', types=("phone",))
    assert out == 'token = "<PHONE>-abcdef-1234"'
    assert counts == only("phone")


def test_unknown_type_rejected():
    with pytest.raises(ValueError, match="passport"):
        scrub_pii("x", types=("email", "passport"))
