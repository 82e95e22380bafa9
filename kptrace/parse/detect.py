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
    head = text[:8192].lstrip()[:4096] or text.lstrip()[:4096]  # text.lstrip() may copy a large text
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


IPVS_CHAINS = ("KUBE-LOAD-BALANCER", "KUBE-NODE-PORT")  # chains only IPVS mode creates
IPVS_CHAIN_PREFIX = "KUBE-IPVS-"
_IPVS_SET_CHAINS = (("nat", "KUBE-SERVICES"), ("nat", "KUBE-POSTROUTING"), ("nat", "KUBE-NODE-PORT"), ("filter", "KUBE-NODE-PORT"))


def ruleset_mode(rs: Ruleset) -> str | None:
    """'ipvs' when a ruleset read from a save shows kube-proxy's IPVS mode, else None.

    Looks at the chains IPVS mode declares (in any table) and at the chains that match its
    ipsets, instead of searching a whole large save for the same hints. Meant for rulesets
    whose chain names are known (from a save): it lists them."""
    for table in rs.tables:
        if any(rs.has_chain(table, name) for name in IPVS_CHAINS):
            return "ipvs"
        if any(name.startswith(IPVS_CHAIN_PREFIX) for name in rs.chain_names(table)):
            return "ipvs"
    for table, name in _IPVS_SET_CHAINS:
        chain = rs.chain(table, name) if rs.has_chain(table, name) else None
        if chain is not None and _IPVS_HINTS[0].search("\n".join(chain.raw(i) for i in range(len(chain)))):
            return "ipvs"
    return None


def kube_proxy_mode(text: str) -> str | None:
    """'ipvs' when iptables rules show kube-proxy's IPVS mode, else None."""
    if any(p.search(text) for p in _IPVS_HINTS):
        return "ipvs"
    return None


def parse_iptables_mode_save(
    text: str, *, source: str, lenient: bool = False, backend: str | None = None
) -> tuple[list[Ruleset], list[str]]:
    """``parse_save`` for kube-proxy's iptables mode: a save from IPVS mode is refused with
    UnsupportedMode, also when it is one the parser would reject."""
    from ..errors import ParseError, UnsupportedMode
    from .iptables_save import parse_save

    try:
        found, warnings = parse_save(text, source=source, lenient=lenient, backend=backend)
    except ParseError:
        if kube_proxy_mode(text) == "ipvs":
            raise UnsupportedMode(f"{source}: kube-proxy's IPVS mode detected: not supported yet") from None
        raise
    if any(ruleset_mode(rs) == "ipvs" for rs in found):
        raise UnsupportedMode(f"{source}: kube-proxy's IPVS mode detected: not supported yet")
    return found, warnings
