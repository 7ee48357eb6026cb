"""The package layering, checked on the source: no upward import, and a pure core.

Every ``import`` in every module under ``hapair/`` counts: top-level, inside functions, and
under ``if TYPE_CHECKING`` (a typing-only import still couples the layers). A module may import
its own layer and the layers below it; ``core``, ``wire`` and the pure leaves import no I/O.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]

#: The layers, lowest first; a module belongs to the longest prefix that names it.
LAYERS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    # leaves: the root error, IP types, scheduler names, probing (pure); the clock protocol,
    # the process spawner
    (
        "leaf",
        (
            "hapair",
            "hapair.errors",
            "hapair.iptypes",
            "hapair.schedulers",
            "hapair.probing",
            "hapair.clock",
            "hapair.spawn",
        ),
    ),
    # the election and its pure pieces (roles, events, actions, priority, announcements)
    ("core", ("hapair.core",)),
    # the heartbeat codec and its authentication
    ("wire", ("hapair.wire",)),
    # the configuration: model, validation, loading
    ("config", ("hapair.config",)),
    # the network edges: UDP transport, VIPs, ARP, netlink watches, [[track]] checks
    ("net", ("hapair.net",)),
    # the data planes and backend health
    ("balancer", ("hapair.balancer",)),
    # operational edges (systemd, journald, metrics, hooks, discovery, doctor) and the logger
    ("ops", ("hapair.ops", "hapair.log")),
    # the daemon: the driver (the only loop), its adapters' wiring, the control server
    ("runtime", ("hapair.runtime",)),
    # fakes and harnesses for tests: may use anything below the lab
    ("testing", ("hapair.testing",)),
    # the network-namespace lab, its drills and probes
    ("lab", ("hapair.lab",)),
    # the command line and the stand-alone tools it starts
    ("cli", ("hapair.cli", "hapair.__main__", "hapair.realserver")),
)

#: Packages that must not import each other, whatever their layers: the data planes know
#: nothing of the election (the driver connects the two).
APART: Final = (("hapair.balancer", "hapair.core"),)

#: Modules that must stay pure: time passed in, no I/O, no dependency.
PURE: Final = (
    "hapair.core",
    "hapair.wire",
    "hapair.probing",
    "hapair.errors",
    "hapair.iptypes",
    "hapair.schedulers",
)

#: Standard-library modules that do I/O, read the clock or start threads or processes.
IO_STDLIB: Final = frozenset(
    {
        "asyncio", "concurrent", "datetime", "fcntl", "http", "io", "logging", "mmap",
        "multiprocessing", "os", "pathlib", "select", "selectors", "shutil", "signal", "socket",
        "socketserver", "ssl", "subprocess", "sys", "tempfile", "threading", "time", "urllib",
    }
)  # fmt: skip


def _under(module: str, prefixes: tuple[str, ...]) -> str | None:
    """The longest of ``prefixes`` that is ``module`` or one of its parents (the root package
    ``hapair`` names only its own ``__init__``)."""
    hits = [p for p in prefixes if module == p or (p != "hapair" and module.startswith(p + "."))]
    return max(hits, key=len) if hits else None


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the layer that holds ``module`` (None if none does)."""
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        hit = _under(module, prefixes)
        if hit is not None and (best is None or len(hit) > best[0]):
            best = (len(hit), index)
    return None if best is None else best[1]


def _import_nodes(node: ast.AST, with_typing: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under ``node``; those under ``if TYPE_CHECKING`` only if
    ``with_typing``."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    children = ast.iter_child_nodes(node)
    if not with_typing and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        children = iter(node.orelse)
    for child in children:
        yield from _import_nodes(child, with_typing)


def imports(
    module: str, source: str, *, package: bool = False, with_typing: bool = True
) -> Iterator[tuple[int, str]]:
    """Every import in ``source`` as (line, dotted name): ``from a import b`` gives ``a.b``.

    ``package``: ``module`` is a package's ``__init__`` (relative imports start there).
    """
    here = module if package else module.rpartition(".")[0]
    for node in _import_nodes(ast.parse(source), with_typing):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
            continue
        base = node.module or ""
        if node.level:
            parent = here.rsplit(".", node.level - 1)[0] if node.level > 1 else here
            base = f"{parent}.{base}" if base else parent
        for alias in node.names:
            # A dunder (``from hapair import __version__``) or ``*`` is the module itself.
            dunder = alias.name.startswith("__") and alias.name != "__main__"
            yield node.lineno, base if dunder or alias.name == "*" else f"{base}.{alias.name}"


def violations(module: str, source: str, *, package: bool = False) -> list[str]:
    """What is wrong with ``module``'s imports, one line each (empty when nothing is)."""
    own = layer_of(module)
    if own is None:
        return [f"{module}: in no layer; add its package to LAYERS in {Path(__file__).name}"]
    pure = _under(module, PURE) is not None
    found: list[str] = []
    for line, name in imports(module, source, package=package):
        top = name.split(".")[0]
        where = f"{module}:{line} imports {name}"
        if top == "hapair":
            theirs = layer_of(name)
            if theirs is not None and theirs > own:
                found.append(
                    f"{where}: layer {LAYERS[theirs][0]} is above {LAYERS[own][0]} (upward import)"
                )
            for a, b in APART:
                for mine, other in ((a, b), (b, a)):
                    if _under(module, (mine,)) and _under(name, (other,)):
                        found.append(f"{where}: {mine} and {other} are kept apart")
            if pure and _under(name, PURE) is None:
                found.append(f"{where}: {module} is pure and may import only {', '.join(PURE)}")
        elif pure and top in IO_STDLIB:
            found.append(f"{where}: {module} is pure and {top} does I/O")
        elif pure and top not in sys.stdlib_module_names:
            found.append(f"{where}: {module} is pure and {top} is a dependency")
    return found


def all_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted((ROOT / "hapair").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


MODULES: Final = dict(all_modules())


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_keeps_the_layering(module: str) -> None:
    path = MODULES[module]
    source = path.read_text(encoding="utf-8")
    problems = violations(module, source, package=path.name == "__init__.py")
    assert not problems, "\n".join(problems)


def test_every_layer_exists() -> None:
    """A layer or leaf named here that no longer exists is a stale rule."""
    names = set(MODULES)
    stale = [
        p
        for _, prefixes in LAYERS
        for p in prefixes
        if not any(n == p or n.startswith(p + ".") for n in names)
    ]
    assert stale == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph`` (module -> modules it imports): its strongly connected
    components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp: list[str] = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(found)


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module -> the modules of ``sources`` (module -> text, is a package) it imports when it
    runs: at the top or in a function, not under ``if TYPE_CHECKING`` (typing-only imports
    cannot fail on a cycle). A name resolves to its longest module."""
    graph: dict[str, set[str]] = {m: set() for m in sources}
    for module, (source, package) in sources.items():
        for _, name in imports(module, source, package=package, with_typing=False):
            while name and name not in sources:
                name = name.rpartition(".")[0]
            # A package's own modules import it on the way in; that is no cycle.
            if name and name != module and not module.startswith(name + "."):
                graph[module].add(name)
    return graph


def test_no_import_cycles() -> None:
    """Function-level imports count: one that dodges a cycle is still the cycle."""
    sources = {
        m: (p.read_text(encoding="utf-8"), p.name == "__init__.py") for m, p in all_modules()
    }
    assert cycles(import_graph(sources)) == []


# -- the checker itself, on made-up modules --------------------------------------------------


@pytest.mark.parametrize(
    ("module", "source", "wanted"),
    [
        ("hapair.ops.x", "from hapair.runtime.control import is_live\n", "upward import"),
        ("hapair.net.x", "def f():\n    import hapair.ops.hooks\n", "layer ops is above net"),
        (
            "hapair.balancer.x",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from hapair.ops import a\n",
            "hapair.ops.a: layer ops is above balancer",
        ),
        ("hapair.lab.nodes", "from hapair.cli import main\n", "layer cli is above lab"),
        ("hapair.core.x", "import socket\n", "hapair.core.x is pure and socket does I/O"),
        ("hapair.core.x", "def f():\n    from time import monotonic\n", "time does I/O"),
        ("hapair.wire.x", "import os.path\n", "os does I/O"),
        ("hapair.core.x", "import structlog\n", "structlog is a dependency"),
        ("hapair.core.x", "from hapair.clock import Clock\n", "may import only"),
        ("hapair.probing", "import asyncio\n", "asyncio does I/O"),
        ("hapair.wire.x", "from hapair.net import transport\n", "upward import"),
        ("hapair.net.x", "from ..runtime import node\n", "hapair.runtime.node: layer runtime"),
        ("hapair.net.x", "from .. import cli\n", "hapair.cli: layer cli"),
        ("hapair.newpkg.x", "", "in no layer"),
        ("hapair.balancer.x", "from hapair.core.roles import Role\n", "kept apart"),
        ("hapair.core.x", "from hapair.balancer import health\n", "kept apart"),
    ],
)
def test_the_checker_finds(module: str, source: str, wanted: str) -> None:
    found = "\n".join(violations(module, source))
    assert wanted in found, found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("hapair.runtime.x", "from hapair.net.vip import Vip\nfrom hapair.clock import Clock\n"),
        ("hapair.core.x", "import dataclasses\nfrom hapair.probing import ProbeState\n"),
        ("hapair.wire.x", "import hmac, struct\nfrom hapair.core.roles import Role\n"),
        ("hapair.testing.x", "from hapair.runtime.node import Node\n"),
        ("hapair.cli", "def f():\n    from hapair.lab import commands\n"),
        ("hapair.lab.x", "import hapair\nfrom hapair import __version__\n"),
    ],
)
def test_the_checker_lets_through(module: str, source: str) -> None:
    assert violations(module, source) == []


def test_a_cycle_through_a_function_level_import_is_found() -> None:
    texts = {
        "hapair.lab.t": "from hapair.lab.n import Pair\n",
        "hapair.lab.n": "def f():\n    from hapair.lab.t import LAN4\n",
        "hapair.lab.x": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from hapair.lab.t import Lab\nelse:\n    import hapair.lab.y\n",
        "hapair.lab.y": "from hapair.lab.x import a\n",
    }
    graph = import_graph({m: (t, False) for m, t in texts.items()})
    assert graph["hapair.lab.x"] == {"hapair.lab.y"}  # the else branch runs
    assert cycles(graph) == [["hapair.lab.n", "hapair.lab.t"], ["hapair.lab.x", "hapair.lab.y"]]
