"""The lab's HTTP site from the client's side: the backends behind the VIP, fetching through it."""

from __future__ import annotations

from hapair.lab.addresses import VIP4
from hapair.lab.nodes import checked_pool
from hapair.lab.topology import Lab

__all__ = ["checked_pool", "fetch", "redirects"]

# HOST COUNT PORT TIMEOUT: COUNT sequential GETs, each on a new connection; the bodies.
GET = """
import socket, sys
host, count, port, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
names = []
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        names.append(data.split(b"\\r\\n\\r\\n", 1)[1].decode().strip())
    except (OSError, IndexError):
        names.append("FAILED")
print(" ".join(names))
"""

# HOST COUNT TIMEOUT: COUNT requests for /page?q=1 on port 8080, each on a new connection;
# status|Location of each.
LOCATION = """
import http.client, sys
out = []
for _ in range(int(sys.argv[2])):
    try:
        c = http.client.HTTPConnection(sys.argv[1], 8080, timeout=float(sys.argv[3]))
        c.request("GET", "/page?q=1")
        r = c.getresponse()
        out.append(f"{r.status}|{r.getheader('Location')}")
        c.close()
    except OSError:
        out.append("FAILED")
print(" ".join(out))
"""


def fetch(
    lab: Lab,
    count: int,
    port: int = 8080,
    *,
    host: str = VIP4,
    timeout: float = 1.0,
    deadline: float = 30.0,
) -> list[str]:
    """``count`` sequential HTTP GETs to HOST:PORT from the client; "FAILED" for each failure."""
    argv = ["-c", GET, host, str(count), str(port), str(timeout)]
    return lab.python("c", argv, timeout=deadline).stdout.split()


def redirects(lab: Lab, count: int, *, timeout: float) -> list[str]:
    """``count`` GETs of VIP:8080/page?q=1 from the client: "STATUS|LOCATION" or "FAILED"."""
    return lab.python("c", ["-c", LOCATION, VIP4, str(count), str(timeout)]).stdout.split()
