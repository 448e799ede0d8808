"""The shape of the code (``../shared/DESIGN.md`` "Shape of the code", issue #10).

Arrows point inward: the core imports no transport, web or database code, nor the shells that
use it. The root exports a small public surface (httpx's ``test_exported_members``). The import
graph has no circles, and no module grows past what one reader can hold.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import xdp_compute

PACKAGE_DIR = Path(xdp_compute.__file__).resolve().parent
# Generated gRPC stubs: committed as protoc wrote them and never edited (CONVENTIONS.md).
GENERATED = PACKAGE_DIR / "v1"

# ---------------------------------------------------------------------------------------------
# (a) Arrows point inward
# ---------------------------------------------------------------------------------------------

# Web, RPC and database libraries the core must never load (CONVENTIONS.md "The core knows no transport").
TRANSPORT = ("fastapi", "starlette", "grpc", "sqlalchemy", "httpx", "uvicorn", "psycopg", "alembic")
# The shells use the core; the core never reaches back out to them.
SHELLS = ("xdp_compute.gateway", "xdp_compute.node", "xdp_compute.sdk", "xdp_compute.cli", "xdp_compute.v1")
# Top-level modules of the optional extras (`he`, `train`): a core module that needs one is checked
# only where the extra is installed.
OPTIONAL_EXTRAS = ("torch", "opacus", "sklearn", "phe", "gmpy2", "tenseal")

CORE_PACKAGES = (
    "xdp_compute.domain",
    "xdp_compute.crypto",
    "xdp_compute.privacy",
    "xdp_compute.query",
    "xdp_compute.training",
    "xdp_compute.audit",
)
# contract.api: the REST records both the gateway's routers and the SDK import (issue #14).
CORE_MODULES = ("xdp_compute.errors", "xdp_compute.config", "xdp_compute.contract.api")


def _core_modules() -> list[str]:
    names: list[str] = ["xdp_compute", *CORE_MODULES]  # the root too: it must stay lazy
    for package in CORE_PACKAGES:
        names.append(package)
        path = [str(PACKAGE_DIR.joinpath(*package.split(".")[1:]))]
        names.extend(info.name for info in pkgutil.walk_packages(path, prefix=f"{package}."))
    return sorted(names)


# Runs in a fresh interpreter: import one module, then report what came with it.
_PROBE = """
import importlib, json, sys
probe = json.loads(sys.argv[1])
try:
    importlib.import_module(probe["module"])
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] in probe["extras"]:
        print(json.dumps({"missing_extra": exc.name}))
        raise SystemExit(0)
    raise
loaded = sorted(sys.modules)
print(json.dumps({
    "transport": sorted({m.split(".")[0] for m in loaded} & set(probe["transport"])),
    "shells": [m for m in loaded if any(m == s or m.startswith(s + ".") for s in probe["shells"])],
}))
"""


@pytest.mark.parametrize("module", _core_modules())
def test_core_module_loads_no_transport(module: str) -> None:
    probe = json.dumps(
        {"module": module, "transport": TRANSPORT, "shells": SHELLS, "extras": OPTIONAL_EXTRAS}
    )
    r = subprocess.run(
        [sys.executable, "-c", _PROBE, probe], check=False, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"importing {module} failed:\n{r.stderr}"
    report = json.loads(r.stdout.strip().splitlines()[-1])
    if "missing_extra" in report:
        pytest.skip(f"{module} needs the optional {report['missing_extra']!r}, not installed here")
    assert report["transport"] == [], f"importing {module} loads transport code: {report['transport']}"
    assert report["shells"] == [], f"importing {module} loads the shells around the core: {report['shells']}"


def test_core_walk_covers_every_core_file() -> None:
    # pkgutil must see every file of the core packages, so a new module is checked without listing it.
    walked = set(_core_modules())
    for package in CORE_PACKAGES:
        for path in PACKAGE_DIR.joinpath(*package.split(".")[1:]).rglob("*.py"):
            assert _module_name(path) in walked, f"{path} is not reached by the arrows-point-inward walk"


# ---------------------------------------------------------------------------------------------
# (b) Exported members
# ---------------------------------------------------------------------------------------------

PUBLIC_NAMES = [
    "ApiError",
    "AsyncClient",
    "BadRequest",
    "BudgetExhausted",
    "Client",
    "Forbidden",
    "GatewayTimeout",
    "GatewayUnreachable",
    "InvalidArgument",
    "NotFound",
    "PayloadTooLarge",
    "PolicyDenied",
    "QueryResult",
    "Unauthorized",
    "XdpError",
]


def test_exported_members() -> None:
    assert xdp_compute.__all__ == PUBLIC_NAMES
    assert PUBLIC_NAMES == sorted(PUBLIC_NAMES)
    for name in xdp_compute.__all__:
        value = getattr(xdp_compute, name)
        assert value.__name__ == name, f"xdp_compute.{name} resolves to {value!r}"
        assert value.__module__.startswith("xdp_compute."), value.__module__
    assert set(xdp_compute.__all__) <= set(dir(xdp_compute))


def test_root_names_resolve_lazily() -> None:
    # Nothing is loaded until a public name is used; then `from xdp_compute import ...` works as before.
    code = (
        "import sys, xdp_compute\n"
        "assert 'httpx' not in sys.modules and 'xdp_compute.sdk' not in sys.modules, sorted(sys.modules)\n"
        "assert set(xdp_compute.__all__) <= set(dir(xdp_compute))\n"
        "from xdp_compute import BudgetExhausted, Client, QueryResult, XdpError\n"
        "from xdp_compute.sdk.client import Client as C\n"
        "assert Client is C and issubclass(BudgetExhausted, XdpError) and 'httpx' in sys.modules\n"
        "from xdp_compute import errors\n"
        "assert errors.XdpError is XdpError\n"
        "try:\n"
        "    xdp_compute.not_a_name\n"
        "except AttributeError as exc:\n"
        "    assert 'not_a_name' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('unknown names must raise AttributeError')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------------------------------------
# (c) No import circles
# ---------------------------------------------------------------------------------------------


def _source_files() -> Iterator[Path]:
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if GENERATED not in path.parents:
            yield path


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[str, str | None]]:
    """(module, name) for every import statement executed at run time, in functions too.

    ``import a.b`` gives ("a.b", None); ``from a import b`` gives ("a", "b"), which the caller resolves
    to the submodule ``a.b`` when there is one. Relative forms are made absolute. Imports under
    ``if TYPE_CHECKING:`` never run, so they cannot close a circle and are left out.
    """
    package = module if is_package else module.rpartition(".")[0]
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                yield base, (None if alias.name == "*" else alias.name)
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (an import of a package is an edge to its ``__init__``).

    Importing ``a.b`` also runs ``a/__init__.py`` first; that implicit edge is not drawn, or every
    package whose ``__init__`` re-exports its own modules (``audit``, ``query``, ...) would be a circle.
    """
    files = {_module_name(p): p for p in _source_files()}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for base, name in _imported_names(tree, module, path.name == "__init__.py"):
            if name is not None and f"{base}.{name}" in files:
                graph[module].add(f"{base}.{name}")  # `from pkg import submodule`
            elif base in files:
                graph[module].add(base)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; each component sorted, components in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return sorted(components)


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest circle through the component's first module, for the failure message."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in sorted(graph[node] & members):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    return component


def import_cycles() -> list[str]:
    graph = import_graph()
    found = [f"self-import: {m}" for m in sorted(graph) if m in graph[m]]
    for component in strongly_connected(graph):
        if len(component) > 1:
            found.append(
                f"{len(component)} modules {component}\n    e.g. " + " -> ".join(_one_cycle(graph, component))
            )
    return found


def test_import_graph_sees_function_level_and_relative_imports() -> None:
    # The graph builder itself: function-level, relative, `from pkg import submodule` and TYPE_CHECKING.
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import merkle\n"
        "from .heads import SignedTreeHead\n"
        "from xdp_compute import errors\n"
        "from xdp_compute.audit import canonical_json\n"
        "if TYPE_CHECKING:\n"
        "    from xdp_compute.sdk import client\n"
        "def f():\n"
        "    import xdp_compute.crypto.shamir\n"
    )
    got = set(_imported_names(ast.parse(source), "xdp_compute.audit.verify", is_package=False))
    assert got == {
        ("typing", "TYPE_CHECKING"),
        ("xdp_compute.audit", "merkle"),
        ("xdp_compute.audit.heads", "SignedTreeHead"),
        ("xdp_compute", "errors"),
        ("xdp_compute.audit", "canonical_json"),
        ("xdp_compute.crypto.shamir", None),
    }
    in_package = ast.parse("from . import zoo\nfrom .. import errors\n")
    assert set(_imported_names(in_package, "xdp_compute.training", is_package=True)) == {
        ("xdp_compute.training", "zoo"),
        ("xdp_compute", "errors"),
    }
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert strongly_connected(graph) == [["a", "b", "c"], ["d"], ["e"]]
    assert _one_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    graph = import_graph()
    assert "xdp_compute.errors" in graph["xdp_compute.sdk.client"]  # `from xdp_compute import errors as E`
    assert "xdp_compute.sdk.he" in graph["xdp_compute.sdk.client"]  # imported inside Client.score
    assert not any(m.startswith("xdp_compute.v1") for m in graph)


def test_no_import_cycles() -> None:
    cycles = import_cycles()
    assert not cycles, "import circles in src/xdp_compute:\n  " + "\n  ".join(cycles)


# ---------------------------------------------------------------------------------------------
# (d) Module size
# ---------------------------------------------------------------------------------------------

MAX_LINES = 700


def oversize_files() -> list[str]:
    sizes = {p: len(p.read_text().splitlines()) for p in _source_files()}
    return [f"{p.relative_to(PACKAGE_DIR.parent)}: {n} lines" for p, n in sizes.items() if n > MAX_LINES]


def test_no_module_over_700_lines() -> None:
    oversize = oversize_files()
    assert not oversize, f"files over {MAX_LINES} lines:\n  " + "\n  ".join(oversize)


if __name__ == "__main__":  # `python tests/test_architecture.py` prints today's findings
    print("\n".join(import_cycles() or ["no import circles"]))
    print("\n".join(oversize_files() or [f"no file over {MAX_LINES} lines"]))
