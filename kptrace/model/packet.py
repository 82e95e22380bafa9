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
