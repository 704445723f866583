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
