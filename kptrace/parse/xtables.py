"""A legacy iptables table as the kernel hands it out, decoded one chain at a time.

``getsockopt(IPT_SO_GET_ENTRIES)`` copies a whole table out of the kernel as one blob of
``ipt_entry`` (``ip6t_entry``) records, each followed by its matches and its target. There
is no other way to read a legacy table, so ``iptables-legacy-save`` copies the blob and then
formats every rule; on a node with 10,000 Services that is 122 MB and 610,000 entries. Here
the blob is only searched: a user chain starts with an ERROR entry carrying its name, so a
chain is found with one ``find`` and only its own entries are decoded, into the exact text
``iptables-legacy-save`` prints for them (see ``xt_extensions``).

The layout (as libiptc writes it and the kernel checks it): the built-in chains start at
the table's hook entry points and end with their policy entry at the underflow points; a
user chain is its ERROR head entry, its rules and a RETURN entry; an ERROR entry named
"ERROR" ends the table. A jump is a standard target whose verdict is the offset of the
chain's first rule; a negative verdict is ACCEPT, DROP, QUEUE or RETURN; a verdict equal to
the next entry's offset is a rule without a target.
"""

from __future__ import annotations

import mmap
import re
import struct
from socket import inet_ntoa
from typing import NamedTuple, Union

from .xt_extensions import SetName, Undecodable, addr_mask, iface, match_text, target_text

# The blob: bytes for tests, an anonymous mmap when read from the kernel (zeroed lazily,
# searchable with find and re, sliced into bytes).
Blob = Union[bytes, bytearray, mmap.mmap]
HOOK_CHAINS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")  # NF_INET_* order
_VERDICTS = {-1: "DROP", -2: "ACCEPT", -4: "QUEUE", -5: "RETURN"}
_HEADER = struct.Struct("=H29sB")  # xt_entry_match / xt_entry_target: size, name, revision
_VERDICT = struct.Struct("=i")
_OFFSETS = struct.Struct("=HH")  # an entry's target_offset, next_offset
HEAD_TARGET_SIZE = 64  # an ERROR target: 32-byte header, 30-byte chain name, padding
# The start of every ERROR target: its size and name ("ERROR", padded) and revision 0.
ERROR_HEADER = _HEADER.pack(HEAD_TARGET_SIZE, b"ERROR", 0)
# A search by name costs one pass over the blob, an index of every chain about ten.
SEARCHES_BEFORE_INDEX = 8
_CHAIN_NAME = re.compile(re.escape(ERROR_HEADER) + rb"([^\x00]{1,29})\x00")

# Protocol names iptables prints (its own table, then /etc/protocols on Debian).
PROTOCOLS = {
    1: "icmp", 2: "igmp", 4: "ipencap", 6: "tcp", 17: "udp", 41: "ipv6", 47: "gre", 50: "esp",
    51: "ah", 58: "ipv6-icmp", 89: "ospf", 103: "pim", 112: "vrrp", 132: "sctp", 136: "udplite",
}


class Layout(NamedTuple):
    """Where an entry's fields are, per family."""

    family: int
    entry: struct.Struct  # the ip part, nfcache, target_offset, next_offset
    size: int  # sizeof(struct ipt_entry) / sizeof(struct ip6t_entry)
    goto: int  # the "-g" flag in ip.flags
    offsets_at: int  # where target_offset and next_offset are
    zero: bytes  # an all-zero address

    @property
    def head_size(self) -> int:
        return self.size + HEAD_TARGET_SIZE  # an ERROR entry: the entry and its target


# ipt_ip: src, dst, smsk, dmsk, iniface, outiface, iniface_mask, outiface_mask, proto, flags, invflags
IPV4 = Layout(4, struct.Struct("=4s4s4s4s16s16s16s16sHBBIHH"), 112, 0x02, 88, bytes(4))
# ip6t_ip6: the same with 16-byte addresses, then proto, tos, flags, invflags, padding
IPV6 = Layout(6, struct.Struct("=16s16s16s16s16s16s16s16sHBBB3xIHH"), 168, 0x04, 140, bytes(16))
_INV_IN, _INV_OUT, _INV_SRC, _INV_DST, _INV_FRAG, _INV_PROTO = 0x01, 0x02, 0x08, 0x10, 0x20, 0x40


_HOST4 = b"\xff" * 4


def _address(option: str, addr: bytes, mask: bytes, inverted: bool, family: int) -> str:
    """`` -s ADDR/LEN``: the caller has checked that the rule tests the address."""
    if family == 4 and mask == _HOST4:  # the common case, first
        return f"{' !' if inverted else ''} {option} {inet_ntoa(addr)}/32"
    full = "/32" if family == 4 else "/128"
    return f"{' !' if inverted else ''} {option} {addr_mask(addr, mask, family, full=full)}"


class XtTable:
    """One table's blob, searched for chains on demand and decoded chain by chain."""

    def __init__(
        self,
        family: int,
        name: str,
        blob: Blob,
        *,
        valid_hooks: int,
        hook_entry: tuple[int, ...],
        underflow: tuple[int, ...],
        num_entries: int,
        base: int = 0,
        set_name: SetName | None = None,
    ) -> None:
        """``base``: where the entries start in ``blob``; the kernel's offsets (hook entry
        points, jumps) count from there. Offsets kept here count from the start of ``blob``.
        ``set_name``: the name of the ipset with an index (rules refer to sets by index)."""
        self.set_name = set_name
        self.family = family
        self.name = name
        self.blob = blob
        self.base = base
        self.layout = IPV4 if family == 4 else IPV6
        self.num_entries = num_entries
        self.builtins = {
            HOOK_CHAINS[h]: (base + hook_entry[h], base + underflow[h])
            for h in range(len(HOOK_CHAINS))
            if valid_hooks & (1 << h)
        }
        self._heads: dict[str, int] = {}  # user chain -> offset of its ERROR entry
        self._jumps: dict[int, str] = {}  # offset of a chain's first rule -> the chain
        self._memo: dict[bytes, str] = {}  # a match's bytes -> its text
        self._complete = False  # _heads holds every user chain
        self._searches = 0

    # -- finding chains ------------------------------------------------------------------

    def _is_head(self, offset: int, *, header_checked: bool = False) -> bool:
        """An ERROR entry starts at ``offset``: its target follows the entry at once and is
        64 bytes long (``header_checked``: the caller matched the target's header)."""
        layout = self.layout
        if offset < self.base or offset + layout.head_size > len(self.blob):
            return False
        if _OFFSETS.unpack_from(self.blob, offset + layout.offsets_at) != (layout.size, layout.head_size):
            return False
        return header_checked or self.blob[offset + layout.size : offset + layout.size + 32] == ERROR_HEADER

    def _index_all(self) -> None:
        if self._complete:
            return
        size = self.layout.size
        heads = {}
        for m in _CHAIN_NAME.finditer(self.blob):
            if self._is_head(m.start() - size, header_checked=True):
                heads[m.group(1).decode("utf-8", "surrogateescape")] = m.start() - size
        heads.pop("ERROR", None)  # the end of the table
        self._heads, self._complete = heads, True

    def _head(self, name: str) -> int | None:
        """The offset of a user chain's ERROR entry, or None when there is no such chain.

        A chain found by a jump is known already; another is searched for by its name
        (one pass of ``find`` over the blob) until several searches have been needed, when
        every chain is indexed at once."""
        if name in self._heads or self._complete:
            return self._heads.get(name)
        if self._searches >= SEARCHES_BEFORE_INDEX:
            self._index_all()
            return self._heads.get(name)
        self._searches += 1
        needle = ERROR_HEADER + name.encode("utf-8", "surrogateescape") + b"\0"
        at = self.blob.find(needle)
        while at >= 0 and not self._is_head(at - self.layout.size, header_checked=True):
            at = self.blob.find(needle, at + 1)
        if at < 0 or name == "ERROR":
            return None
        self._heads[name] = at - self.layout.size
        return self._heads[name]

    def has_any(self, names: tuple[str, ...] = (), prefixes: tuple[str, ...] = ()) -> bool:
        """One of these chains, or one whose name starts with a prefix, exists (one pass)."""
        if self._complete:
            return any(n in self._heads for n in names) or any(h.startswith(prefixes) for h in self._heads)
        words = [re.escape(n.encode("utf-8", "surrogateescape")) + b"\0" for n in names]
        words += [re.escape(p.encode("utf-8", "surrogateescape")) for p in prefixes]
        pattern = re.compile(re.escape(ERROR_HEADER) + b"(?:" + b"|".join(words) + b")")
        return any(self._is_head(m.start() - self.layout.size, header_checked=True) for m in pattern.finditer(self.blob))

    def has_chain(self, name: str) -> bool:
        return name in self.builtins or self._head(name) is not None

    def chain_names(self) -> list[str]:
        self._index_all()
        return [*self.builtins, *sorted(self._heads, key=self._heads.__getitem__)]

    def rule_count(self) -> int:
        """Rules in the table: entries less the chain heads, ends, policies and the end mark."""
        self._index_all()
        return self.num_entries - 2 * len(self._heads) - len(self.builtins) - 1

    def _jump_name(self, at: int) -> str:
        """The chain whose first rule is at ``at``: its ERROR entry ends just before."""
        known = self._jumps.get(at)
        if known is not None:
            return known
        start = at - HEAD_TARGET_SIZE
        target = bytes(self.blob[start : start + 62]) if start >= self.base else b""
        if target[:32] != ERROR_HEADER:
            raise Undecodable(f"jump to offset {at - self.base}, which does not start a chain")
        name = target[32:].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        self._heads.setdefault(name, at - self.layout.head_size)
        self._jumps[at] = name
        return name

    # -- decoding ------------------------------------------------------------------------

    def chain(self, name: str) -> tuple[str | None, list[str]] | None:
        """(policy of a built-in chain or None, its rules as ``-A NAME ...`` lines), or None
        when the table has no such chain. Raises Undecodable for rules it cannot print."""
        try:
            return self._chain(name)
        except (struct.error, IndexError, ValueError) as exc:  # a blob cut short or damaged
            raise Undecodable(f"chain {name}: damaged table data ({exc})") from None

    def _chain(self, name: str) -> tuple[str | None, list[str]] | None:
        if name in self.builtins:
            start, underflow = self.builtins[name]
            lines = self._rules(name, start, underflow)
            policy = self._policy(underflow)
            return policy, lines
        head = self._head(name)
        if head is None:
            return None
        start = head + self.layout.head_size
        # The rules run up to the chain's RETURN entry, the last one before the next head.
        offsets = []
        pos = start
        blob, layout = self.blob, self.layout
        while True:
            if pos + layout.size > len(blob):
                raise Undecodable(f"chain {name} runs past the end of the table")
            target_offset, next_offset = _OFFSETS.unpack_from(blob, pos + layout.offsets_at)
            if next_offset < layout.size or target_offset < layout.size:
                raise Undecodable(f"malformed entry at offset {pos}")
            if blob[pos + target_offset + 2 : pos + target_offset + 8] == b"ERROR\0":
                break
            offsets.append(pos)
            pos += next_offset
        if not offsets:
            raise Undecodable(f"chain {name} has no RETURN entry")
        return None, [self._rule(name, at) for at in offsets[:-1]]

    def _rules(self, chain: str, start: int, end: int) -> list[str]:
        lines = []
        pos = start
        while pos < end:
            lines.append(self._rule(chain, pos))
            pos += self.layout.entry.unpack_from(self.blob, pos)[-1]
        if pos != end:
            raise Undecodable(f"chain {chain}: entries do not end at its policy")
        return lines

    def _policy(self, at: int) -> str:
        fields = self.layout.entry.unpack_from(self.blob, at)
        size, tname, _rev = _HEADER.unpack_from(self.blob, at + fields[-2])
        if _name(tname):
            raise Undecodable(f"policy entry with target {_name(tname)}")
        (verdict,) = _VERDICT.unpack_from(self.blob, at + fields[-2] + 32)
        policy = _VERDICTS.get(verdict)
        if policy not in ("ACCEPT", "DROP"):
            raise Undecodable(f"policy verdict {verdict}")
        return policy

    def _rule(self, chain: str, pos: int) -> str:
        """One entry as ``iptables-legacy-save`` prints it (without counters).

        Written for speed: a chain such as KUBE-SERVICES has tens of thousands of rules."""
        blob, layout, family = self.blob, self.layout, self.family
        src, dst, smsk, dmsk, iniface, outiface, inmask, outmask, proto, *rest = layout.entry.unpack_from(blob, pos)
        flags, inv, target_offset, next_offset = rest[-5], rest[-4], rest[-2], rest[-1]
        zero = layout.zero
        text = "-A " + chain
        if inv & _INV_SRC or smsk != zero or (family == 4 and src != zero):
            text += _address("-s", src, smsk, bool(inv & _INV_SRC), family)
        if inv & _INV_DST or dmsk != zero or (family == 4 and dst != zero):
            text += _address("-d", dst, dmsk, bool(inv & _INV_DST), family)
        if inmask[0]:
            text += f"{' !' if inv & _INV_IN else ''} -i {iface(iniface, inmask)}"
        if outmask[0]:
            text += f"{' !' if inv & _INV_OUT else ''} -o {iface(outiface, outmask)}"
        if proto:
            text += f"{' !' if inv & _INV_PROTO else ''} -p {PROTOCOLS.get(proto, proto)}"
        if family == 4 and flags & 0x01:
            text += f"{' !' if inv & _INV_FRAG else ''} -f"
        at, end = pos + layout.size, pos + target_offset
        memo = self._memo
        while at < end:
            size = _U16.unpack_from(blob, at)[0]
            if size < 32 or at + size > end:
                raise Undecodable(f"malformed match at offset {at}")
            if size <= _MEMO_MAX:  # small matches repeat (-m tcp --dport 80): decoded once
                raw = bytes(blob[at : at + size])
                words = memo.get(raw)
                if words is None:
                    words = memo[raw] = _match(raw, family, self.set_name)
            else:
                words = _match(bytes(blob[at : at + size]), family, self.set_name)
            text += words
            at += size
        if blob[end + 2] == 0:  # the standard target (no name): a verdict
            (verdict,) = _VERDICT.unpack_from(blob, end + 32)
            if verdict < 0:
                word = _VERDICTS.get(verdict)
                if word is None:
                    raise Undecodable(f"verdict {verdict}")
                text += " -j " + word
            elif verdict + self.base != pos + next_offset:  # equal: a rule without a target
                text += (" -g " if flags & layout.goto else " -j ") + self._jump_name(verdict + self.base)
            return text
        size, name, revision = _HEADER.unpack_from(blob, end)
        tname = _name(name)
        if tname == "ERROR":
            raise Undecodable(f"ERROR entry inside chain {chain}")
        return text + target_text(tname, revision, bytes(blob[end + 32 : end + size]), family)


def _match(raw: bytes, family: int, set_name: SetName | None) -> str:
    _size, name, revision = _HEADER.unpack_from(raw)
    return match_text(_name(name), revision, raw[32:], family, set_name)


_MEMO_MAX = 200  # bytes of a match worth remembering (a comment's 288 are rarely repeated)
_U16 = struct.Struct("=H")
_NAMES: dict[bytes, str] = {}


def _name(raw: bytes) -> str:
    name = _NAMES.get(raw)
    if name is None:
        name = _NAMES[raw] = raw.split(b"\0", 1)[0].decode("ascii", "replace")
    return name
