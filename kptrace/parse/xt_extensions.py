"""x_tables extensions: a match's or target's binary data as iptables-save prints it.

The legacy backend keeps rules in the kernel as binary entries (see ``parse.xtables``);
each extension's data is a C struct of the kernel's ABI (``linux/netfilter/xt_*.h``).
The functions here print those structs the way iptables 1.8's own ``save`` functions do,
word for word, so a rule decoded here is the rule ``iptables-legacy-save`` prints (the
tests compare both on rules loaded into a real kernel). An extension, a revision or a
flag this module does not know raises ``Undecodable``: the caller then reads the table
with ``iptables-legacy-save`` instead of printing something approximate.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Callable

Decoder = Callable[[bytes, int], str]  # (data, family) -> " --option value ..."


class Undecodable(Exception):
    """Rule data this module cannot print exactly as iptables does."""


# -- shared formatting -----------------------------------------------------------------

_NO_QUOTE = re.compile(r"[A-Za-z0-9_-]+")


def save_string(value: str) -> str:
    """iptables' xtables_save_string: bare when only [A-Za-z0-9_-], else double-quoted
    with ", \\ and ' escaped by a backslash. With its leading space."""
    if _NO_QUOTE.fullmatch(value):
        return " " + value
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
    return f' "{out}"'


def cstring(data: bytes, size: int | None = None) -> str:
    """A NUL-terminated string in a fixed-size field of ``size`` bytes (the rest: all)."""
    end = data.find(b"\0", 0, size)
    return data[: (len(data) if size is None else size) if end < 0 else end].decode("utf-8", "surrogateescape")


def ip4(raw: bytes) -> str:
    return socket.inet_ntoa(bytes(raw[:4]))


def ip6(raw: bytes) -> str:
    """As iptables prints it: the C library's inet_ntop (an embedded IPv4 address in dotted
    form, which Python's ipaddress prints in hex before 3.13)."""
    return socket.inet_ntop(socket.AF_INET6, bytes(raw[:16]))


def prefix_len(mask: bytes) -> int | None:
    """The prefix length of a contiguous network mask, None for any other mask."""
    value = int.from_bytes(mask, "big")
    bits = len(mask) * 8
    ones = bin(value).count("1")
    return ones if value == ((1 << bits) - 1) ^ ((1 << (bits - ones)) - 1) else None


def addr_mask(addr: bytes, mask: bytes, family: int, *, full: str = "") -> str:
    """``addr/len`` (or ``addr/mask`` for a non-contiguous mask); a host mask prints ``full``."""
    size = 4 if family == 4 else 16
    text = ip4(addr) if family == 4 else ip6(addr)
    if mask == b"\xff" * size:  # the common case first
        return text + full
    length = prefix_len(mask[:size])
    if length == size * 8:
        return text + full
    if length is None:
        return f"{text}/{ip4(mask) if family == 4 else ip6(mask)}"
    return f"{text}/{length}"


def iface(name: bytes, mask: bytes) -> str:
    """An interface name as iptables prints it with its mask: ``eth0``, or ``veth+`` when
    only a prefix is compared."""
    out = ""
    for i in range(16):
        if mask[i]:
            if name[i]:
                out += chr(name[i])
        else:
            if i and name[i - 1]:
                out += "+"
            break
    return out


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise Undecodable(f"{what}: {len(data)} bytes of data, expected {size}")


# -- matches -----------------------------------------------------------------------------


def _comment(data: bytes, _family: int) -> str:
    return " --comment" + save_string(cstring(data, 256))


def _ports(label: str, low: int, high: int, inverted: bool) -> str:
    bang = " !" if inverted else ""
    return f"{bang} --{label} {low}" if low == high else f"{bang} --{label} {low}:{high}"


_TCP = struct.Struct("=4H4B")
_TCP_FLAGS = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"))


def _tcp_flags(value: int) -> str:
    names = [name for bit, name in _TCP_FLAGS if value & bit]
    return ",".join(names) if names else "NONE"


def _port_ranges(s0: int, s1: int, d0: int, d1: int, inv: int) -> str:
    """tcp and udp: a range other than 0:65535 is printed (bit 1 inverts sport, bit 2 dport)."""
    out = ""
    if s0 != 0 or s1 != 0xFFFF:
        out += _ports("sport", s0, s1, bool(inv & 0x01))
    if d0 != 0 or d1 != 0xFFFF:
        out += _ports("dport", d0, d1, bool(inv & 0x02))
    return out


def _tcp(data: bytes, _family: int) -> str:
    _need(data, _TCP.size, "tcp")
    s0, s1, d0, d1, option, flg_mask, flg_cmp, inv = _TCP.unpack_from(data)
    out = _port_ranges(s0, s1, d0, d1, inv)
    if option or inv & 0x08:
        out += f"{' !' if inv & 0x08 else ''} --tcp-option {option}"
    if flg_mask or inv & 0x04:
        out += f"{' !' if inv & 0x04 else ''} --tcp-flags {_tcp_flags(flg_mask)} {_tcp_flags(flg_cmp)}"
    return out


_UDP = struct.Struct("=4HB")


def _udp(data: bytes, _family: int) -> str:
    _need(data, _UDP.size, "udp")
    s0, s1, d0, d1, inv = _UDP.unpack_from(data)
    return _port_ranges(s0, s1, d0, d1, inv)


# struct xt_sctp_info: dpts[2], spts[2], chunkmap[64], chunk_match_type, flag_info[4]
# (3 bytes each), flag_count, flags, invflags: 292 bytes.
_SCTP_HEAD = struct.Struct("=4H")
_SCTP_TAIL = struct.Struct("=2I")  # flags, invflags at the end of the struct
_SCTP_SIZE = 292


def _sctp(data: bytes, _family: int) -> str:
    _need(data, _SCTP_SIZE, "sctp")
    d0, d1, s0, s1 = _SCTP_HEAD.unpack_from(data)
    flags, inv = _SCTP_TAIL.unpack_from(data, _SCTP_SIZE - 8)
    if flags & 0x04:
        raise Undecodable("sctp --chunk-types")
    out = ""
    if flags & 0x01:
        out += _ports("sport", s0, s1, bool(inv & 0x01))
    if flags & 0x02:
        out += _ports("dport", d0, d1, bool(inv & 0x02))
    return out


_ICMP = struct.Struct("=4B")


def _icmp_type(option: str, data: bytes, *, any_type: bool) -> str:
    """icmp and icmp6: type, code range, invert flag; iptables (not ip6tables) shows type
    255 as ``any``."""
    _need(data, _ICMP.size, option)
    kind, code_min, code_max, inv = _ICMP.unpack_from(data)
    out = " !" if inv & 0x01 else ""
    if any_type and kind == 0xFF:
        return out + f" --{option} any"
    out += f" --{option} {kind}"
    if code_min != 0 or code_max != 0xFF:
        out += f"/{code_min}"
    return out


def _icmp(data: bytes, _family: int) -> str:
    return _icmp_type("icmp-type", data, any_type=True)


def _icmp6(data: bytes, _family: int) -> str:
    return _icmp_type("icmpv6-type", data, any_type=False)


_STATISTIC = struct.Struct("=HH3I")


def _statistic(data: bytes, _family: int) -> str:
    _need(data, _STATISTIC.size, "statistic")
    mode, flags, a, b, _count = _STATISTIC.unpack_from(data)
    bang = " !" if flags & 0x1 else ""
    if mode == 0:
        return f" --mode random{bang} --probability {a / 0x80000000:.11f}"
    if mode == 1:
        return f" --mode nth{bang} --every {a + 1} --packet {b}"
    raise Undecodable(f"statistic mode {mode}")


def _mark_value(mark: int, mask: int) -> str:
    return f" 0x{mark:x}" if mask == 0xFFFFFFFF else f" 0x{mark:x}/0x{mask:x}"


_MARK_MT = struct.Struct("=IIB")  # xt_mark_mtinfo1 and xt_connmark_mtinfo1 alike


def _mark(data: bytes, _family: int) -> str:
    """-m mark and -m connmark: value, mask, invert."""
    _need(data, _MARK_MT.size, "mark")
    mark, mask, invert = _MARK_MT.unpack_from(data)
    return (" !" if invert else "") + " --mark" + _mark_value(mark, mask)


_RTN_NAMES = (
    "UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
    "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE",
)
_ADDRTYPE = struct.Struct("=HHI")


def _addr_types(mask: int) -> str:
    return ",".join(name for i, name in enumerate(_RTN_NAMES) if mask & (1 << i))


def _addrtype(data: bytes, _family: int) -> str:
    _need(data, _ADDRTYPE.size, "addrtype")
    source, dest, flags = _ADDRTYPE.unpack_from(data)
    out = ""
    if source:
        out += f"{' !' if flags & 0x1 else ''} --src-type {_addr_types(source)}"
    if dest:
        out += f"{' !' if flags & 0x2 else ''} --dst-type {_addr_types(dest)}"
    if flags & 0x4:
        out += " --limit-iface-in"
    if flags & 0x8:
        out += " --limit-iface-out"
    return out


# conntrack: state bits (xt_conntrack.h) and status bits (IPS_*), in iptables' print order.
_CT_STATES = ((1 << 0, "INVALID"), (1 << 3, "NEW"), (1 << 2, "RELATED"), (1 << 1, "ESTABLISHED"),
              (1 << 8, "UNTRACKED"), (1 << 6, "SNAT"), (1 << 7, "DNAT"))
_CT_STATUS = ((1, "EXPECTED"), (2, "SEEN_REPLY"), (4, "ASSURED"), (8, "CONFIRMED"))


def _ct_states(mask: int) -> str:
    return " " + ",".join(name for bit, name in _CT_STATES if mask & bit)


def _ct_status(mask: int) -> str:
    return " " + (",".join(name for bit, name in _CT_STATUS if mask & bit) or "NONE")


# xt_conntrack_mtinfo3: eight addresses (origsrc, its mask, origdst, ...), then these.
_CT_FIELDS = struct.Struct("=2I5H2H2H4H")
_CT_ADDRS = (("ctorigsrc", 0x04), ("ctorigdst", 0x08), ("ctreplsrc", 0x10), ("ctrepldst", 0x20))
_CT_PORTS = (("ctorigsrcport", 0x100), ("ctorigdstport", 0x200), ("ctreplsrcport", 0x400), ("ctrepldstport", 0x800))


def _conntrack(data: bytes, family: int) -> str:
    _need(data, 128 + _CT_FIELDS.size, "conntrack")
    values = _CT_FIELDS.unpack_from(data, 128)
    exp_min, exp_max, l4proto = values[0], values[1], values[2]
    ports, highs = values[3:7], values[11:15]
    match_flags, invert = values[7], values[8]
    state_mask, status_mask = values[9], values[10]
    if match_flags & ~0x3FFF:
        raise Undecodable(f"conntrack flags 0x{match_flags:x}")
    out = ""
    if match_flags & 0x1:
        # -m state is this match with the state-alias flag
        out += f"{' !' if invert & 0x1 else ''} --{'state' if match_flags & 0x2000 else 'ctstate'}"
        out += _ct_states(state_mask)
    if match_flags & 0x2:
        out += f"{' !' if invert & 0x2 else ''} --ctproto {l4proto}"
    size = 4 if family == 4 else 16
    for i, (name, bit) in enumerate(_CT_ADDRS):
        if match_flags & bit:
            addr, mask = data[32 * i : 32 * i + size], data[32 * i + 16 : 32 * i + 16 + size]
            out += f"{' !' if invert & bit else ''} --{name} {addr_mask(addr, mask, family)}"
    for (name, bit), low, high in zip(_CT_PORTS, ports, highs):
        if match_flags & bit:
            span = f"{low}" if high == 0 or high == low else f"{low}:{high}"
            out += f"{' !' if invert & bit else ''} --{name} {span}"
    if match_flags & 0x40:
        out += f"{' !' if invert & 0x40 else ''} --ctstatus" + _ct_status(status_mask)
    if match_flags & 0x80:
        span = f"{exp_min}" if exp_min == exp_max else f"{exp_min}:{exp_max}"
        out += f"{' !' if invert & 0x80 else ''} --ctexpire {span}"
    if match_flags & 0x1000:
        out += " --ctdir " + ("REPLY" if invert & 0x1000 else "ORIGINAL")
    return out


def _conntrack_alias(data: bytes) -> str:
    """``-m state`` is the conntrack match with the state-alias flag."""
    if len(data) >= 128 + _CT_FIELDS.size and _CT_FIELDS.unpack_from(data, 128)[7] & 0x2000:
        return "state"
    return "conntrack"


_MULTIPORT = struct.Struct("=BB15H15BB")


def _multiport(data: bytes, _family: int) -> str:
    _need(data, _MULTIPORT.size, "multiport")
    values = _MULTIPORT.unpack_from(data)
    kind, count, ports, pflags, invert = values[0], values[1], values[2:17], values[17:32], values[32]
    option = {0: "--sports", 1: "--dports", 2: "--ports"}.get(kind)
    if option is None or count > 15:
        raise Undecodable(f"multiport flags {kind}")
    words, i = [], 0
    while i < count:
        word = str(ports[i])
        if pflags[i] and i + 1 < count:
            i += 1
            word += f":{ports[i]}"
        words.append(word)
        i += 1
    return f"{' !' if invert else ''} {option} {','.join(words)}"


_RECENT = struct.Struct("=IIBB200sB")
_RECENT_V1 = 228  # sizeof(struct xt_recent_mtinfo_v1): the mask is its last 16 bytes


def _recent(data: bytes, family: int) -> str:
    _need(data, _RECENT_V1, "recent")
    seconds, hits, check_set, invert, name, side = _RECENT.unpack_from(data)
    out = " !" if invert else ""
    for bit, word in ((0x2, "--set"), (0x1, "--rcheck"), (0x4, "--update"), (0x8, "--remove")):
        if check_set & bit:
            out += " " + word
    if seconds:
        out += f" --seconds {seconds}"
    if check_set & 0x20:
        out += " --reap"
    if hits:
        out += f" --hitcount {hits}"
    if check_set & 0x10:
        out += " --rttl"
    out += f" --name {cstring(name)}"
    mask = data[_RECENT_V1 - 16 : _RECENT_V1]  # after the padding to 4 bytes
    out += f" --mask {ip4(mask) if family == 4 else ip6(mask)}"
    if side == 0:
        out += " --rsource"
    elif side == 1:
        out += " --rdest"
    return out


def _nfacct(data: bytes, _family: int) -> str:
    return " --nfacct-name " + save_string(cstring(data, 32))  # sic: two spaces


# xt_set_info_match_v4: the set (index, dimensions, flags), packet and byte counter tests
# (value, operator), flags.
_SET_V4 = struct.Struct("=HBB4xQB7xQB7xI")
_SET_INVERT = 0x01  # IPSET_INV_MATCH; bit n (1..dim) marks dimension n as "src"
_SET_COUNTER_OPS = {1: ("", "eq"), 2: (" !", "eq"), 3: ("", "lt"), 4: ("", "gt")}
SetName = Callable[[int], "str | None"]  # a set's index -> its name (None: unknown)


def set_match(data: bytes, set_name: SetName | None) -> str:
    """``-m set`` (revision 4): the set is kept in the rule by its index, so the name comes
    from ``set_name`` (the kernel's ipset table)."""
    _need(data, _SET_V4.size, "set")
    index, dim, flags, packets, packets_op, nbytes, bytes_op, options = _SET_V4.unpack_from(data)
    name = set_name(index) if set_name is not None else None
    if name is None:
        raise Undecodable(f"set index {index}: its name is unknown")
    if options & ~(0x08 | 0x10 | 0x20 | 0x80) or packets_op > 4 or bytes_op > 4:
        raise Undecodable(f"set flags 0x{options:x}")
    dirs = ",".join("src" if flags & (1 << i) else "dst" for i in range(1, dim + 1))
    out = f"{' !' if flags & _SET_INVERT else ''} --match-set {name} {dirs}"
    if options & 0x80:
        out += " --return-nomatch"
    if options & 0x08:
        out += " ! --update-counters"
    if options & 0x10:
        out += " ! --update-subcounters"
    for label, value, op in (("packets", packets, packets_op), ("bytes", nbytes, bytes_op)):
        if op:
            bang, word = _SET_COUNTER_OPS[op]
            out += f"{bang} --{label}-{word} {value}"
    return out


_PKTTYPE = struct.Struct("=ii")
_PKT_TYPES = {0: "unicast", 1: "broadcast", 2: "multicast"}


def _pkttype(data: bytes, _family: int) -> str:
    _need(data, _PKTTYPE.size, "pkttype")
    kind, invert = _PKTTYPE.unpack_from(data)
    name = _PKT_TYPES.get(kind)
    if name is None:
        raise Undecodable(f"pkttype {kind}")
    return f"{' !' if invert else ''} --pkt-type {name}"


_IPRANGE_FLAGS = struct.Struct("=B")


def _iprange(data: bytes, family: int) -> str:
    _need(data, 65, "iprange")
    (flags,) = _IPRANGE_FLAGS.unpack_from(data, 64)
    size = 4 if family == 4 else 16
    show = ip4 if family == 4 else ip6
    out = ""
    for bit, inv, label, at in ((0x1, 0x10, "--src-range", 0), (0x2, 0x20, "--dst-range", 32)):
        if flags & bit:
            low, high = data[at : at + size], data[at + 16 : at + 16 + size]
            out += f"{' !' if flags & inv else ''} {label} {show(low)}-{show(high)}"
    return out


_PHYSDEV_TAIL = struct.Struct("=BB")


def _physdev(data: bytes, _family: int) -> str:
    _need(data, 66, "physdev")
    invert, bitmask = _PHYSDEV_TAIL.unpack_from(data, 64)
    out = ""
    if bitmask & 0x01:
        out += f"{' !' if invert & 0x01 else ''} --physdev-in {iface(data[0:16], data[16:32])}"
    if bitmask & 0x02:
        out += f"{' !' if invert & 0x02 else ''} --physdev-out {iface(data[32:48], data[48:64])}"
    if bitmask & 0x08:
        out += f"{' !' if invert & 0x08 else ''} --physdev-is-in"
    if bitmask & 0x10:
        out += f"{' !' if invert & 0x10 else ''} --physdev-is-out"
    if bitmask & 0x04:
        out += f"{' !' if invert & 0x04 else ''} --physdev-is-bridged"
    return out


# -- targets -----------------------------------------------------------------------------

_MARK_TG = struct.Struct("=II")


def _mark_target(data: bytes, _family: int) -> str:
    _need(data, _MARK_TG.size, "MARK")
    mark, mask = _MARK_TG.unpack_from(data)
    return f" --set-xmark 0x{mark:x}/0x{mask:x}"


_REJECT4 = (
    "icmp-net-unreachable", "icmp-host-unreachable", "icmp-proto-unreachable",
    "icmp-port-unreachable", None, "icmp-net-prohibited", "icmp-host-prohibited",
    "tcp-reset", "icmp-admin-prohibited",
)
_REJECT6 = (
    "icmp6-no-route", "icmp6-adm-prohibited", None, "icmp6-addr-unreachable",
    "icmp6-port-unreachable", None, "tcp-reset", "icmp6-policy-fail", "icmp6-reject-route",
)
_U32 = struct.Struct("=I")


def _reject(data: bytes, family: int) -> str:
    _need(data, 4, "REJECT")
    (kind,) = _U32.unpack_from(data)
    names = _REJECT4 if family == 4 else _REJECT6
    name = names[kind] if kind < len(names) else None
    if name is None:
        raise Undecodable(f"REJECT type {kind}")
    return f" --reject-with {name}"


# NAT flags (nf_nat.h)
_MAP_IPS, _PROTO_SPECIFIED, _RANDOM, _PERSISTENT, _RANDOM_FULLY, _PROTO_OFFSET = 1, 2, 4, 8, 16, 32
_NAT_FLAGS = (_RANDOM, " --random"), (_RANDOM_FULLY, " --random-fully"), (_PERSISTENT, " --persistent")
_COMPAT = struct.Struct("=II4s4sHH")  # rangesize, flags, min_ip, max_ip, min port, max port
_RANGE = struct.Struct("=I16s16sHH")  # nf_nat_range: flags, min, max, min proto, max proto
_RANGE2 = struct.Struct("=I16s16sHHH")  # nf_nat_range2: ... base proto


def _be16(value: int) -> int:
    return int.from_bytes(value.to_bytes(2, "little"), "big")


def _nat_range(option: str, family: int, flags: int, low: bytes, high: bytes, plo: int, phi: int, base: int) -> str:
    """DNAT/SNAT: ``--to-destination 10.0.0.1:80``, ``[fd00::1]:80``, ``a-b:p1-p2``."""
    if flags & ~(_MAP_IPS | _PROTO_SPECIFIED | _RANDOM | _PERSISTENT | _RANDOM_FULLY | _PROTO_OFFSET):
        raise Undecodable(f"NAT flags 0x{flags:x}")
    show = ip4 if family == 4 else ip6
    text = ""
    if flags & _MAP_IPS:
        text = show(low) if low == high else f"{show(low)}-{show(high)}"
        if family == 6 and flags & _PROTO_SPECIFIED:
            text = f"[{text}]"
    if flags & _PROTO_SPECIFIED:
        text += f":{_be16(plo)}"
        if phi != plo:
            text += f"-{_be16(phi)}"
        if flags & _PROTO_OFFSET:
            text += f"/{_be16(base)}"
    out = f" --{option} {text}" if text else ""
    return out + "".join(word for bit, word in _NAT_FLAGS if flags & bit)


def _nat(option: str, revision: int) -> Decoder:
    def decode(data: bytes, family: int) -> str:
        if revision == 0:
            _need(data, _COMPAT.size, option)
            count, flags, low, high, plo, phi = _COMPAT.unpack_from(data)
            if count != 1 or family != 4:
                raise Undecodable(f"{option}: {count} ranges")
            return _nat_range(option, family, flags, low, high, plo, phi, 0)
        layout = _RANGE if revision == 1 else _RANGE2
        _need(data, layout.size, option)
        values = layout.unpack_from(data)
        base = values[5] if revision == 2 else 0
        return _nat_range(option, family, values[0], values[1], values[2], values[3], values[4], base)

    return decode


def _ports_range(flags: int, plo: int, phi: int) -> str:
    out = ""
    if flags & _PROTO_SPECIFIED:
        out = f" --to-ports {_be16(plo)}" + (f"-{_be16(phi)}" if phi != plo else "")
    return out + "".join(word for bit, word in _NAT_FLAGS if flags & bit and bit != _PERSISTENT)


def _port_target(name: str) -> Decoder:
    """MASQUERADE and REDIRECT: ports and flags only (IPv4: the compat range, IPv6: nf_nat_range)."""

    def decode(data: bytes, family: int) -> str:
        if family == 4:
            _need(data, _COMPAT.size, name)
            _count, flags, _low, _high, plo, phi = _COMPAT.unpack_from(data)
        else:
            _need(data, _RANGE.size, name)
            flags, _low, _high, plo, phi = _RANGE.unpack_from(data)
        if flags & ~(_MAP_IPS | _PROTO_SPECIFIED | _RANDOM | _RANDOM_FULLY):
            raise Undecodable(f"{name} flags 0x{flags:x}")
        return _ports_range(flags, plo, phi)

    return decode


_LOG = struct.Struct("=BB30s")


def _log(data: bytes, _family: int) -> str:
    _need(data, _LOG.size, "LOG")
    level, flags, prefix = _LOG.unpack_from(data)
    out = ""
    text = cstring(prefix)
    if text:
        out += " --log-prefix" + save_string(text)
    if level != 4:
        out += f" --log-level {level}"
    for bit, word in ((0x01, "--log-tcp-sequence"), (0x02, "--log-tcp-options"), (0x04, "--log-ip-options"),
                      (0x08, "--log-uid"), (0x20, "--log-macdecode")):
        if flags & bit:
            out += " " + word
    return out


_CONNMARK_TG2 = struct.Struct("=IIIBBB")  # ctmark, ctmask, nfmask, shift_dir, shift_bits, mode


def _connmark_target(data: bytes, _family: int) -> str:
    _need(data, _CONNMARK_TG2.size, "CONNMARK")
    ctmark, ctmask, nfmask, _direction, shift, mode = _CONNMARK_TG2.unpack_from(data)
    if shift:
        raise Undecodable("CONNMARK with a shift")
    if mode == 0:
        return f" --set-xmark 0x{ctmark:x}/0x{ctmask:x}"
    if mode in (1, 2):
        word = "--save-mark" if mode == 1 else "--restore-mark"
        return f" {word} --nfmask 0x{nfmask:x} --ctmask 0x{ctmask:x}"
    raise Undecodable(f"CONNMARK mode {mode}")


# -- the registry ------------------------------------------------------------------------

# (name, revision) -> decoder: the revisions iptables 1.8 writes on current kernels, each
# checked against iptables-legacy-save's own output (tests/fixtures/xtables). A rule with
# another revision is read with iptables-legacy-save instead.
MATCHES: dict[tuple[str, int], Decoder] = {
    ("comment", 0): _comment,
    ("tcp", 0): _tcp,
    ("udp", 0): _udp,
    ("sctp", 0): _sctp,
    ("icmp", 0): _icmp,
    ("icmp6", 0): _icmp6,
    ("statistic", 0): _statistic,
    ("mark", 1): _mark,
    ("connmark", 1): _mark,
    ("addrtype", 1): _addrtype,
    ("conntrack", 3): _conntrack,
    ("multiport", 1): _multiport,
    ("recent", 1): _recent,
    ("nfacct", 1): _nfacct,
    ("pkttype", 0): _pkttype,
    ("iprange", 1): _iprange,
    ("physdev", 0): _physdev,
}

TARGETS: dict[tuple[str, int], Decoder] = {
    ("MARK", 2): _mark_target,
    ("REJECT", 0): _reject,
    ("DNAT", 2): _nat("to-destination", 2),
    ("SNAT", 0): _nat("to-source", 0),  # IPv4
    ("SNAT", 1): _nat("to-source", 1),  # IPv6
    ("MASQUERADE", 0): _port_target("MASQUERADE"),
    ("REDIRECT", 0): _port_target("REDIRECT"),
    ("LOG", 0): _log,
    ("CONNMARK", 2): _connmark_target,
}


def match_text(name: str, revision: int, data: bytes, family: int, set_name: SetName | None = None) -> str:
    """`` -m NAME --options...`` for one match (``set_name``: ipset names by index)."""
    if (name, revision) == ("set", 4):
        return " -m set" + set_match(data, set_name)
    decoder = MATCHES.get((name, revision))
    if decoder is None:
        raise Undecodable(f"match {name} revision {revision}")
    if name == "comment":  # the most frequent, first
        return " -m comment" + decoder(data, family)
    shown = _conntrack_alias(data) if name == "conntrack" else name
    return f" -m {shown}" + decoder(data, family)


def target_text(name: str, revision: int, data: bytes, family: int) -> str:
    """`` -j NAME --options...`` for an extension target."""
    decoder = TARGETS.get((name, revision))
    if decoder is None:
        raise Undecodable(f"target {name} revision {revision}")
    return f" -j {name}" + decoder(data, family)
