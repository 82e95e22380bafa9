"""Everything kptrace knows about one node, and where it came from."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from .packet import IPAddress
from .rules import Ruleset

SourceKind = Literal["file", "live", "dump"]


@dataclass(frozen=True, slots=True)
class Route:
    """A route as the kernel's FIB holds it (main and local tables)."""

    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    kind: str = "unicast"  # unicast | local | blackhole | unreachable | prohibit | throw
    dev: str | None = None
    gateway: IPAddress | None = None
    table: str = "main"


@dataclass(frozen=True, slots=True)
class IpSet:
    """An ipset from ``ipset save``: its type and members in their saved spelling."""

    name: str
    type: str  # e.g. hash:ip,port
    members: frozenset[str]
    family: int | None = None


@dataclass(frozen=True, slots=True)
class Provenance:
    kind: SourceKind
    backend: str | None = None  # nft | legacy | None (files do not say)
    paths: tuple[str, ...] = ()
    time: str | None = None


@dataclass
class NodeState:
    """The node's rules, addresses, routes and settings.

    ``local_ips`` None means the node's addresses are unknown (only loopback is then
    known to be local). ``routes`` None means no routing table was read: kptrace then
    assumes a default route and says so.
    """

    rulesets: list[Ruleset]
    provenance: Provenance
    local_ips: frozenset[IPAddress] | None = None
    routes: tuple[Route, ...] | None = None
    ipsets: dict[str, IpSet] | None = None
    sysctls: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def ruleset_for(self, family: int) -> Ruleset | None:
        """The ruleset of a family; one whose family nothing says serves either."""
        fallback = None
        for rs in self.rulesets:
            if rs.family == family:
                return rs
            if rs.family is None and fallback is None:
                fallback = rs
        return fallback

    def is_local(self, ip: IPAddress) -> bool | None:
        """True/False, or None when the node's addresses are unknown."""
        if ip.is_loopback:
            return True
        if self.routes is not None:
            for r in self.routes:
                if r.kind == "local" and ip in r.dst:
                    return True
        if self.local_ips is None:
            return None if self.routes is None else False
        return ip in self.local_ips
