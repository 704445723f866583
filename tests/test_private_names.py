"""No module of the package reaches into another module's private names (issue #23).

A name with a leading underscore is private to the module that defines it. Read from the source of
every module of the package (not the tests: they may look inside), this fails on:

(a) ``from .x import _name``: a private name imported from another package module. Importing a
    private *module* (``from .. import _fs``, ``from ..._fs import DirSyncer``) is fine: the
    foundation's ``_fs``, ``_names`` … are package-private modules shared on purpose; what is private
    is the underscored names *inside* them.
(b) ``module._name``, where ``module`` is bound by an import of a package module (``_fs._helper``).
(c) ``obj._name`` (and ``getattr(obj, "_name")``, ``setattr``, ``hasattr``) where ``obj`` is not
    ``self``/``cls``: an attribute of an object of another class.

The heuristic for (c), since the source does not say of which class ``obj`` is: the access is fine
when ``_name`` is defined in the same module (a function, a class attribute or method, a slot, an
``x._name = ...`` assignment there): a class may touch the private members of another class of its
own module, that module being one concept. It is a finding when ``_name`` is defined only in other
modules of the package, and ignored when no package module defines it (``namedtuple._replace``,
``os._exit``: not ours). Dunder names are never private. Names bound only for the type checker
(``if TYPE_CHECKING:``) count like any import.

Findings in parts of the package owned elsewhere are listed once in `ALLOWED`, to be fixed there.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import hybridcomms

PACKAGE = Path(hybridcomms.__file__).parent

#: Known findings, as ``"<module>: <what>"`` (what `_findings` reports, without the line number).
#: Each goes once its module no longer reaches in (`test_the_allow_list_holds_only_live_findings`).
ALLOWED: frozenset[str] = frozenset()

#: Accesses to another library's private names that happen to share a name with one of ours (the
#: heuristic cannot tell whose object it is), with why each is needed. Not package reach-ins.
THIRD_PARTY: dict[str, str] = {
    "hybridcomms.watcher: getattr(reader, '_closed')": (
        "watchdog 7.1's InotifyFD (`_release_unread_inotify`): closes the descriptor watchdog leaves "
        "open when its reader is stopped before its first read"
    ),
}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES: dict[str, ast.Module] = {name: ast.parse(p.read_text(encoding="utf-8")) for name, p in MODULES.items()}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from … import`` names."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[module].name == "__init__.py"
    base = module.split(".")
    base = base if is_package else base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _defined_private(tree: ast.Module) -> set[str]:
    """The private names a module defines: functions, classes, their attributes and methods, slots,
    names it assigns (at any depth), attributes it sets (``x._name = …``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.attr)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets) and node.value:
                for elt in ast.walk(node.value):
                    if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                        names.add(elt.value)
    return {n for n in names if _is_private(n)}


DEFINED: dict[str, set[str]] = {name: _defined_private(tree) for name, tree in TREES.items()}
DEFINED_ANYWHERE: set[str] = set().union(*DEFINED.values())


def _findings(module: str) -> Iterator[tuple[int, str]]:
    tree = TREES[module]
    own = DEFINED[module]
    imported_modules: set[str] = set()  # local names bound to package modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("hybridcomms"):
                    imported_modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if not source.startswith("hybridcomms"):
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in MODULES:
                    imported_modules.add(alias.asname or alias.name)  # a module, private or not
                elif _is_private(alias.name) and source != module:
                    yield node.lineno, f"from {source} import {alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            obj = node.value
            if isinstance(obj, ast.Name) and obj.id in imported_modules:
                yield node.lineno, f"{obj.id}.{node.attr}"
            elif isinstance(obj, ast.Name) and obj.id in ("self", "cls"):
                continue
            elif node.attr not in own and node.attr in DEFINED_ANYWHERE:
                yield node.lineno, f"{ast.unparse(obj)}.{node.attr}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _is_private(node.args[1].value)
        ):
            obj, attr = node.args[0], node.args[1].value
            if isinstance(obj, ast.Name) and obj.id in ("self", "cls"):
                continue
            if attr not in own and attr in DEFINED_ANYWHERE:
                yield node.lineno, f"{node.func.id}({ast.unparse(obj)}, {attr!r})"


def all_findings() -> dict[str, list[str]]:
    """Every finding, ``"<module>: <what>"`` -> the lines (``path:line``) where it occurs."""
    found: dict[str, list[str]] = {}
    for module in MODULES:
        for line, what in _findings(module):
            rel = MODULES[module].relative_to(PACKAGE.parent)
            found.setdefault(f"{module}: {what}", []).append(f"{rel}:{line}")
    return found


def test_no_module_reaches_into_another_modules_private_names() -> None:
    found = all_findings()
    new = {key: lines for key, lines in found.items() if key not in ALLOWED and key not in THIRD_PARTY}
    assert not new, "private names used across modules (make the shared thing public):\n" + "\n".join(
        f"  {key}  ({', '.join(lines)})" for key, lines in sorted(new.items())
    )


def test_the_allow_list_holds_only_live_findings() -> None:
    """An entry fixed at its source goes from the list too (the list only shrinks)."""
    assert not ALLOWED - all_findings().keys()
    assert not THIRD_PARTY.keys() - all_findings().keys()


def test_the_check_sees_each_kind_of_reach_in() -> None:
    """The three kinds, on two made-up modules: caught; the allowed forms are not."""
    other = "class Other:\n    _hidden = 1\n    def _settle(self):\n        self._closed = True\n"
    source = (
        "from ... import _fs\n"
        "from ..._names import _PRIVATE\n"
        "from . import folders\n"
        "from .other import Other, _helper\n"
        "class Mine:\n"
        "    _own = 1\n"
        "def f(other, mb):\n"
        "    _fs._unlink(0, 'x')\n"
        "    folders.Folders\n"
        "    other._own\n"
        "    mb._hidden\n"
        "    getattr(mb, '_closed', None)\n"
        "    hasattr(mb, '_own')\n"
        "    other._replace()\n"
    )
    made_up = {"hybridcomms.backends.file.other": other, "hybridcomms.backends.file.made_up": source}
    defined_before = set(DEFINED_ANYWHERE)
    for module, text in made_up.items():
        MODULES[module] = PACKAGE / "backends" / "file" / (module.rsplit(".", 1)[1] + ".py")
        TREES[module] = ast.parse(text)
        DEFINED[module] = _defined_private(TREES[module])
        DEFINED_ANYWHERE.update(DEFINED[module])
    try:
        whats = {what for _, what in _findings("hybridcomms.backends.file.made_up")}
    finally:
        for module in made_up:
            del MODULES[module], TREES[module], DEFINED[module]
        DEFINED_ANYWHERE.clear()
        DEFINED_ANYWHERE.update(defined_before)
    assert whats == {
        "from hybridcomms._names import _PRIVATE",
        "from hybridcomms.backends.file.other import _helper",
        "_fs._unlink",
        "mb._hidden",
        "getattr(mb, '_closed')",
    }
