"""Rule out a rule from its text alone, before parsing it.

kube-proxy's KUBE-SERVICES holds one rule per Service address; parsing 10,000 of them
to find the one that matches would cost more than the rest of a trace. A rule whose
``-d`` does not contain the packet's destination, or whose ``--dport`` is another port,
cannot match. The kernel checks ``-d`` before any match module, so skipping such a
rule has no side effect to lose; ``--dport`` only ever follows the rule's own protocol.

Checking the text of every rule still costs a regular expression per rule. For a long
chain, ``candidates`` goes further: iptables-save prints a host destination first
(``-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp ...``), so the rules for one address are
found by searching the chain's text for that prefix, and only the rules not in that
form (there are a handful in KUBE-SERVICES) are looked at one by one. What a rule's
text says is kept per chain, so the branches of a packet that walk the same chain again
(one per endpoint after DNAT) do not read it again.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left
from functools import lru_cache

from ..model.packet import IPAddress
from ..model.rules import Chain

_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_DST = re.compile(r"(?:^|\s)(!\s+)?(?:-d|--destination|--dst)\s+(\S+)")
_DPORT = re.compile(r"(?:^|\s)(!\s+)?--dport\s+(\d+)(?=\s|$)")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=1 << 16)
def _network(text: str) -> Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def rule_key(raw: str) -> tuple[Network | None, int | None]:
    """What a rule's text requires of every packet it matches: a destination network
    (a positive ``-d``) and a destination port (a positive ``--dport``); None: nothing."""
    quote = raw.find('"')
    # iptables-save writes -d before the comment: look there first, unquote only if needed.
    m = _DST.search(raw if quote < 0 else raw[:quote])
    unquoted = raw if quote < 0 else None
    if m is None and quote >= 0:
        unquoted = _QUOTED.sub('""', raw)  # words inside a comment are not options
        m = _DST.search(unquoted)
    net = _network(m.group(2)) if m is not None and m.group(1) is None else None
    if unquoted is None:
        unquoted = _QUOTED.sub('""', raw)
    p = _DPORT.search(unquoted)
    return net, (int(p.group(2)) if p is not None and p.group(1) is None else None)


def _excludes(key: tuple[Network | None, int | None], dst: IPAddress, dport: int | None) -> bool:
    net, port = key
    if net is not None and (net.version != dst.version or dst not in net):
        return True
    return port is not None and port != dport


# A canonical dotted quad (no leading zeros), so that equal text means equal address.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_HOST4_FIRST = rf"-A \S+ -d {_OCTET}(?:\.{_OCTET}){{3}}/32 "
_OTHER_LINE = re.compile(rf"\n(?!{_HOST4_FIRST})")  # a line not in that form
_HOST4_FIRST_LINE = re.compile(_HOST4_FIRST)
MIN_INDEXED_RULES = 256  # below this, checking each rule's text is as cheap


class _DestinationIndex:
    """A long chain's text, the rules not led by a host destination, and the rules that
    may match each destination asked about so far."""

    __slots__ = ("text", "name", "others", "by_dst")

    def __init__(self, text: str, name: str, others: list[int]) -> None:
        self.text = text
        self.name = name
        self.others = others
        self.by_dst: dict[IPAddress, list[int]] = {}

    def rules_for(self, dst: IPAddress) -> list[int]:
        found = self.by_dst.get(dst)
        if found is None:
            text, needle = self.text, f"-A {self.name} -d {dst}/32 "
            hits = [0] if text.startswith(needle) else []
            needle = "\n" + needle
            pos = text.find(needle)
            while pos >= 0:
                hits.append(pos + 1)
                pos = text.find(needle, pos + 1)
            found = self.by_dst[dst] = sorted(set(self.others).union(_line_numbers(text, hits)))
        return found


def _line_numbers(text: str, positions: list[int]) -> list[int]:
    """Line index (from 0) of each position, positions ascending."""
    out: list[int] = []
    line = prev = 0
    for pos in positions:
        line += text.count("\n", prev, pos)
        prev = pos
        out.append(line)
    return out


def _destination_index(chain: Chain) -> _DestinationIndex | None:
    n = len(chain)
    if n < MIN_INDEXED_RULES:
        return None
    text = "\n".join(chain.raw(i) for i in range(n))
    starts = [] if _HOST4_FIRST_LINE.match(text) else [0]
    starts += [m.start() + 1 for m in _OTHER_LINE.finditer(text)]
    if len(starts) * 2 > n:  # mostly other forms (e.g. KUBE-NODEPORTS): no gain
        return None
    return _DestinationIndex(text, chain.name, _line_numbers(text, starts))


class ChainScan:
    """The prefilter's view of one chain: what each rule's text requires, read once."""

    __slots__ = ("chain", "_keys", "_dest")

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self._keys: dict[int, tuple[Network | None, int | None]] = {}
        self._dest: _DestinationIndex | None | bool = False  # False: not built yet

    def cannot_match(self, i: int, dst: IPAddress, dport: int | None) -> bool:
        key = self._keys.get(i)
        if key is None:
            key = self._keys[i] = rule_key(self.chain.raw(i))
        return _excludes(key, dst, dport)

    def candidates(self, dst: IPAddress) -> list[int] | None:
        """Ascending indices of the rules that may match a packet to ``dst`` (the rest
        surely do not), or None when the chain is not indexed: check every rule."""
        if dst.version != 4:
            return None
        if self._dest is False:
            self._dest = _destination_index(self.chain)
        return self._dest.rules_for(dst) if isinstance(self._dest, _DestinationIndex) else None


def scan_of(chain: Chain) -> ChainScan:
    scan = chain.scan_cache
    if scan is None:
        scan = chain.scan_cache = ChainScan(chain)
    return scan


def next_candidate(found: list[int], i: int) -> int | None:
    """The first candidate index at or after rule i, or None when none is left."""
    k = bisect_left(found, i)
    return found[k] if k < len(found) else None
