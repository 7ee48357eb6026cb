"""What a fresh interpreter loads: the idle daemon's RSS is mostly the modules it imports.

Each check runs in a new interpreter (``sys.modules`` of this one is full of whatever other
tests imported) and asserts on the module set, never on a size or a time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hapair.cli import CORE_WORDS, build_parser

ROOT = Path(__file__).resolve().parents[2]

#: Loaded by pyroute2's package ``__init__`` only; the daemon uses none of them.
PYROUTE2_UNUSED = (
    "pyroute2.ndb.main",
    "pyroute2.ipdb",
    "pyroute2.conntrack",
    "pyroute2.ipset",
    "pyroute2.plan9.client",
    "pyroute2.netlink.generic.wireguard",
    "sqlite3",
)
#: Features off by default, imported only when configured (metrics, discovery), and the
#: tools that never run inside the daemon.
OPTIONAL = (
    "prometheus_client",
    "http.server",
    "zeroconf",
    "hapair.ops.metrics",
    "hapair.ops.mdns",
    "hapair.ops.discovery",
    "hapair.ops.doctor",
    "hapair.lab",
    "hapair.balancer.plane",
)


def _loaded(code: str) -> dict[str, object]:
    """Run `code` in a fresh interpreter; return its ``sys.modules`` names and ``extra``."""
    script = (
        "import json, sys\n"
        "extra = None\n"
        f"{code}\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'extra': extra}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_daemon_entry_loads_no_unused_pyroute2_part_nor_optional_feature() -> None:
    got = _loaded("import hapair.runtime.daemon, hapair.net\nextra = hapair.net.full_pyroute2()")
    modules = set(got["modules"])  # type: ignore[call-overload]
    assert "pyroute2.iproute.linux" in modules  # what it does use
    assert got["extra"] is False, "pyroute2's package __init__ ran"
    assert sorted(modules.intersection(PYROUTE2_UNUSED + OPTIONAL)) == []


@pytest.mark.parametrize(
    "module", ["hapair.net.watch", "hapair.net.rtaddr", "hapair.net.routes", "hapair.net.vip"]
)
def test_each_netlink_module_imports_alone(module: str) -> None:
    """pyroute2's iprsocket and iproute import each other: any first import must work."""
    got = _loaded(f"import {module}")
    assert module in got["modules"]  # type: ignore[operator]


def test_the_whole_pyroute2_api_is_there_on_first_use() -> None:
    got = _loaded(
        "import hapair.net\n"
        "import pyroute2\n"
        "from pyroute2 import NDB, IPRoute\n"
        "from pyroute2.iproute.linux import IPRoute as Linux\n"
        "extra = [IPRoute is Linux, pyroute2.NDB is NDB, hapair.net.full_pyroute2(),\n"
        "         hasattr(pyroute2, 'no_such_name'), hasattr(pyroute2, '__wrapped__')]"
    )
    assert got["extra"] == [True, True, True, False, False]
    assert "pyroute2.ndb.main" in got["modules"]  # type: ignore[operator]


def test_light_pyroute2_is_a_no_op_after_the_full_import() -> None:
    got = _loaded(
        "import pyroute2\n"
        "import hapair.net\n"
        "extra = [hapair.net.full_pyroute2(), '__getattr__' in vars(pyroute2)]"
    )
    assert got["extra"] == [True, False]


def test_a_pyroute2_that_cannot_be_loaded_lightly_is_loaded_whole() -> None:
    """A later pyroute2 whose submodules fail to import this way: the daemon still starts."""
    got = _loaded(
        "import importlib, hapair\n"
        "real = importlib.import_module\n"
        "def broken(name, *a, **k):\n"
        "    if name == 'pyroute2.iproute' and 'pyroute2' in sys.modules \\\n"
        "            and '__getattr__' in vars(sys.modules['pyroute2']):\n"
        "        raise ImportError('a layout this code does not know')\n"
        "    return real(name, *a, **k)\n"
        "importlib.import_module = broken\n"
        "import hapair.net\n"
        "importlib.import_module = real\n"
        "from pyroute2.iproute.linux import IPRoute\n"
        "extra = [hapair.net.full_pyroute2(), '__getattr__' in vars(sys.modules['pyroute2'])]"
    )
    assert got["extra"] == [True, False]


def test_version_loads_neither_asyncio_nor_a_heavy_dependency() -> None:
    got = _loaded(
        "import contextlib, io\n"
        "from hapair.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--version'])"
    )
    modules = set(got["modules"])  # type: ignore[call-overload]
    heavy = {"asyncio", "pydantic", "pyroute2", "structlog", "tenacity", "ssl", "hapair.lab"}
    assert sorted(modules & heavy) == []


def test_core_words_are_the_commands_but_the_labs() -> None:
    """A command missing from CORE_WORDS costs the lab's imports; one too many is unusable."""

    def commands(with_lab: bool) -> set[str]:
        parser = build_parser(with_lab=with_lab)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return set(sub.choices)

    assert commands(with_lab=False) == CORE_WORDS - {"--version"}
    assert commands(with_lab=True) > commands(with_lab=False)
