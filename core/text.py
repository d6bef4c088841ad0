"""Text at the boundary: what comes in is made storable, what goes back out (errors, logs) is made harmless.

JSON may carry escaped lone surrogates ("\\ud800"), which no UTF-8 encoder accepts; they are replaced by U+FFFD as
the body is read, so nothing downstream meets them. A ticket needs some content (a letter, digit or symbol):
zero-width spaces, control characters and punctuation alone are not a ticket. User input echoed in an error or a
log line is cut to a short prefix with control characters escaped, so it can neither flood the log nor forge a line.
"""
from __future__ import annotations

import unicodedata
from typing import Any

REPLACEMENT = "\ufffd"
ECHO_CHARS = 120  # user input quoted in an error message or a log line


def clean(value: str) -> str:
    """`value` with every lone surrogate replaced by U+FFFD (a no-op for text UTF-8 can encode)."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return "".join(REPLACEMENT if "\ud800" <= ch <= "\udfff" else ch for ch in value)


def clean_json(value: Any) -> Any:
    """A parsed JSON value with `clean` applied to every string, keys included."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    if isinstance(value, dict):
        return {clean(k): clean_json(v) for k, v in value.items()}
    return value


def has_content(text: str) -> bool:
    """At least one letter, digit or symbol (emoji count): whitespace, punctuation, control and format characters
    (zero-width spaces, NUL) and replaced surrogates alone are not a ticket."""
    return any(unicodedata.category(ch)[0] in "LNS" and ch != REPLACEMENT for ch in text)


def brief(value: object, limit: int = ECHO_CHARS) -> str:
    """`value` for an error message or a log line: repr-escaped (no raw newline or control character) and cut to
    `limit` characters, saying how long it was."""
    text = value if isinstance(value, str) else repr(value)
    shown = text[:limit].encode("unicode_escape").decode("ascii") if not text[:limit].isprintable() else text[:limit]
    return shown + (f"… ({len(text)} characters)" if len(text) > limit else "")


def printable(message: str, limit: int = 1000) -> str:
    """A whole message (ours, with user input inside) made safe for one log line or one JSON error."""
    if len(message) > limit:
        message = message[:limit] + f"… ({len(message)} characters)"
    return message if message.isprintable() else "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                                                           for ch in message)
