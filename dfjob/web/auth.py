"""Who may do what: the network allow-list, bearer tokens, and the dashboard's session.

- The client's network is checked first, on the socket peer (`REMOTE_ADDR` as waitress reports
  it; never `X-Forwarded-For`, which any client can write). An IPv4 client seen on an IPv6 socket
  (`::ffff:10.0.0.5`) is checked as the IPv4 address it is.
- `Authorization: Bearer TOKEN` is compared in constant time with every configured token, all of
  them every time, so neither the answer nor its timing says which one came close.
- Writes need a token and are refused outright (403) when none is configured; reads need one
  unless `serve.public_read`. A missing and a wrong token get the same 401.
- The dashboard signs in with a token once: a Flask session cookie (signed, HttpOnly,
  SameSite=Strict) records that. Its signing key is random per process: a restart, or a token
  removed from the config and the server restarted, signs everyone out, and no key is ever
  written anywhere. Every form carries the session's CSRF token, checked on each POST.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flask import request, session

from dfjob.config import ServeSettings, Settings, check_token, resolve_path
from dfjob.errors import DfjobError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
SIGNED_IN = "signed_in"
CSRF = "csrf"
NO_ACCESS = "a valid bearer token is required"


class Refused(Exception):
    """A request refused for who or where it comes from: 401 or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def load_tokens(settings: Settings) -> tuple[str, ...]:
    """`serve.tokens` and the lines of `serve.token_file` (blank lines and `#` comments skipped)."""
    serve = settings.serve
    tokens = list(serve.tokens)
    if serve.token_file:
        path = Path(resolve_path(settings, serve.token_file))
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DfjobError(f"serve.token_file: cannot read {path}: {exc.__class__.__name__}") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(check_token(line, f"serve.token_file {path}"))
    return tuple(tokens)


@dataclass(frozen=True)
class Access:
    """The rules of one server: its tokens, whether reading is public, and the allowed networks."""

    tokens: tuple[bytes, ...]
    public_read: bool
    networks: tuple[Network, ...]

    @classmethod
    def from_settings(cls, serve: ServeSettings, tokens: Sequence[str]) -> Access:
        networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in serve.allow_cidrs)
        return cls(tuple(token.encode() for token in tokens), serve.public_read, networks)

    def client_allowed(self, address: str | None) -> bool:
        """The socket peer is inside one of the allowed networks."""
        try:
            ip = ipaddress.ip_address((address or "").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == network.version and ip in network for network in self.networks)

    def token_valid(self, given: str | None) -> bool:
        """`given` equals a configured token; every token is compared, in constant time each."""
        if given is None:
            return False
        candidate = given.encode("utf-8", "surrogateescape")
        found = False
        for token in self.tokens:
            found |= hmac.compare_digest(candidate, token)
        return found

    def require_read(self) -> None:
        """Reading: public, or a good bearer token, or a signed-in session."""
        if self.public_read or signed_in() or self.token_valid(bearer_token()):
            return
        raise Refused(401, NO_ACCESS)

    def require_write(self) -> None:
        """Writing through the API: a good bearer token, and never without any configured."""
        if not self.tokens:
            raise Refused(403, "writes are disabled: no token is configured (serve.tokens or serve.token_file)")
        if not self.token_valid(bearer_token()):
            raise Refused(401, NO_ACCESS)

    def can_sign_in(self) -> bool:
        return bool(self.tokens)


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def signed_in() -> bool:
    return session.get(SIGNED_IN) is True


def sign_in() -> None:
    """A fresh session (and CSRF token) for a user who just gave a good token."""
    session.clear()
    session[SIGNED_IN] = True
    session[CSRF] = secrets.token_urlsafe(32)


def sign_out() -> None:
    session.clear()


def csrf_token() -> str:
    """The session's CSRF token, made on first use (an anonymous session has one for /login)."""
    token = session.get(CSRF)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF] = token
    return token


def check_csrf() -> None:
    """A form post must carry the session's CSRF token: a page elsewhere cannot post for a user."""
    expected = session.get(CSRF)
    given = request.form.get(CSRF, "")
    if not isinstance(expected, str) or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Refused(403, "the form's CSRF token is missing or wrong: reload the page and try again")
