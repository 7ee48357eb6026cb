"""Fetch through the VIP from the lab's client: which backend answered each request."""

from __future__ import annotations

from hapair.lab.topology import VIP4, Lab

GET = """
import socket, sys
names = []
for _ in range(int(sys.argv[2])):
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[3])), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        names.append(data.split(b"\\r\\n\\r\\n", 1)[1].decode().strip())
    except OSError:
        names.append("FAILED")
print(" ".join(names))
"""


def fetch(lab: Lab, count: int, port: int = 8080) -> list[str]:
    """``count`` sequential HTTP GETs to VIP:PORT from the client; "FAILED" for each failure."""
    return lab.python("c", ["-c", GET, VIP4, str(count), str(port)]).stdout.split()
