"""hapair.net: the daemon's network edges (addresses, ARP, netlink watches, routes).

Importing this package loads ``pyroute2`` as a light package first (see `light_pyroute2`):
the modules here import only the pyroute2 submodules they use, which would otherwise run the
package's ``__init__`` and load all of pyroute2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from typing import Any, Final

#: Dunders that stand for the top-level API (``from pyroute2 import *``, the version): asked of
#: the light package, they load all of it. Other dunders (probed by inspect, pickle, pytest...)
#: are just missing, as on any module.
_FULL_DUNDERS: Final = frozenset({"__all__", "__version__"})
#: What pyroute2's own ``__init__`` would import first of what hapair uses: ``pyroute2.iproute``
#: (IPRoute, and through it IPRSocket and the rtnl messages). Its modules import each other in
#: a cycle that only resolves from this end: importing ``pyroute2.netlink.rtnl.iprsocket``
#: first fails with "cannot import name 'AsyncIPRSocket' from partially initialized module".
_FIRST: Final = "pyroute2.iproute"


def light_pyroute2() -> None:
    """Register ``pyroute2`` in `sys.modules` without running its package ``__init__``.

    pyroute2 0.9's ``__init__`` imports every part of the library (NDB with sqlite3, IPDB,
    conntrack, ipset, plan9, wireguard...): 70 more modules and about 5 MiB of an idle daemon's
    RSS, for a daemon that uses IPRoute, IPRSocket and the rtnl message classes. There is no
    switch for it (an open upstream request, svinota/pyroute2#1404, asks for one), and
    importing a submodule runs its parent package's ``__init__`` first.

    So the package module is made from pyroute2's own spec (same ``__path__`` and file) and
    left unexecuted, then `_FIRST` is imported: submodule imports work as ever. The module's
    ``__getattr__`` (PEP 562) runs the real ``__init__`` into the same module the first time a
    top-level name is asked for (``from pyroute2 import NDB``, from a doctor check or a test):
    code that wants the whole package gets it, it only pays for it then. A no-op when pyroute2
    is already imported (fully or lightly) or is not installed.
    """
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    loader = spec.loader
    module = importlib.util.module_from_spec(spec)
    lock = threading.RLock()
    state = {"full": False}

    def __getattr__(name: str) -> Any:
        """A submodule imports as ever; any other top-level name loads the whole package."""
        if name.startswith("__") and name not in _FULL_DUNDERS:
            raise AttributeError(name)
        if importlib.util.find_spec(f"pyroute2.{name}") is not None:
            return importlib.import_module(f"pyroute2.{name}")
        with lock:  # re-entered by the loading thread only: that one falls through
            if not state["full"]:
                state["full"] = True
                try:
                    loader.exec_module(module)
                except BaseException:
                    state["full"] = False
                    raise
                module.__dict__.pop("__getattr__", None)
        try:
            return module.__dict__[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    module.__dict__["__getattr__"] = __getattr__
    sys.modules["pyroute2"] = module
    try:
        importlib.import_module(_FIRST)
    except Exception:
        # A pyroute2 whose modules no longer import this way (a later release): forget the
        # half-imported light package and load the whole one, as if this function had not
        # run. Memory is the only thing at stake; the daemon must still start.
        for name in [n for n in sys.modules if n == "pyroute2" or n.startswith("pyroute2.")]:
            del sys.modules[name]
        importlib.import_module("pyroute2")


def full_pyroute2() -> bool:
    """Whether pyroute2's package ``__init__`` has run (its top-level API is bound)."""
    module = sys.modules.get("pyroute2")
    return module is not None and "IPRoute" in module.__dict__


light_pyroute2()
