"""The node's conntrack entries for probes: which endpoint the kernel chose and whether
it rewrote the source, then removal so a probe leaves no state behind."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from ..model.packet import PROTO_NUMBERS, IPAddress, format_endpoint


@dataclass(frozen=True, slots=True)
class CtEntry:
    sport: int
    reply_src: str  # the endpoint that answers: IP:PORT
    reply_dst: str  # where answers go: the original source unless the node rewrote it
    snat: bool  # the node rewrote the source address or port


def _tuple(msg: Any, which: str, v6: bool) -> tuple[str, str, int, int]:
    ip = msg.get_nested(which, "CTA_TUPLE_IP")
    pr = msg.get_nested(which, "CTA_TUPLE_PROTO")
    key = "CTA_IP_V6" if v6 else "CTA_IP_V4"
    return (ip.get_attr(f"{key}_SRC"), ip.get_attr(f"{key}_DST"), pr.get_attr("CTA_PROTO_SRC_PORT"), pr.get_attr("CTA_PROTO_DST_PORT"))


def _socket(family: int) -> Any:
    from pyroute2 import NFCTSocket

    return NFCTSocket(nfgen_family=socket.AF_INET6 if family == 6 else socket.AF_INET)


def _filter(src: IPAddress, dst: IPAddress, proto: str, dport: int, sport: int | None = None) -> Any:
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    fam = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
    return NFCTAttrTuple(family=fam, saddr=str(src), daddr=str(dst), proto=PROTO_NUMBERS[proto], sport=sport, dport=dport)


def entries(src: IPAddress, dst: IPAddress, proto: str, dport: int, sports: set[int]) -> list[CtEntry]:
    """Entries whose original tuple is one of the probes (kernel-side filtered dump)."""
    out: list[CtEntry] = []
    v6 = dst.version == 6
    with _socket(dst.version) as ct:
        for msg in ct.dump(tuple_orig=_filter(src, dst, proto, dport)):
            o_src, _o_dst, o_sport, _ = _tuple(msg, "CTA_TUPLE_ORIG", v6)
            if o_sport not in sports:
                continue
            r_src, r_dst, r_sport, r_dport = _tuple(msg, "CTA_TUPLE_REPLY", v6)
            # A rewritten port counts too: MASQUERADE of a node's own packet keeps its address.
            out.append(CtEntry(o_sport, format_endpoint(r_src, r_sport), format_endpoint(r_dst, r_dport),
                               (r_dst, r_dport) != (o_src, o_sport)))
    return out


def used_ports(src: IPAddress, dst: IPAddress, proto: str, dport: int) -> set[int]:
    """Source ports of existing connections with this tuple: a probe reusing one would
    not be the first packet of a new connection."""
    v6 = dst.version == 6
    with _socket(dst.version) as ct:
        return {_tuple(m, "CTA_TUPLE_ORIG", v6)[2] for m in ct.dump(tuple_orig=_filter(src, dst, proto, dport))}


def delete(src: IPAddress, dst: IPAddress, proto: str, dport: int, sports: set[int]) -> int:
    """Remove the probes' entries; returns how many there were."""
    from pyroute2.netlink.exceptions import NetlinkError

    removed = 0
    with _socket(dst.version) as ct:
        for sport in sorted(sports & used_ports(src, dst, proto, dport)):
            try:
                ct.entry("del", tuple_orig=_filter(src, dst, proto, dport, sport))
                removed += 1
            except NetlinkError:
                pass  # expired meanwhile
    return removed
