"""The package's layers (docs/architecture.md): a module imports only from its own layer or lower ones,
there is no import circle, and the command line reaches Dream.OS only through the intake hook.

Read from the source (every ``import`` and ``from ... import`` of every module, at the top or inside a
function: a lazy import is a dependency all the same), so a new module or import that breaks the rule
fails here, with the offending line."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import hybridcomms

PACKAGE = Path(hybridcomms.__file__).parent

#: Lowest first. A module belongs to the first layer with a matching entry: an exact module name, or
#: a package prefix ending in ".". `hybridcomms` itself (``__init__``: the public API) and
#: ``__main__`` sit above all of them.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "hybridcomms.message",
            "hybridcomms.states",
            "hybridcomms.errors",
            "hybridcomms.retry",
            "hybridcomms._text",
            "hybridcomms._log",
            "hybridcomms._names",
            "hybridcomms._urls",
            "hybridcomms._env",
            "hybridcomms._reasons",
            "hybridcomms._version",
            "hybridcomms._fs",
            "hybridcomms._locking",
        ),
    ),
    ("backends", ("hybridcomms.backends", "hybridcomms.backends.")),
    ("bus", ("hybridcomms.bus", "hybridcomms.bus.")),
    (
        "agent",
        (
            "hybridcomms.policy",
            "hybridcomms.intake",
            "hybridcomms.comms",
            "hybridcomms._routing",
            "hybridcomms._consumer",
            "hybridcomms._handlers",
            "hybridcomms._requests",
            "hybridcomms._outage",
            "hybridcomms._broken",
            "hybridcomms.watcher",
            "hybridcomms.metrics",
        ),
    ),
    ("dreamos", ("hybridcomms.compat", "hybridcomms.compat.")),
    ("commands", ("hybridcomms.cli", "hybridcomms.cli.", "hybridcomms.ui", "hybridcomms.ui.")),
    ("package", ("hybridcomms", "hybridcomms.__main__")),
]

#: Pairs that the order alone allows but the design does not: (importer prefix, imported prefix, why).
FORBIDDEN = [
    ("hybridcomms.cli", "hybridcomms.compat", "the CLI reaches Dream.OS through the intake hook"),
    ("hybridcomms.ui", "hybridcomms.compat", "the dashboard reaches Dream.OS through the intake hook"),
    ("hybridcomms.ui", "hybridcomms.cli", "the dashboard and the CLI share the core, not each other"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for p in sorted(PACKAGE.rglob("*.py"))
        if "_shim" not in p.parts  # the Dream.OS stand-in modules: not part of the package's code
    }


def layer_of(module: str) -> int:
    for index, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if module == entry or (entry.endswith(".") and module.startswith(entry)):
                return index
    raise AssertionError(f"{module} has no layer: add it to LAYERS and to docs/architecture.md")


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _nodes(tree: ast.AST, runtime_only: bool) -> Iterator[ast.AST]:
    """Every node of ``tree``; with ``runtime_only``, not those under ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if not (runtime_only and _type_checking(child)):
                todo.append(child)


def imports(
    module: str, path: Path, known: set[str], runtime_only: bool = False
) -> Iterator[tuple[int, str]]:
    """(line, module of the package) for every import in the file (``runtime_only``: not those made
    for the type checker only)."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in _nodes(ast.parse(path.read_text(), str(path)), runtime_only):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[: len(base) - node.level + 1]
                target = ".".join(stem + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` / `from .pkg import sub`: x may be a module of its own
            names = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `hybridcomms.x.y` where y is a name in module x
                name = name.rpartition(".")[0]
            if name.startswith("hybridcomms") and name != module:
                yield node.lineno, name


@functools.cache  # parsed once per test process (the tests below read the same graph)
def graph(runtime_only: bool = False) -> dict[str, list[tuple[int, str]]]:
    found = modules()
    known = set(found)
    return {m: sorted(set(imports(m, p, known, runtime_only))) for m, p in found.items()}


def test_every_module_has_a_layer() -> None:
    for module in modules():
        layer_of(module)


def test_no_module_imports_a_higher_layer() -> None:
    wrong = []
    for module, deps in graph().items():
        mine = layer_of(module)
        for line, dep in deps:
            if layer_of(dep) > mine:
                wrong.append(
                    f"{module}:{line} imports {dep} ({LAYERS[mine][0]} -> {LAYERS[layer_of(dep)][0]})"
                )
    assert wrong == []


def test_forbidden_imports() -> None:
    wrong = []
    for module, deps in graph().items():
        for line, dep in deps:
            for importer, imported, why in FORBIDDEN:
                if module.startswith(importer) and dep.startswith(imported):
                    wrong.append(f"{module}:{line} imports {dep}: {why}")
    assert wrong == []


def test_there_is_no_import_circle() -> None:
    """Tarjan's strongly connected components over every import made when the code runs (at the top
    or in a function; not those under ``if TYPE_CHECKING:``, which only the type checker makes):
    each must be one module."""
    g = {m: [d for _, d in deps] for m, deps in graph(runtime_only=True).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    assert circles == []


def test_the_checker_sees_a_violation() -> None:
    """The checks above find what they look for (not an empty graph that passes everything)."""
    g = graph()
    assert any(dep == "hybridcomms.message" for _, dep in g["hybridcomms.comms"])
    assert layer_of("hybridcomms.cli") > layer_of("hybridcomms.comms") > layer_of("hybridcomms.message")


def test_the_checker_finds_an_upward_import(tmp_path: Path) -> None:
    """A foundation module that imported the agent layer (at the top, or in a function) is caught; an
    import made for the type checker only is not a run-time edge."""
    known = set(modules())
    fake = tmp_path / "message.py"
    fake.write_text(
        "from typing import TYPE_CHECKING\n"
        "from .comms import Comms\n"
        "def f():\n    from . import watcher\n"
        "if TYPE_CHECKING:\n    from .policy import Policy\n"
    )
    found = dict((d, line) for line, d in imports("hybridcomms.message", fake, known))
    assert found == {"hybridcomms.comms": 2, "hybridcomms.watcher": 4, "hybridcomms.policy": 6}
    assert all(layer_of(d) > layer_of("hybridcomms.message") for d in found)
    runtime = {d for _, d in imports("hybridcomms.message", fake, known, runtime_only=True)}
    assert runtime == {"hybridcomms.comms", "hybridcomms.watcher"}
