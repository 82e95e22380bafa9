"""Rule out a rule from its text alone, before parsing it.

kube-proxy's KUBE-SERVICES holds one rule per Service address; parsing 10,000 of them
to find the one that matches would cost more than the rest of a trace. A rule whose
``-d`` does not contain the packet's destination, or whose ``--dport`` is another port,
cannot match. The kernel checks ``-d`` before any match module, so skipping such a
rule has no side effect to lose; ``--dport`` only ever follows the rule's own protocol.
"""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from ..model.packet import IPAddress

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_DST = re.compile(r"(?:^|\s)(!\s+)?(?:-d|--destination|--dst)\s+(\S+)")
_DPORT = re.compile(r"(?:^|\s)(!\s+)?--dport\s+(\d+)(?=\s|$)")


@lru_cache(maxsize=1 << 16)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def cannot_match(raw: str, dst: IPAddress, dport: int) -> bool:
    """True only when the rule surely does not match; False when it may."""
    quote = raw.find('"')
    # iptables-save writes -d before the comment: look there first, unquote only if needed.
    m = _DST.search(raw if quote < 0 else raw[:quote])
    unquoted = raw if quote < 0 else None
    if m is None and quote >= 0:
        unquoted = _QUOTED.sub('""', raw)  # words inside a comment are not options
        m = _DST.search(unquoted)
    if m is not None and m.group(1) is None:
        net = _network(m.group(2))
        if net is not None and (net.version != dst.version or dst not in net):
            return True
    if unquoted is None:
        unquoted = _QUOTED.sub('""', raw)
    p = _DPORT.search(unquoted)
    return p is not None and p.group(1) is None and int(p.group(2)) != dport
