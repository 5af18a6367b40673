"""The database password, kept out of every message and log line, whatever characters it holds.

Apart from `db` so that what only needs to scrub text (the event log, runner processes) never
imports the database drivers.
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qs, quote, unquote

_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)
# user:password@host…: the password is everything between the first ":" of the user part and the
# last "@" that a host follows, so a password may hold "/", "@", ":" or "?" unescaped.
USER_PASSWORD = re.compile(
    r"^(?P<user>[^:]+://[^:@/?]*):(?P<password>.*)@(?P<rest>[A-Za-z0-9.\-\[\]:%]*(?:[/?].*)?)$", re.DOTALL
)

_password: str | None = None
# What `scrub` looks for, worked out again when the password or PGPASSWORD changes.
_cached: tuple[tuple[str | None, str | None], list[str]] = ((None, None), [])


def remember(password: str | None) -> None:
    """The password of the database in use: `scrub` removes it from now on."""
    global _password
    _password = password


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`, whatever characters it holds."""
    url = USER_PASSWORD.sub(r"\g<user>:***@\g<rest>", url, count=1)
    return _QUERY_PASSWORD.sub(r"\g<1>***", url)


def _secrets() -> list[str]:
    global _cached
    key = (_password, os.environ.get("PGPASSWORD"))
    if key != _cached[0]:
        found = [secret for secret in key if secret]
        # Also as they may appear inside a URL: percent-encoded.
        forms = {form for secret in found for form in (secret, quote(secret, safe=""))}
        _cached = (key, sorted(forms, key=len, reverse=True))
    return _cached[1]


def has_secrets() -> bool:
    return bool(_secrets())


def scrub(text: str) -> str:
    """Remove the database password from a message, wherever a driver put it, in any form."""
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def url_password(url: str) -> str | None:
    """The password a Postgres URL holds (in its user part or as `?password=`), if any."""
    match = USER_PASSWORD.match(url)
    if match:
        return unquote(match.group("password"))
    query = url.partition("?")[2]
    return parse_qs(query).get("password", [None])[0] if query else None
