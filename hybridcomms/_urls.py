"""Mailbox URLs, read in one place: where one comes from (``--url``,
``$HYBRIDCOMMS_URL``, or the file ``$HYBRIDCOMMS_URL_FILE`` names, which ``ps`` cannot read), how to
show one without its password, and an environment for a child without it. (It imports only `_env`
from the package: every layer may use it.)"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping

from . import _env

__all__ = [
    "URL_ENV",
    "URL_FILE_ENV",
    "child_environ",
    "has_secret",
    "shown_url",
    "url_from_environ",
]

#: Where the mailboxes are, for `Comms` and the CLI when no URL is given (else files under the root).
URL_ENV = _env.URL
#: A file whose first line is that URL: what a password-bearing URL is given by, so that it is in
#: neither a command line (``ps``) nor an environment a child inherits. Read when ``$HYBRIDCOMMS_URL``
#: is not set.
URL_FILE_ENV = _env.URL_FILE
#: Query parameters whose value is a secret (``?password=…``), compared in lower case.
_SECRET_PARAMS = ("password", "pass", "passwd", "pwd", "secret", "token", "auth", "key")
#: A URL file is read up to this many bytes (it holds one line).
_MAX_URL_FILE = 64 * 1024


def shown_url(url: str) -> str:
    """``url`` without its secrets, whatever its scheme (a mistyped one too): the user information
    (``redis://***@host:6379/0``; up to the last ``@``, so an unencoded ``@`` in a password hides it
    all) and the values of ``password``-like query parameters (``?password=***``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    base, qsep, query = rest.partition("?")
    _, at, host = base.rpartition("@")
    shown = f"{scheme}{sep}***@{host}" if at else f"{scheme}{sep}{base}"
    if qsep:
        shown += "?" + _shown_query(query)
    return shown


def _shown_query(query: str) -> str:
    """A URL's query (after the ``?``) with the values of its secret parameters hidden."""
    return "&".join(_shown_param(param) for param in query.split("&"))


def _shown_param(param: str) -> str:
    """A query parameter, its value hidden if its name says it is a secret (``password=***``)."""
    name, eq, _value = param.partition("=")
    secret = eq and any(word in name.lower() for word in _SECRET_PARAMS)
    return f"{name}=***" if secret else param


def has_secret(url: str) -> bool:
    """Whether `shown_url` hides anything of ``url`` (a password, a user, a secret parameter)."""
    return shown_url(url) != url


def url_from_environ(environ: Mapping[str, str] | None = None) -> str | None:
    """``$HYBRIDCOMMS_URL``, else the first line of the file ``$HYBRIDCOMMS_URL_FILE`` names, else
    None. Raises `ValueError` (naming the file, never its content) if that file cannot be read."""
    url = _env.value(URL_ENV, environ)
    if url:
        return url
    path = _env.value(URL_FILE_ENV, environ)
    return _url_in_file(path) if path else None


def _url_in_file(path: str) -> str:
    """The first line of the URL file at ``path``; `ValueError` (naming the file, never its content)
    if it cannot be read or holds no URL."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_URL_FILE)
    except OSError as exc:
        raise ValueError(f"${URL_FILE_ENV} names {path!r}, which cannot be read: {exc.strerror}") from None
    line = data.decode("utf-8", "replace").splitlines()[0].strip() if data.strip() else ""
    if not line:
        raise ValueError(f"${URL_FILE_ENV} names {path!r}, which holds no URL")
    return line


_private_files: list[str] = []


def child_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for a command this process starts (``work``, ``watch --exec``): this one's, but
    a ``$HYBRIDCOMMS_URL`` with a secret in it is replaced by ``$HYBRIDCOMMS_URL_FILE``, naming a file
    of this process (mode 0600 in a private folder, removed when it exits) that holds it. The child
    still reaches the same mailboxes (``hybridcomms send``, a `Comms`), and the password is in no
    environment that ``/proc/<pid>/environ``, a crash report or a logged ``env`` could show."""
    env = dict(os.environ if environ is None else environ)
    url = env.get(URL_ENV)
    if url and has_secret(url):
        del env[URL_ENV]
        env[URL_FILE_ENV] = _private_url_file(url)
    return env


def _private_url_file(url: str) -> str:
    folder = tempfile.mkdtemp(prefix="hybridcomms-url-")  # 0700: only this user reads it
    path = os.path.join(folder, "url")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    if not _private_files:
        atexit.register(_remove_private_files)
    _private_files.append(folder)
    return path


def _remove_private_files() -> None:
    while _private_files:
        shutil.rmtree(_private_files.pop(), ignore_errors=True)
