"""The backend axis as the layout shows it (issue #23): the backends sit on the foundation only, and
nothing outside ``hybridcomms/backends/`` names a backend's classes or reads a URL's scheme itself."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

import hybridcomms
from hybridcomms.backends import KINDS, backend_of, open_mailbox
from hybridcomms.backends.memory import MemoryMailbox

PACKAGE = Path(hybridcomms.__file__).parent
BACKENDS = PACKAGE / "backends"
#: The lowest layer (docs: LAYOUT of issue #23): what a backend may import besides ``backends``.
FOUNDATION = {
    "message",
    "states",
    "errors",
    "retry",
    "_text",
    "_log",
    "_names",
    "_urls",
    "_fs",
    "_locking",
    "_env",
    "_reasons",
    "_version",
}
#: The classes of one backend: only ``backends/`` names them.
BACKEND_CLASSES = {"RedisMailbox", "RedisDelivery", "MemoryMailbox", "MemoryDelivery", "MemorySubscriptions"}


@functools.cache
def _parsed(path: Path) -> ast.Module:
    """Each file parsed once per test process (several tests walk the whole package)."""
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def _modules(under: Path) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(under.rglob("*.py")):
        if "_shim" in path.parts:  # Dream.OS's own code, shipped for its users
            continue
        yield path, _parsed(path)


def _imported(path: Path, tree: ast.Module) -> Iterator[str]:
    """The package modules ``path`` imports, as dotted names under ``hybridcomms``."""
    here = path.relative_to(PACKAGE).parent.parts
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[: len(here) - node.level + 1])
                module = [*base, *(node.module.split(".") if node.module else [])]
                if node.module:
                    yield ".".join(module)
                else:
                    yield from (".".join([*module, a.name]) for a in node.names)
            elif node.module and node.module.startswith("hybridcomms"):
                yield node.module.removeprefix("hybridcomms").lstrip(".")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hybridcomms."):
                    yield alias.name.removeprefix("hybridcomms.")


def test_backends_import_only_the_foundation_and_each_other() -> None:
    upward = []
    for path, tree in _modules(BACKENDS):
        for module in _imported(path, tree):
            top = module.split(".")[0]
            if top in ("", "backends") or top in FOUNDATION:
                continue
            upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert upward == []


def test_nothing_outside_backends_names_a_backend_class() -> None:
    named = []
    for path, tree in _modules(PACKAGE):
        if BACKENDS in path.parents or path == PACKAGE / "__init__.py":  # the public API re-exports
            continue
        for node in ast.walk(tree):
            name = (
                node.id
                if isinstance(node, ast.Name)
                else node.attr
                if isinstance(node, ast.Attribute)
                else None
            )
            if isinstance(node, ast.alias):
                name = node.name
            if name in BACKEND_CLASSES:
                named.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {name}")  # type: ignore[attr-defined]
    assert named == []


def test_no_module_outside_backends_reads_a_scheme_itself() -> None:
    """`backend_of` is the one place a URL's scheme becomes a backend: no other module defines it,
    nor keeps a list of the schemes."""
    found = []
    for path, tree in _modules(PACKAGE):
        if BACKENDS in path.parents:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "backend_of":
                found.append(f"{path.relative_to(PACKAGE)} defines backend_of")
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
                values = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if {"redis", "memory"} <= values or {"redis", "rediss"} <= values:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: a list of schemes")
    assert found == []


@pytest.mark.parametrize(
    ("where", "kind"),
    [
        ("memory://layout-test", "memory"),
        ("file:///tmp/x", "file"),
        ("./here", "file"),
        ("redis://localhost:6379/0", "redis"),
        ("rediss://h", "redis"),
        ("unix:///run/redis.sock", "redis"),
        ("ftp://nope", ""),
        ("redis:/host", ""),
    ],
)
def test_backend_of_names_each_kind(where: str, kind: str) -> None:
    assert backend_of(where) == kind
    assert kind == "" or kind in KINDS


def test_open_mailbox_gives_file_options_to_files_only(tmp_path: Path) -> None:
    with open_mailbox(tmp_path, "A", file_options={"fsync": "never"}) as mb:
        assert mb.kind == "file" and backend_of(str(tmp_path)) == "file"
        assert mb.fsync.value == "never"  # type: ignore[attr-defined]
    try:
        with open_mailbox("memory://layout-test", "A", file_options={"fsync": "never"}) as mb:
            assert mb.kind == "memory"
    finally:
        MemoryMailbox.forget_store("layout-test")


def test_the_redis_scripts_are_lua_files_of_the_package() -> None:
    """Read at import from the ``.lua`` files beside the module, which a wheel installs too."""
    from hybridcomms.backends.redis import scripts

    folder = BACKENDS / "redis"
    lua = {p.stem: p.read_text(encoding="utf-8") for p in folder.glob("*.lua")}
    assert set(lua) == {
        "copy",
        "owned",
        "free_token",
        "claim",
        "ack",
        "nack",
        "dead",
        "release",
        "recover",
        "stats",
    }
    assert lua["copy"] + lua["owned"] + lua["ack"] == scripts.ACK
    assert lua["copy"] + lua["free_token"] + lua["recover"] == scripts.RECOVER
    pyproject = PACKAGE.parent / "pyproject.toml"
    if pyproject.exists():  # a source tree (not an installed wheel)
        assert '"backends/redis/*.lua"' in pyproject.read_text(encoding="utf-8")


def test_where_the_bus_is_shared_is_decided_by_the_backends_package() -> None:
    """The fanout asks `fanout_url` (a Redis URL: its pub/sub; else the root's `.bus/` folder)
    instead of asking which backend a URL is."""
    from hybridcomms.backends import fanout_url

    for url in ("redis://127.0.0.1:6379/0", "rediss://h:6380", "unix:///tmp/redis.sock"):
        assert fanout_url(url) == url
    for url in (None, "local", "/tmp/root", "file:///tmp/root", "memory://x", "ftp://h"):
        assert fanout_url(url) is None
    source = Path(hybridcomms.__file__).parent.joinpath("bus", "fanout", "__init__.py").read_text()
    assert "backend_of" not in source


#: The modules outside ``backends/`` that may call `backend_of`, and why: each one only *names* a
#: backend (a label, a line for people), never decides what to do by it.
BACKEND_OF_ALLOWED = {
    "_routing.py",  # the Outage of a backend is labelled by its name (metrics, the outage's message)
    "ui/_source.py",  # the dashboard's pages show which backend they read (``Source.kind``)
}


def _names(node: ast.expr) -> set[str]:
    """The names ``node`` spells: ``x``, ``a.x`` (its last part) or a tuple of such."""
    if isinstance(node, ast.Tuple):
        return set().union(*(_names(e) for e in node.elts))
    if isinstance(node, ast.Name):
        return {node.id}
    return {node.attr} if isinstance(node, ast.Attribute) else set()


def _backend_names(node: ast.expr) -> set[str]:
    """The backend names (`KINDS`) among the constants ``node`` is or holds."""
    elts = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return {e.value for e in elts if isinstance(e, ast.Constant) and e.value in KINDS}


def _narrows_to_file_mailbox(node: ast.AST) -> bool:
    """Whether ``node`` is ``isinstance(x, FileMailbox)`` (or a tuple of classes holding it)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"):
        return False
    return len(node.args) == 2 and "FileMailbox" in _names(node.args[1])


def _which_backend_questions(node: ast.AST) -> Iterator[str]:
    """What in ``node`` asks which backend something is."""
    if _narrows_to_file_mailbox(node):
        yield "isinstance(..., FileMailbox)"
    if isinstance(node, ast.Call) and "backend_of" in _names(node.func):
        yield "backend_of(...)"
    if isinstance(node, ast.Compare):
        sides = [node.left, *node.comparators]
        kinds = any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides)
        if kinds and any(_backend_names(s) for s in sides):
            yield ".kind compared to a backend's name"


def _asking(under: Path, allowed: set[str]) -> list[str]:
    """Each place outside ``backends/`` under ``under`` that asks which backend it has."""
    found = []
    for path, tree in _modules(under):
        rel = path.relative_to(PACKAGE).as_posix()
        if BACKENDS in path.parents:
            continue
        for node in ast.walk(tree):
            for question in _which_backend_questions(node):
                if question == "backend_of(...)" and rel in allowed:
                    continue
                found.append(f"{rel}:{node.lineno}: {question}")  # type: ignore[attr-defined]
    return found


def test_nothing_outside_backends_asks_which_backend_it_has() -> None:
    """Outside ``backends/`` code asks what a mailbox or URL can do (``folder``, ``shared``,
    `served`, `file_root`, `files_of`, …), not which backend it is."""
    assert _asking(PACKAGE, BACKEND_OF_ALLOWED) == []


def test_the_which_backend_check_sees_each_form() -> None:
    """The check above is not blind: each form of the question is found, and the allow-list is needed."""
    sample = (
        "def f(mb, url, kinds):\n"
        "    a = isinstance(mb, FileMailbox)\n"
        "    b = isinstance(mb, (int, backends.FileMailbox))\n"
        "    c = mb.kind != 'file'\n"
        "    d = self.source.kind in ('redis', 'x')\n"
        "    e = backend_of(url)\n"
        "    f = entry.kind == 'broken'\n"  # not a backend's name
        "    g = kind == 'file'\n"  # a file type, not a mailbox's kind
    )
    found = [q for node in ast.walk(ast.parse(sample)) for q in _which_backend_questions(node)]
    assert sorted(found) == sorted(
        [
            "isinstance(..., FileMailbox)",
            "isinstance(..., FileMailbox)",
            ".kind compared to a backend's name",
            ".kind compared to a backend's name",
            "backend_of(...)",
        ]
    )
    assert _asking(PACKAGE, set()) != []  # without the allow-list the named uses are found


@pytest.mark.parametrize(
    ("where", "root", "served_", "one_process"),
    [
        ("file:///tmp/x", "/tmp/x", True, False),
        ("./here", "./here", True, False),
        ("local", "local", True, False),  # a root named so (``--root local``), as backend_of reads it
        ("redis://localhost:6379/0", None, True, False),
        ("unix:///run/redis.sock", None, True, False),
        ("memory://m", None, True, True),
        ("ftp://nope", None, False, False),
        ("redis:/host", None, False, False),
    ],
)
def test_what_a_url_can_do_is_answered_by_the_backends_package(
    where: str, root: str | None, served_: bool, one_process: bool
) -> None:
    from hybridcomms.backends import file_root, in_one_process, served

    assert file_root(where) == root
    assert served(where) is served_
    assert in_one_process(where) is one_process
    assert file_root(None) is None


def test_file_only_features_are_handed_out_for_any_mailbox(tmp_path: Path) -> None:
    """`files_of`, `put_reporting_file`, `list_without_reasons`: the file backend's face where there is
    one, the contract's calls elsewhere (a caller never narrows the type itself)."""
    from hybridcomms import Message, State
    from hybridcomms.backends import files_of, list_without_reasons, put_reporting_file

    with open_mailbox(tmp_path, "A", max_attempts=1) as files:
        assert files_of(files) is files
        written = put_reporting_file(files, Message("t", 1, id="w1"))
        assert written is not None and written.is_file() and written.parent == files.folder / "new"
        d = files.claim()
        assert d is not None
        d.dead("no")
        (dead,) = list_without_reasons(files, State.DEAD)
        assert dead.reason is None  # the reason file is there, not read
        (read,) = files.list(State.DEAD)
        assert read.reason is not None
    try:
        with open_mailbox("memory://layout-files", "A") as mem:
            assert files_of(mem) is None
            assert put_reporting_file(mem, Message("t", 1, id="m1")) is None
            assert [i.name for i in list_without_reasons(mem, State.NEW)] == [
                i.name for i in mem.list(State.NEW)
            ]
    finally:
        MemoryMailbox.forget_store("layout-files")
