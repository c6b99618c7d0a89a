"""Text from outside, made fit to store and show (RELIABILITY 28).

A gateway's words reach members only through `bounded_details`: cleaned of control characters,
with our key and anything shaped like a credential replaced, and cut to a few hundred
characters. What a gateway answered reaches admins only through `redact_value`, which walks a
parsed JSON answer and redacts every string in it, keys included.

The functions assume the worst of their input: an HTML page, megabytes of text, control and
bidirectional-override characters, lone surrogates, or an echo of the key that sent the request
(whole, JSON-escaped, URL-encoded, or a long piece of it).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any
from urllib.parse import quote, quote_plus

from django.views.decorators.debug import sensitive_variables

REDACTED = "[redacted]"
# What a member sees of a gateway's own words, at most.
DETAILS_CHARS = 300
# How much of a text is looked at before cleaning; a secret that starts within the first
# DETAILS_CHARS characters always ends within this many, so cutting never leaves a piece of one.
SOURCE_CHARS = 4_000
# Keys shorter than this are not looked for: replacing every "abc" would garble the text, and a
# key that short protects nothing anyway.
MIN_SECRET_CHARS = 4
# A run of this many characters of the key, anywhere, counts as the key: a gateway that echoes a
# truncated or partly masked key still gives most of it away.
FRAGMENT_CHARS = 12

# The characters of a token in an Authorization header or a query string.
_TOKEN = r"[A-Za-z0-9._~+/=-]"
# A credential-looking value: 8+ token characters with a digit or an inner punctuation mark, or
# 20+ of any. The rule keeps prose such as "Bearer authentication." or "token: expired" readable
# while real keys, which are long and mixed, are caught.
_TOKEN_VALUE = rf"(?:(?={_TOKEN}*(?:[0-9_~+/-]|[.=]{_TOKEN})){_TOKEN}{{8,}}|{_TOKEN}{{20,}})"

# Names of fields that carry credentials, in JSON keys, query strings and prose ("api_key=...").
CREDENTIAL_FIELD = re.compile(
    r"(?:x-)?api[_-]?key|(?:access|auth|refresh|id)[_-]?token|token|client[_-]?secret|secret"
    r"|password|authorization",
    re.IGNORECASE,
)

# Shapes of credentials we did not issue ourselves but must never show either; our own key is
# matched exactly (see `redact`), so these only have to catch what a gateway adds.
PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # An Authorization value: "Bearer <token>". The scheme word stays, so the text still reads.
    (re.compile(rf"\b(Bearer\s+){_TOKEN_VALUE}", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    # Key-style tokens: sk-, pk-, rk- or omx_ followed by 16+ token characters.
    (re.compile(r"(?<![A-Za-z0-9])(?:sk|pk|rk|omx)[-_][A-Za-z0-9_-]{16,}"), REDACTED),
    # JSON Web Tokens: three base64url parts, the first an encoded "{".
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    # An assignment to a credential field: api_key=..., "access_token": "...", secret: ...
    (
        re.compile(
            rf"""(\b(?:{CREDENTIAL_FIELD.pattern})["']?\s*[:=]\s*["']?){_TOKEN_VALUE}""",
            re.IGNORECASE,
        ),
        rf"\g<1>{REDACTED}",
    ),
)

# Characters that change how text displays without being text: bidirectional overrides and
# isolates, and the byte order mark. Control characters (Cc) and surrogates (Cs) go as well.
_INVISIBLE = dict.fromkeys(
    [0x061C, 0x200E, 0x200F, 0xFEFF, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)
_SPACES = re.compile(r" {2,}")


def clean(text: str) -> str:
    """`text` without control characters, surrogates or direction overrides; line breaks and
    tabs become spaces. Everything else, Chinese included, is kept as it is."""
    out = []
    for char in text.translate(_INVISIBLE):
        category = unicodedata.category(char)
        if char in "\t\n\r" or category in ("Zl", "Zp"):
            out.append(" ")
        elif category not in ("Cc", "Cs"):
            out.append(char)
    return _SPACES.sub(" ", "".join(out)).strip()


@sensitive_variables()
def _forms(secret: str) -> set[str]:
    """The ways the key can appear in an answer: as itself, JSON-escaped, URL-encoded."""
    forms = {secret, quote(secret, safe=""), quote_plus(secret)}
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        forms |= {escaped, escaped.replace("/", "\\/")}
    return forms


@sensitive_variables()
def _redact_secret(text: str, secret: str) -> str:
    spans: list[tuple[int, int]] = []
    for form in _forms(secret):
        size = min(len(form), FRAGMENT_CHARS)
        for piece in {form[i : i + size] for i in range(len(form) - size + 1)}:
            start = text.find(piece)
            while start != -1:
                spans.append((start, start + size))
                start = text.find(piece, start + 1)
    if not spans:
        return text
    out: list[str] = []
    done = 0  # end of the text already copied or redacted
    for start, end in sorted(spans):
        if start > done or not out:  # a new run; one that overlaps or touches just grows
            out += [text[done:start], REDACTED]
        done = max(done, end)
    out.append(text[done:])
    return "".join(out)


@sensitive_variables("secret")
def redact(text: str, secret: str | None) -> str:
    """`text` with the key `secret` (whole, escaped, or any FRAGMENT_CHARS-long piece of it) and
    every credential-shaped string (see PATTERNS) replaced with "[redacted]"."""
    if secret and len(secret) >= MIN_SECRET_CHARS:
        text = _redact_secret(text, secret)
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


@sensitive_variables("secret")
def redact_value(value: Any, secret: str | None) -> Any:
    """A copy of a parsed JSON answer (or a text) with every string redacted, dictionary keys
    included; the value of a field named like a credential ("api_key", "token") is replaced
    whole. Walks without recursion, so an answer nested a thousand deep is fine."""
    if isinstance(value, str):
        return redact(value, secret)
    if not isinstance(value, dict | list | tuple):
        return value
    root: dict | list = {} if isinstance(value, dict) else []
    pending: list[tuple[Any, dict | list]] = [(value, root)]
    while pending:
        source, target = pending.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            if isinstance(item, dict | list | tuple):
                copy: Any = {} if isinstance(item, dict) else []
                pending.append((item, copy))
            elif isinstance(item, str):
                credential = isinstance(key, str) and CREDENTIAL_FIELD.fullmatch(key)
                copy = REDACTED if credential and item else redact(item, secret)
            else:
                copy = item
            if isinstance(target, dict):
                target[redact(key, secret) if isinstance(key, str) else key] = copy
            else:
                target.append(copy)
    return root


@sensitive_variables("secret")
def bounded_details(text: Any, secret: str | None = None, limit: int = DETAILS_CHARS) -> str | None:
    """A gateway's own words as members may see them, or None when there are none.

    Only strings (and plain numbers, which some gateways put in a message field) count. The text
    is cleaned (`clean`), redacted (`redact`), and cut to `limit` characters, the last being an
    ellipsis. Redacting comes before cutting, so a key at the cut cannot leave a piece behind.
    """
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        return None
    try:
        text = str(text)[:SOURCE_CHARS]
    except ValueError:  # an integer too long to print
        return None
    text = redact(clean(text), secret)
    if not text:
        return None
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def describe_answer(content: bytes, content_type: str | None, status_code: int | None) -> str:
    """What kind of answer a body that is not JSON was, in words, without any of its content:
    "an HTML page (HTTP 500)", "an empty answer (HTTP 502)", "a non-JSON answer of 1,234 bytes
    (HTTP 200)"."""
    http = f" (HTTP {status_code})" if status_code else ""
    if not content.strip():
        return f"an empty answer{http}"
    head = content[:1024].lstrip().lower()
    if "html" in (content_type or "").lower() or head.startswith((b"<!doctype", b"<html")):
        return f"an HTML page{http}"
    size = len(content)
    return f"a non-JSON answer of {size:,} byte{'s' if size != 1 else ''}{http}"
