"""Secrets never reach a log line or the state file.

Every secret the service reads (API keys, passwords, tokens, a webhook URL) is registered here
as it is read; `redact` replaces each of them, and its URL-encoded form, with `<redacted>` in
any text. The logging filter applies it to every record, so a service's error body that echoes
a key (a 401 that quotes the GenieKey) is logged without it, and the delivery loop stores
`last_error` through it too.
"""

from __future__ import annotations

import logging
import re
import urllib.parse

MASK = "<redacted>"
MIN_LENGTH = 4  # shorter values are too common in ordinary text to replace
_secrets: set[str] = set()
_ordered: list[str] = []  # longest first, so that a secret inside another is not half replaced


def secret(value: str | None) -> str | None:
    """Register a secret; returns it unchanged."""
    if value and len(value) >= MIN_LENGTH:
        for form in (value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)):
            if form not in _secrets:
                _secrets.add(form)
                _ordered.append(form)
        _ordered.sort(key=len, reverse=True)
    return value


# user:password@ in any URL we print (a webhook URL, an Airflow URL with credentials): stripped, whether
# or not it was registered
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@?#]+@")


def redact(text: str) -> str:
    """Every registered secret (and its encoded forms) replaced by <redacted>, and URL userinfo stripped.
    Redact first, then cut: a secret across a cut would leave its prefix."""
    for s in _ordered:
        if s in text:
            text = text.replace(s, MASK)
    return _USERINFO.sub(r"\1", text) if "@" in text else text


class RedactingFilter(logging.Filter):
    """On a handler: the message (with its arguments) and any traceback text, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ordered:
            record.msg, record.args = redact(record.getMessage()), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


def install() -> None:
    """Redact on every handler of the root logger (call after logging is configured)."""
    for h in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
