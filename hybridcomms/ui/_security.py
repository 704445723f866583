"""How the dashboard defends itself: a token, the Host header, cross-site requests, what the browser
may run.

Everything the dashboard shows was written by producers, and a producer may be hostile; the dashboard
also listens on a port that every local user (and every web page the user visits) can reach. So:

- **a token** (random, printed at start, as Jupyter does) is needed for every page: the printed URL
  carries it once, and the dashboard answers with a cookie (HttpOnly, SameSite=Strict) and a redirect to
  the same page without it;
- **a secret path prefix** (``/s/<secret>/``, derived from the token): every page lives under it and
  the cookie is scoped to it (``Path=/s/<secret>/``). Cookies are scoped to a host, not a port, and
  SameSite treats every port of 127.0.0.1 as one site: without the prefix a co-tenant's server on
  another port of this machine would receive the cookie with any request the browser makes to it. It
  cannot know the prefix, so the browser never sends the cookie there; and the cookie's value is
  itself derived (an HMAC of the token), so even a leaked cookie does not reveal the token;
- **the Host header** must name this machine's loopback (or the address it was told to bind), so a
  page of another site that resolves its own name to 127.0.0.1 (DNS rebinding) is refused;
- **state changes** (only with ``--allow-actions``) are POSTs of a form carrying a CSRF token derived
  from the session token, from this origin (``Origin``, ``Sec-Fetch-Site``), never GETs;
- **the Content-Security-Policy** allows scripts and styles from the dashboard itself only (no inline
  script, no ``eval``, no other origin), so a ``<script>`` that got past the escaping would not run.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from urllib.parse import quote

COOKIE = "hybridcomms_ui"
#: Where the pages live: ``/s/<secret>/`` (`Guard.prefix`).
PREFIX_ROOT = "/s/"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # not no-referrer: a form POST would carry "Origin: null"
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "cache-control": "no-store",
}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Guard:
    """The checks of one running dashboard."""

    def __init__(self, token: str, hosts: Iterable[str] = LOOPBACK, allow_actions: bool = False) -> None:
        self.token = token
        self.hosts = frozenset(h.lower().strip("[]") for h in hosts)
        self.allow_actions = allow_actions
        self.csrf = _derive(token, b"hybridcomms-ui-csrf")
        #: The secret path every page lives under, without its trailing slash: ``/s/<secret>``.
        self.prefix = PREFIX_ROOT + _derive(token, b"hybridcomms-ui-path")[:32]
        #: What the cookie holds: not the token itself (a cookie that leaks does not give the token).
        self.session = _derive(token, b"hybridcomms-ui-session")

    def start_url(self, origin: str) -> str:
        """The address printed at start: ``origin`` (``http://host:port``), the prefix, the token."""
        return f"{origin}{self.prefix}/?token={self.token}"

    def session_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.session.encode())

    def in_prefix(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    def local_target(self, path: str, query: str) -> str:
        """Where a login redirects to: ``path`` (a request's path, under the prefix) made a path of
        this dashboard: the prefix, then the rest without leading slashes or backslashes (never a
        scheme or a host: ``//evil.example/x`` stays a path under the prefix), percent-encoded."""
        rest = path[len(self.prefix) :] if self.in_prefix(path) else ""
        rest = rest.lstrip("/\\")
        target = quote(f"{self.prefix}/{rest}", safe="/-._~!$&'()*+,;=:@")
        return target + (f"?{query}" if query else "")

    def host_ok(self, host_header: str | None) -> bool:
        """Whether the Host header names an address this dashboard answers for (any port)."""
        if not host_header:
            return False
        return _host_name(host_header.strip().lower()) in self.hosts

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def csrf_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())

    def same_origin(self, origin: str | None, fetch_site: str | None, host_header: str | None) -> bool:
        """Whether a POST comes from a page of this dashboard: ``Sec-Fetch-Site`` (when the browser
        sends it) is ``same-origin``, and ``Origin`` (when sent) is this very host."""
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return False
        if origin is None:
            return True
        return origin.lower() in {f"http://{(host_header or '').lower()}"}


def _host_name(host: str) -> str:
    """The name or address of a Host header without its port (an IPv6 address without its brackets)."""
    if host.startswith("["):  # [::1]:8765
        end = host.find("]")
        return host[1:end] if end > 0 else ""
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _derive(token: str, purpose: bytes) -> str:
    return hmac.new(token.encode(), purpose, hashlib.sha256).hexdigest()
