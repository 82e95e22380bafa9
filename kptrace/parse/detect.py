"""Tell what a text is from its content, not its file name."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ..model.rules import Ruleset

Format = Literal["iptables-save", "ipset-save", "nft-json", "nft-text", "ipvsadm", "unknown"]

_IPVS_HINTS = (
    re.compile(r"--match-set KUBE-(CLUSTER-IP|LOAD-BALANCER|NODE-PORT|EXTERNAL-IP)"),
    re.compile(r"\n:KUBE-(LOAD-BALANCER|IPVS-|NODE-PORT) "),
)


def detect_format(text: str) -> Format:
    head = text[:8192].lstrip()[:4096]  # not text.lstrip(): that may copy a large text
    if not head:
        return "unknown"
    if head.startswith("{") and '"nftables"' in head:
        return "nft-json"
    if re.search(r"^\s*(add |)table (ip|ip6|inet|arp|bridge|netdev) ", head, re.M):
        return "nft-text"
    if re.match(r"(IP Virtual Server version|Prot LocalAddress)", head) or re.search(r"^-A -[tuf] ", head, re.M):
        return "ipvsadm"
    if re.search(r"^create \S+ (hash|bitmap|list):", head, re.M):
        return "ipset-save"
    if re.search(r"^(\*(filter|nat|mangle|raw|security)|:[A-Z]|-A |#.*iptables)", head, re.M):
        return "iptables-save"
    return "unknown"


_IPVS_CHAINS = (("nat", "KUBE-LOAD-BALANCER"), ("nat", "KUBE-NODE-PORT"), ("filter", "KUBE-IPVS-FILTER"))


def ruleset_mode(rs: Ruleset) -> str | None:
    """'ipvs' when a parsed ruleset shows kube-proxy's IPVS mode, else None.

    Looks at the chains IPVS mode declares and at nat KUBE-SERVICES only, instead of
    searching a whole large save for the same hints."""
    if any(rs.has_chain(table, name) for table, name in _IPVS_CHAINS):
        return "ipvs"
    services = rs.chain("nat", "KUBE-SERVICES")
    if services is not None and _IPVS_HINTS[0].search("\n".join(services.raw(i) for i in range(len(services)))):
        return "ipvs"
    return None


def kube_proxy_mode(text: str) -> str | None:
    """'ipvs' when iptables rules show kube-proxy's IPVS mode, else None."""
    if any(p.search(text) for p in _IPVS_HINTS):
        return "ipvs"
    return None
