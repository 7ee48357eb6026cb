"""Route look-ups: is a peer address reachable from this host at all?"""

from __future__ import annotations

from typing import Any

from pyroute2.iproute.linux import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from hapair.iptypes import IpAddress


def has_route(address: IpAddress) -> bool:
    """True if the kernel has a route to ``address`` (``ip route get``)."""
    ipr: Any = IPRoute()
    try:
        return bool(ipr.route("get", dst=str(address)))
    except NetlinkError:
        return False
    finally:
        ipr.close()
