"""Evaluate one iptables match against the packet as it is at that point.

Each evaluator returns True, False, ``Chance(p)`` (a random choice: the simulator
follows both branches) or ``Unknown(reason)`` (kptrace cannot tell: the simulator
follows both branches and marks them uncertain). Evaluators are looked up by module
name, so a new module is one function here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..model.packet import PROTO_NUMBERS, IPAddress
from ..model.rules import Match, Option

if TYPE_CHECKING:
    from .simulate import PathState, TraceContext


@dataclass(frozen=True, slots=True)
class Chance:
    p: float
    why: str


@dataclass(frozen=True, slots=True)
class Unknown:
    reason: str


Result = bool | Chance | Unknown
Evaluator = Callable[["Match", "PathState", "TraceContext"], Result]


def _neg(opt: Option, value: Result) -> Result:
    if not opt.negated:
        return value
    if isinstance(value, bool):
        return not value
    if isinstance(value, Chance):
        return Chance(1.0 - value.p, "not " + value.why)
    return value


def _all(results: list[Result]) -> Result:
    """AND of several option results within one match."""
    if any(r is False for r in results):
        return False
    unknown = [r for r in results if isinstance(r, Unknown)]
    if unknown:
        return unknown[0]
    p = 1.0
    why = []
    for r in results:
        if isinstance(r, Chance):
            p *= r.p
            why.append(r.why)
    return Chance(p, ", ".join(why)) if why else True


def parse_net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def _addr_in(addr: IPAddress | None, text: str, what: str) -> Result:
    if addr is None:
        return Unknown(f"the {what} address is not known (give --src)" if what == "source" else f"the {what} address is not known")
    try:
        net = parse_net(text)
    except ValueError:
        return Unknown(f"cannot read address {text!r}")
    if net.version != addr.version:
        return False
    return addr in net


def _iface(name: str | None, pattern: str, what: str) -> Result:
    if name is None:
        return Unknown(f"the {what} interface is not known" + (" (give --iif)" if what == "input" else ""))
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _proto_matches(proto: str, text: str) -> bool:
    want = text.lower()
    if want in ("all", "0"):
        return True
    if want.isdigit():
        return PROTO_NUMBERS.get(proto) == int(want)
    if want in ("icmpv6", "ipv6-icmp", "icmp6"):
        return proto in ("icmpv6",)
    return proto == want


def eval_builtin(match: Match, st: PathState, ctx: TraceContext) -> Result:
    results: list[Result] = []
    for opt in match.options:
        v = opt.value
        if opt.name == "-s":
            r: Result = _addr_in(st.src, v, "source")
        elif opt.name == "-d":
            r = _addr_in(st.dst, v, "destination")
        elif opt.name == "-p":
            r = _proto_matches(st.proto, v)
        elif opt.name == "-i":
            r = _iface(st.iif, v, "input")
        elif opt.name == "-o":
            r = _iface(st.oif, v, "output")
        elif opt.name == "-f":
            r = False  # the first packet of a connection is not a later fragment
        else:
            r = Unknown(f"unknown option {opt.name}")
        results.append(_neg(opt, r))
    return _all(results)


def _port_in(port: int | None, spec: str) -> Result:
    if port is None:
        return Unknown("the source port is not known (give --sport)")
    try:
        if ":" in spec:
            lo, hi = spec.split(":", 1)
            return int(lo or 0) <= port <= int(hi or 65535)
        return port == int(spec)
    except ValueError:
        return Unknown(f"cannot read port {spec!r} (service names are not resolved)")


def _ports_in(port: int | None, spec: str) -> Result:
    if port is None:
        return Unknown("the source port is not known (give --sport)")
    results = [_port_in(port, p) for p in spec.split(",")]
    if any(r is True for r in results):
        return True
    unknown = [r for r in results if isinstance(r, Unknown)]
    return unknown[0] if unknown else False


def eval_l4(match: Match, st: PathState, ctx: TraceContext) -> Result:
    proto = {"icmp6": "icmpv6"}.get(match.module, match.module)
    if st.proto != proto:
        return False
    results: list[Result] = []
    for opt in match.options:
        if opt.name in ("--dport", "--destination-port"):
            r: Result = _port_in(st.dport, opt.value)
        elif opt.name in ("--sport", "--source-port"):
            r = _port_in(st.sport, opt.value)
        elif opt.name == "--syn":
            r = True  # a new TCP connection starts with SYN
        elif opt.name == "--tcp-flags":
            mask, comp = (set(a.upper().split(",")) for a in opt.args)
            on = {"SYN"}
            if "ALL" in mask:
                mask = {"SYN", "ACK", "FIN", "RST", "URG", "PSH"}
            r = (on & mask) == (comp - {"NONE"})
        else:
            r = Unknown(f"-m {match.module} {opt.name} is not evaluated")
        results.append(_neg(opt, r))
    return _all(results)


def eval_multiport(match: Match, st: PathState, ctx: TraceContext) -> Result:
    if st.proto not in ("tcp", "udp", "sctp", "udplite", "dccp"):
        return False
    results: list[Result] = []
    for opt in match.options:
        if opt.name in ("--dports", "--destination-ports"):
            r: Result = _ports_in(st.dport, opt.value)
        elif opt.name in ("--sports", "--source-ports"):
            r = _ports_in(st.sport, opt.value)
        elif opt.name == "--ports":
            a, b = _ports_in(st.sport, opt.value), _ports_in(st.dport, opt.value)
            r = True if (a is True or b is True) else a if isinstance(a, Unknown) else b
        else:
            r = Unknown(f"-m multiport {opt.name} is not evaluated")
        results.append(_neg(opt, r))
    return _all(results)


def eval_always(match: Match, st: PathState, ctx: TraceContext) -> Result:
    return True  # comment, nfacct (a counter)


def _value_mask(text: str) -> tuple[int, int]:
    if "/" in text:
        v, m = text.split("/", 1)
        return int(v, 0), int(m, 0)
    return int(text, 0), 0xFFFFFFFF


def eval_mark(match: Match, st: PathState, ctx: TraceContext) -> Result:
    results: list[Result] = []
    for opt in match.options:
        try:
            value, mask = _value_mask(opt.value)
        except ValueError:
            results.append(Unknown(f"cannot read mark {opt.value!r}"))
            continue
        current = st.ctmark if match.module == "connmark" else st.mark
        results.append(_neg(opt, (current & mask) == value))
    return _all(results)


def _ctstates(st: PathState) -> set[str]:
    if st.untracked:
        return {"UNTRACKED"}
    states = {"NEW"}
    if st.dnat_done:
        states.add("DNAT")
    if st.snat_done:
        states.add("SNAT")
    return states


def eval_conntrack(match: Match, st: PathState, ctx: TraceContext) -> Result:
    results: list[Result] = []
    for opt in match.options:
        if opt.name in ("--ctstate", "--state"):
            wanted = {s.upper() for s in opt.value.split(",")}
            r: Result = bool(wanted & _ctstates(st))
        elif opt.name == "--ctstatus":
            wanted = {s.upper() for s in opt.value.split(",")}
            r = "NONE" in wanted or False  # a first packet has no EXPECTED/SEEN_REPLY/ASSURED/CONFIRMED
        elif opt.name == "--ctproto":
            r = _proto_matches(st.proto, opt.value)
        elif opt.name == "--ctorigdst":
            r = _addr_in(st.orig_dst, opt.value, "original destination")
        elif opt.name == "--ctorigsrc":
            r = _addr_in(st.orig_src, opt.value, "original source")
        elif opt.name == "--ctorigdstport":
            r = _port_in(st.orig_dport, opt.value)
        elif opt.name == "--ctdir":
            r = opt.value.upper() == "ORIGINAL"
        else:
            r = Unknown(f"-m conntrack {opt.name} is not evaluated")
        results.append(_neg(opt, r))
    return _all(results)


def _addr_type(addr: IPAddress | None, types: str, ctx: TraceContext, what: str) -> Result:
    if addr is None:
        return Unknown(f"the {what} address is not known (give --src)")
    wanted = {t.upper() for t in types.split(",")}
    local = ctx.node.is_local(addr)
    kinds: set[str] = set()
    if addr.is_multicast:
        kinds.add("MULTICAST")
    elif addr.version == 4 and (addr == ipaddress.IPv4Address("255.255.255.255")):
        kinds.add("BROADCAST")
    elif local is None:
        if wanted & {"LOCAL", "UNICAST"} == {"UNICAST"}:
            return True
        if "LOCAL" in wanted:
            return Unknown(f"whether {addr} is an address of this node is not known (give --local-ip)")
        return Unknown(f"the address type of {addr} is not known")
    elif local:
        kinds.add("LOCAL")
    else:
        kinds.add("UNICAST")
    return bool(wanted & kinds)


def eval_addrtype(match: Match, st: PathState, ctx: TraceContext) -> Result:
    results: list[Result] = []
    for opt in match.options:
        if opt.name == "--src-type":
            r: Result = _addr_type(st.src, opt.value, ctx, "source")
        elif opt.name == "--dst-type":
            r = _addr_type(st.dst, opt.value, ctx, "destination")
        elif opt.name in ("--limit-iface-in", "--limit-iface-out"):
            r = True  # kptrace's notion of local is node-wide; see assumptions
            ctx.assume("addrtype --limit-iface-* treated as node-wide")
        else:
            r = Unknown(f"-m addrtype {opt.name} is not evaluated")
        results.append(_neg(opt, r))
    return _all(results)


def eval_statistic(match: Match, st: PathState, ctx: TraceContext) -> Result:
    mode = match.option("--mode")
    neg = False
    if mode is None or mode.value == "random":
        opt = match.option("--probability")
        if opt is None:
            return Unknown("-m statistic without --probability")
        try:
            p = float(opt.value)
        except ValueError:
            return Unknown(f"cannot read probability {opt.value!r}")
        neg = opt.negated
        p = min(max(p, 0.0), 1.0)
        r: Result = Chance(p, f"random {p:g}")
    elif mode.value == "nth":
        every = match.option("--every")
        if every is None:
            return Unknown("-m statistic --mode nth without --every")
        n = int(every.value)
        neg = every.negated
        # Which packet of the round this is depends on the counter's state: over many
        # connections each rule gets one in n.
        r = Chance(1.0 / n, f"every {n}th (counter state unknown)")
    else:
        return Unknown(f"-m statistic --mode {mode.value} is not evaluated")
    if neg and isinstance(r, Chance):
        return Chance(1.0 - r.p, "not " + r.why)
    return r


def eval_recent(match: Match, st: PathState, ctx: TraceContext) -> Result:
    name = match.option("--name")
    list_name = name.value if name else "DEFAULT"
    check = match.option("--rcheck", "--update")
    if match.option("--set") is not None:
        st.recent_set.add(list_name)
        ctx.note_affinity()
        r: Result = True
        opt = match.option("--set")
    elif check is not None:
        ctx.note_affinity()
        # A first packet has no history, unless this same packet was just added.
        r = list_name in st.recent_set
        opt = check
    elif match.option("--remove") is not None:
        opt = match.option("--remove")
        r = list_name in st.recent_set
        st.recent_set.discard(list_name)
    else:
        return Unknown("-m recent without --set/--rcheck/--update/--remove")
    assert opt is not None
    return _neg(opt, r)


def eval_physdev(match: Match, st: PathState, ctx: TraceContext) -> Result:
    # A packet routed by the node itself (not bridged) has no bridge port.
    results: list[Result] = []
    for opt in match.options:
        if opt.name == "--physdev-is-bridged":
            r: Result = False if not ctx.bridged_possible else Unknown("whether the packet crossed a bridge is not known")
        elif opt.name in ("--physdev-is-in", "--physdev-is-out", "--physdev-in", "--physdev-out"):
            r = Unknown(f"-m physdev {opt.name}: the bridge port is not known")
        else:
            r = Unknown(f"-m physdev {opt.name} is not evaluated")
        results.append(_neg(opt, r))
    return _all(results)


def eval_set(match: Match, st: PathState, ctx: TraceContext) -> Result:
    from .ipsets import set_contains

    results: list[Result] = []
    for opt in match.options:
        if opt.name != "--match-set":
            if opt.name in ("--return-nomatch", "--update-counters", "--update-subcounters"):
                continue
            results.append(Unknown(f"-m set {opt.name} is not evaluated"))
            continue
        set_name, flags = opt.args
        results.append(_neg(opt, set_contains(ctx.node.ipsets, set_name, flags.split(","), st)))
    return _all(results)


def eval_iprange(match: Match, st: PathState, ctx: TraceContext) -> Result:
    results: list[Result] = []
    for opt in match.options:
        addr = st.src if opt.name == "--src-range" else st.dst
        if addr is None:
            results.append(Unknown("the source address is not known (give --src)"))
            continue
        lo, _, hi = opt.value.partition("-")
        try:
            a, b = ipaddress.ip_address(lo), ipaddress.ip_address(hi or lo)
        except ValueError:
            results.append(Unknown(f"cannot read range {opt.value!r}"))
            continue
        results.append(_neg(opt, a.version == addr.version and a <= addr <= b))  # type: ignore[operator]
    return _all(results)


def eval_limit(match: Match, st: PathState, ctx: TraceContext) -> Result:
    ctx.assume("rate limits (-m limit/hashlimit) are not exhausted")
    return True


def eval_pkttype(match: Match, st: PathState, ctx: TraceContext) -> Result:
    opt = match.option("--pkt-type")
    if opt is None:
        return True
    kind = "multicast" if st.dst.is_multicast else "unicast"
    return _neg(opt, opt.value.lower() == kind)


def eval_icmp(match: Match, st: PathState, ctx: TraceContext) -> Result:
    if st.proto != ("icmp" if match.module == "icmp" else "icmpv6"):
        return False
    return Unknown(f"-m {match.module} types are not evaluated")


EVALUATORS: dict[str, Evaluator] = {
    "": eval_builtin,
    "tcp": eval_l4,
    "udp": eval_l4,
    "sctp": eval_l4,
    "multiport": eval_multiport,
    "comment": eval_always,
    "nfacct": eval_always,
    "mark": eval_mark,
    "connmark": eval_mark,
    "conntrack": eval_conntrack,
    "state": eval_conntrack,
    "addrtype": eval_addrtype,
    "statistic": eval_statistic,
    "recent": eval_recent,
    "physdev": eval_physdev,
    "set": eval_set,
    "iprange": eval_iprange,
    "limit": eval_limit,
    "hashlimit": eval_limit,
    "pkttype": eval_pkttype,
    "icmp": eval_icmp,
    "icmp6": eval_icmp,
}


def evaluate(match: Match, st: PathState, ctx: TraceContext) -> Result:
    fn = EVALUATORS.get(match.module)
    if fn is None:
        return Unknown(f"match module -m {match.module} is not evaluated by kptrace")
    return fn(match, st, ctx)
