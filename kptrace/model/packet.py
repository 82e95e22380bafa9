"""The packet a question is about."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Origin = Literal["local", "remote"]

PROTOCOLS = ("tcp", "udp", "sctp", "icmp", "icmpv6")
PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58}


@dataclass(frozen=True, slots=True)
class Packet:
    """The first packet of a new connection.

    ``src`` is None when the question did not name a source: rules that test it then
    give an explicit uncertain answer instead of a guess.
    """

    dst: IPAddress
    dport: int
    proto: str = "tcp"
    src: IPAddress | None = None
    sport: int | None = None
    iif: str | None = None
    mark: int = 0
    origin: Origin = "remote"

    @property
    def family(self) -> int:
        return self.dst.version


def format_endpoint(ip: IPAddress | str, port: int | None) -> str:
    """``10.0.0.1:80`` or ``[fd00::1]:80``, kube-proxy's spelling."""
    text = str(ip)
    if port is None:
        return text
    if ":" in text:
        return f"[{text}]:{port}"
    return f"{text}:{port}"


def split_endpoint(text: str) -> tuple[IPAddress | None, int | None]:
    """``10.0.0.1:80``, ``10.0.0.1``, ``[fd00::1]:80`` -> (address, port); (None, None) if unreadable."""
    text = text.strip()
    try:
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            return ipaddress.ip_address(host), int(rest[1:]) if rest.startswith(":") and rest[1:] else None
        if text.count(":") == 1:
            host, port = text.split(":")
            return ipaddress.ip_address(host), int(port) if port else None
        return ipaddress.ip_address(text), None
    except ValueError:
        return None, None
