"""The IP types every package shares: one name for "an IPv4 or an IPv6 address" (a leaf)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv6Address, IPv6Interface

IpAddress = IPv4Address | IPv6Address
IpInterface = IPv4Interface | IPv6Interface
