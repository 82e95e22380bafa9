"""The simulator: one packet through the node's netfilter hooks, every branch followed.

``trace(node, packet)`` is a pure function. Each random choice (``-m statistic``)
forks the path with its real probability; each thing kptrace cannot evaluate forks it
too, evenly, and both branches carry the reason in ``uncertain``. Paths that end the
same way (same verdict, NAT, masquerade, rules) merge.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass, field

from ..errors import KptraceError
from ..model.packet import IPAddress, Packet, format_endpoint, split_endpoint
from ..model.rules import Rule, Ruleset
from ..model.state import NodeState
from . import hooks
from .matches import Chance, Unknown, evaluate
from .prefilter import next_candidate, scan_of
from ..kube.comments import service_of_hops

MAX_PATHS = 20000
MAX_DEPTH = 64


class JumpLoop(KptraceError):
    pass


class TooManyPaths(KptraceError):
    pass


@dataclass(frozen=True, slots=True)
class Hop:
    table: str
    chain: str
    rule: str
    line: int | None
    action: str
    source: str | None = None
    hook: str | None = None  # "nat PREROUTING": the built-in chain the path was in
    conditions: str = ""
    comment: str | None = None


@dataclass(slots=True)
class PathState:
    """One path through the hooks; copied whenever the path forks."""

    src: IPAddress | None
    dst: IPAddress
    sport: int | None
    dport: int
    proto: str
    iif: str | None
    oif: str | None
    mark: int
    orig_src: IPAddress | None
    orig_dst: IPAddress
    orig_dport: int
    ctmark: int = 0
    untracked: bool = False
    dnat_done: bool = False
    snat_done: bool = False
    dnat: str | None = None
    snat: str | None = None
    masquerade: bool = False
    probability: float = 1.0
    hops: list[Hop] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    recent_set: set[str] = field(default_factory=set)
    verdict: str | None = None
    reason: str | None = None
    delivery: str | None = None

    def fork(self, share: float) -> PathState:
        other = copy.copy(self)
        other.hops = list(self.hops)
        other.uncertain = list(self.uncertain)
        other.path = list(self.path)
        other.recent_set = set(self.recent_set)
        other.probability = self.probability * share
        return other


@dataclass(frozen=True, slots=True)
class Outcome:
    probability: float
    verdict: str  # accept | drop | reject
    dnat: str | None
    masquerade: bool
    snat: str | None
    service: str | None
    uncertain: tuple[str, ...]
    hops: tuple[Hop, ...]
    path: tuple[str, ...]
    delivery: str | None  # local | forward | None (ended before delivery)
    reason: str
    mark: int


@dataclass
class Trace:
    packet: Packet
    outcomes: list[Outcome]
    assumptions: list[str]
    warnings: list[str]

    @property
    def uncertain(self) -> bool:
        return any(o.uncertain for o in self.outcomes)


class TraceContext:
    """What the evaluators may ask about the node, and where they leave notes."""

    def __init__(self, node: NodeState, ruleset: Ruleset) -> None:
        self.node = node
        self.ruleset = ruleset
        self.assumptions: list[str] = []
        self.bridged_possible = False

    def assume(self, text: str) -> None:
        if text not in self.assumptions:
            self.assumptions.append(text)

    def note_affinity(self) -> None:
        self.assume(
            "a first packet from this client: no session-affinity history "
            "(-m recent --rcheck finds nothing; later packets stick to the first endpoint)"
        )


_NON_TERMINATING = {
    "LOG", "NFLOG", "ULOG", "TRACE", "TCPMSS", "DSCP", "TOS", "CLASSIFY", "CHECKSUM",
    "TTL", "HL", "SECMARK", "CONNSECMARK", "AUDIT", "IDLETIMER", "LED", "RATEEST",
    "NETMAP",
}


def trace(node: NodeState, packet: Packet) -> Trace:
    ruleset = node.ruleset_for(packet.family)
    if ruleset is None:
        fams = sorted({rs.family for rs in node.rulesets if rs.family})
        raise KptraceError(
            f"no IPv{packet.family} ruleset was given (the rules read are IPv{', IPv'.join(map(str, fams))})"
        )
    sim = _Simulator(node, ruleset)
    return sim.run(packet)


def _martian_source(src: IPAddress, dst: IPAddress, route_localnet: str | None) -> str | None:
    """Why IPv4 routing refuses a packet from another host with this source, if it does
    (the checks of ip_route_input_slow, in its order)."""
    if src.is_multicast:
        return "multicast"
    if int(src) == 0xFFFFFFFF:
        return "limited broadcast"
    if int(dst) == 0xFFFFFFFF or (int(src) == 0 and int(dst) == 0):
        return None  # broadcast input (DHCP DISCOVER comes from 0.0.0.0)
    if int(src) >> 24 == 0:
        return "0.0.0.0/8"
    if not dst.is_loopback and src.is_loopback and route_localnet is not None and route_localnet.strip() == "0":
        # The kernel also accepts the interface's own route_localnet; only "all" is read.
        return "loopback, with net.ipv4.conf.all.route_localnet=0"
    return None


class _Simulator:
    def __init__(self, node: NodeState, ruleset: Ruleset) -> None:
        self.node = node
        self.rs = ruleset
        self.ctx = TraceContext(node, ruleset)
        self.paths = 0

    # -- the hooks ---------------------------------------------------------
    def run(self, packet: Packet) -> Trace:
        self.ctx.assume("the first packet of a new connection (conntrack state NEW)")
        st = PathState(
            src=packet.src,
            dst=packet.dst,
            sport=packet.sport,
            dport=packet.dport,
            proto=packet.proto,
            iif=packet.iif if packet.origin == "remote" else None,
            oif=None,
            mark=packet.mark,
            orig_src=packet.src,
            orig_dst=packet.dst,
            orig_dport=packet.dport,
        )
        finished: list[PathState] = []
        if packet.origin == "local":
            self._local(st, finished)
        else:
            self._remote(st, finished)
        outcomes = self._merge(finished)
        return Trace(packet, outcomes, list(self.ctx.assumptions), [])

    def _stage(self, states: list[PathState], stage: hooks.Stage, finished: list[PathState]) -> list[PathState]:
        for table, chain in stage:
            if table not in self.rs.tables:
                continue
            nxt: list[PathState] = []
            for st in states:
                if table == "nat" and st.untracked:
                    nxt.append(st)
                    continue
                st.path.append(f"{table} {chain}")
                for s2, verdict in self._run_builtin(st, table, chain):
                    if verdict in ("DROP", "REJECT"):
                        s2.verdict = verdict.lower()
                        finished.append(s2)
                    else:
                        nxt.append(s2)
            states = nxt
        return states

    def _remote(self, st: PathState, finished: list[PathState]) -> None:
        states = self._stage([st], hooks.PREROUTING, finished)
        for s in states:
            local = self._route(s, finished, local_origin=False)
            if local is None:
                continue
            if local:
                for s2 in self._stage([s], hooks.INPUT, finished):
                    self._deliver(s2, "local", finished)
            else:
                after = self._stage([s], hooks.FORWARD, finished)
                for s2 in self._stage(after, hooks.POSTROUTING, finished):
                    self._deliver(s2, "forward", finished)

    def _local(self, st: PathState, finished: list[PathState]) -> None:
        # The socket's route lookup comes first: an unroutable destination fails here.
        if self._route(st, finished, local_origin=True, before_nat=True) is None:
            return
        states = self._stage([st], hooks.OUTPUT_PRE_ROUTE, finished)
        for s in states:
            local = self._route(s, finished, local_origin=True)
            if local is None:
                continue
            after = self._stage([s], hooks.OUTPUT_POST_ROUTE, finished)
            for s2 in self._stage(after, hooks.POSTROUTING, finished):
                if local:
                    s2.iif = "lo"
                    loop = self._stage([s2], hooks.LOOPBACK_PREROUTING, finished)
                    for s3 in self._stage(loop, hooks.LOOPBACK_INPUT, finished):
                        self._deliver(s3, "local", finished)
                else:
                    self._deliver(s2, "forward", finished)

    def _deliver(self, st: PathState, how: str, finished: list[PathState]) -> None:
        st.verdict = "accept"
        st.delivery = how
        if st.reason is None:
            st.reason = "delivered to a local socket" if how == "local" else f"forwarded to {st.dst}"
        finished.append(st)

    def _route(self, st: PathState, finished: list[PathState], *, local_origin: bool, before_nat: bool = False) -> bool | None:
        """The routing decision: True local, False forward/out, None the path ended."""
        if not local_origin and not before_nat and st.src is not None and st.src.version == 4:
            martian = _martian_source(st.src, st.dst, self.node.sysctls.get("net.ipv4.conf.all.route_localnet"))
            if martian:
                # ip_route_input drops these after PREROUTING: its rules (and DNAT) ran.
                st.verdict = "drop"
                st.reason = f"martian source {st.src} ({martian}): the kernel's routing drops it"
                st.path.append("routing: martian source")
                finished.append(st)
                return None
        local = True if st.dst.version == 4 and int(st.dst) == 0xFFFFFFFF else self.node.is_local(st.dst)
        if local is None:  # (the limited broadcast above is delivered to the node itself)
            local = False
            self.ctx.assume(
                "the node's own addresses are unknown (no --local-ip): only loopback "
                "destinations are treated as local"
            )
        how = "local" if local else "forward" if not local_origin else "out"
        if not local:
            route = self._lookup_route(st.dst)
            if route is False:
                st.verdict = "drop" if not local_origin else "reject"
                st.reason = f"no route to {st.dst}: " + (
                    "the socket's connect() fails (network unreachable)"
                    if local_origin
                    else "the kernel drops it before FORWARD (and answers ICMP unreachable)"
                )
                st.path.append(f"routing: no route to {st.dst}")
                finished.append(st)
                return None
            if route is not None:
                st.oif = route
            if not local_origin and not self._forwarding(st.dst.version):
                st.verdict = "drop"
                key = "net.ipv4.ip_forward" if st.dst.version == 4 else "net.ipv6.conf.all.forwarding"
                st.reason = f"{key}=0: the node does not forward, the kernel drops it before FORWARD"
                st.path.append("routing: forwarding disabled")
                finished.append(st)
                return None
            if st.src is not None and st.src.is_loopback and not before_nat:
                if st.src.version == 6:
                    st.verdict = "drop"
                    st.reason = f"source {st.src} cannot leave the node (loopback address)"
                    st.path.append("routing: loopback source leaves lo: dropped")
                    finished.append(st)
                    return None
                rl = self.node.sysctls.get("net.ipv4.conf.all.route_localnet")
                if rl is None:
                    self.ctx.assume("route_localnet=1 (kube-proxy sets it for localhost NodePorts)")
                elif rl.strip() == "0":
                    st.verdict = "drop"
                    st.reason = f"source {st.src} may not leave lo: net.ipv4.conf.all.route_localnet=0"
                    st.path.append("routing: martian source (route_localnet=0)")
                    finished.append(st)
                    return None
        else:
            st.oif = "lo" if local_origin else None
        if not before_nat:
            st.path.append(f"routing: {how} ({st.dst})")
        return local

    def _forwarding(self, family: int) -> bool:
        key = "net.ipv4.ip_forward" if family == 4 else "net.ipv6.conf.all.forwarding"
        value = self.node.sysctls.get(key)
        if value is None:
            self.ctx.assume("the node forwards packets (ip_forward=1, as on every Kubernetes node)")
            return True
        return value.strip() != "0"

    def _lookup_route(self, dst: IPAddress) -> str | None | bool:
        """Output interface name, None if unknown, False if there is no route."""
        routes = self.node.routes
        if routes is None:
            self.ctx.assume("the node has a route for every destination (a default route)")
            return None
        best = None
        for r in routes:
            if r.table not in ("main", "default", "254") or r.dst.version != dst.version:
                continue
            if dst in r.dst and (best is None or r.dst.prefixlen > best.dst.prefixlen):
                best = r
        if best is None or best.kind in ("unreachable", "blackhole", "prohibit", "throw"):
            return False
        return best.dev

    # -- chains ------------------------------------------------------------
    def _run_builtin(self, st: PathState, table: str, chain_name: str) -> list[tuple[PathState, str]]:
        chain = self.rs.chain(table, chain_name)
        if chain is None:
            return [(st, "ACCEPT")]
        out: list[tuple[PathState, str]] = []
        for s, result in self._run_chain(st, table, chain_name, ()):
            if result == "RETURN":
                policy = chain.effective_policy
                s.hops.append(Hop(table, chain_name, f":{chain_name} {chain.policy or '-'}", chain.line, f"policy {policy}", self.rs.source, f"{table} {chain_name}"))
                if policy in ("DROP", "REJECT"):
                    s.reason = f"dropped by the policy of {table} {chain_name}"
                result = policy
            out.append((s, result))
        return out

    def _run_chain(self, st: PathState, table: str, name: str, stack: tuple[str, ...]) -> list[tuple[PathState, str]]:
        if name in stack:
            loop = " -> ".join(stack[stack.index(name):] + (name,))
            raise JumpLoop(f"jump loop in table {table}: {loop}")
        if len(stack) >= MAX_DEPTH:
            raise JumpLoop(f"jumps nest deeper than {MAX_DEPTH} chains in table {table}: {' -> '.join(stack[:5])} ...")
        chain = self.rs.chain(table, name)
        count = len(chain) if chain is not None else 0
        stack = stack + (name,)
        results: list[tuple[PathState, str]] = []
        work: list[tuple[PathState, int]] = [(st, 0)]
        while work:
            s, i = work.pop()
            ended = False
            scan = scan_of(chain) if chain is not None else None
            found = scan.candidates(s.dst) if scan is not None else None
            while i < count:
                assert chain is not None and scan is not None
                if found is not None:
                    nxt = next_candidate(found, i)
                    if nxt is None:
                        break  # no rule left that could match
                    i = nxt
                if scan.cannot_match(i, s.dst, s.dport):
                    i += 1  # ruled out from its text: no need to parse it
                    continue
                rule = chain.rule(i)
                i += 1
                matched, forks = self._match_rule(rule, s)
                for other in reversed(forks):
                    work.append((other, i))
                    self._count_path()
                if not matched:
                    continue
                verdict = self._apply_target(rule, s, table, stack, work, i, results)
                if verdict is not None:
                    ended = True
                    break
            if not ended:
                results.append((s, "RETURN"))
        return results

    def _count_path(self) -> None:
        self.paths += 1
        if self.paths > MAX_PATHS:
            raise TooManyPaths(
                f"more than {MAX_PATHS} paths: the ruleset branches too much to follow every branch"
            )

    def _match_rule(self, rule: Rule, st: PathState) -> tuple[bool, list[PathState]]:
        """Does the rule match? Forks the not-matching share off when it is a chance."""
        p = 1.0
        whys: list[str] = []
        unknown: list[str] = []
        for m in rule.matches:
            r = evaluate(m, st, self.ctx)
            if r is False:
                return False, []
            if isinstance(r, Chance):
                p *= r.p
                whys.append(r.why)
            elif isinstance(r, Unknown):
                unknown.append(r.reason)
        if not whys and not unknown:
            return True, []
        forks: list[PathState] = []
        if unknown:
            where = self._where(rule)
            reason = f"{'; '.join(unknown)} [{where}]"
            # Neither branch can be ruled out: follow both, evenly, and say so.
            miss = st.fork(0.5)
            miss.uncertain.append(f"assumed NOT matched: {reason}")
            forks.append(miss)
            st.probability *= 0.5
            st.uncertain.append(f"assumed matched: {reason}")
        if whys:
            if p <= 0.0:
                return False, forks
            if p < 1.0:
                forks.append(st.fork(1.0 - p))
                st.probability *= p
        return True, forks

    def _where(self, rule: Rule) -> str:
        loc = f"{rule.source}:{rule.line}" if rule.line else rule.source
        return f"{rule.table} {rule.chain}, {loc}"

    def _hop(self, st: PathState, rule: Rule, action: str) -> None:
        hook = st.path[-1] if st.path else None
        st.hops.append(
            Hop(rule.table, rule.chain, rule.raw, rule.line, action, rule.source, hook, rule.conditions(), rule.comment)
        )

    def _apply_target(
        self,
        rule: Rule,
        st: PathState,
        table: str,
        stack: tuple[str, ...],
        work: list[tuple[PathState, int]],
        next_index: int,
        results: list[tuple[PathState, str]],
    ) -> str | None:
        """Apply the rule's target; returns the chain's result when traversal stops here."""
        target = rule.target
        if target is None:
            self._hop(st, rule, "match (no target)")
            return None
        name = target.name
        if name in ("ACCEPT", "DROP", "REJECT"):
            self._hop(st, rule, name)
            if name != "ACCEPT":
                st.reason = f"{name} by {table} {rule.chain} ({self._where(rule).split(', ', 1)[1]})"
            results.append((st, name))
            return name
        if name == "RETURN":
            self._hop(st, rule, "RETURN")
            results.append((st, "RETURN"))
            return "RETURN"
        if name in ("DNAT", "SNAT", "MASQUERADE", "REDIRECT"):
            return self._nat(rule, st, table, results)
        if name in ("MARK", "CONNMARK"):
            self._mark(rule, st)
            return None
        if name in ("NOTRACK",) or (name == "CT" and target.option("--notrack")):
            self._hop(st, rule, "NOTRACK (connection not tracked: NAT is skipped)")
            st.untracked = True
            return None
        if name == "CT":
            self._hop(st, rule, "CT")
            return None
        if name in _NON_TERMINATING:
            self._hop(st, rule, f"{name} (continues)")
            return None
        if name in ("QUEUE", "NFQUEUE"):
            self._hop(st, rule, name)
            st.uncertain.append(f"{name}: a userspace program decides the verdict [{self._where(rule)}]")
            results.append((st, "ACCEPT"))
            return "ACCEPT"
        if self.rs.has_chain(table, name):
            self._hop(st, rule, ("goto " if target.goto else "jump ") + name)
            for s2, r2 in reversed(self._run_chain(st, table, name, stack)):
                if r2 == "RETURN" and not target.goto:
                    work.append((s2, next_index))
                else:
                    results.append((s2, r2))
            return "JUMPED"
        if name.isupper() and not name.startswith("KUBE-") and "-" not in name:
            self._hop(st, rule, f"{name} (unknown target)")
            st.uncertain.append(f"target {name} is not evaluated by kptrace; assumed to continue [{self._where(rule)}]")
            return None
        self._hop(st, rule, f"jump {name} (chain missing)")
        st.uncertain.append(
            f"jump to chain {name}, which is not in table {table} (rules changed while read?) [{self._where(rule)}]"
        )
        return None

    def _nat(self, rule: Rule, st: PathState, table: str, results: list[tuple[PathState, str]]) -> str:
        target = rule.target
        assert target is not None
        name = target.name
        if table != "nat":
            self._hop(st, rule, f"{name} outside the nat table (ignored by the kernel)")
            st.uncertain.append(f"{name} in table {table} is not valid [{self._where(rule)}]")
            return "ACCEPT"
        if name == "DNAT":
            opt = target.option("--to-destination", "--to")
            to = opt.value if opt else ""
            ip, port = split_endpoint(to)
            if ip is not None:
                st.dst = ip
                if port is not None:
                    st.dport = port
                st.dnat = format_endpoint(st.dst, st.dport)
            else:
                st.dnat = to
                st.uncertain.append(f"DNAT to {to!r}: a range (the kernel picks one) or unreadable [{self._where(rule)}]")
            st.dnat_done = True
            self._hop(st, rule, f"DNAT {st.dnat}")
        elif name == "REDIRECT":
            opt = target.option("--to-ports")
            port = int(opt.value.split("-")[0]) if opt else st.dport
            st.dst = ipaddress.ip_address("127.0.0.1" if st.dst.version == 4 else "::1") if st.iif in (None, "lo") else st.dst
            st.dport = port
            st.dnat = f"node:{port}"
            st.dnat_done = True
            self._hop(st, rule, f"REDIRECT to this node's port {port}")
        elif name == "SNAT":
            opt = target.option("--to-source", "--to")
            st.snat = opt.value if opt else None
            st.snat_done = True
            self._hop(st, rule, f"SNAT {st.snat}")
        else:
            st.masquerade = True
            st.snat_done = True
            self._hop(st, rule, "MASQUERADE (source becomes the node's address on the way out)")
        results.append((st, "ACCEPT"))
        return "ACCEPT"

    def _mark(self, rule: Rule, st: PathState) -> None:
        target = rule.target
        assert target is not None
        is_conn = target.name == "CONNMARK"
        cur = st.ctmark if is_conn else st.mark
        action = target.name
        for opt in target.options:
            try:
                if opt.name in ("--set-xmark", "--set-mark"):
                    if "/" in opt.value:
                        v, m = (int(x, 0) for x in opt.value.split("/", 1))
                    else:
                        v, m = int(opt.value, 0), 0xFFFFFFFF
                    cur = (cur & ~m) ^ v if opt.name == "--set-xmark" else (cur & ~m) | v
                elif opt.name == "--or-mark":
                    cur |= int(opt.value, 0)
                elif opt.name == "--and-mark":
                    cur &= int(opt.value, 0)
                elif opt.name == "--xor-mark":
                    cur ^= int(opt.value, 0)
                elif is_conn and opt.name == "--save-mark":
                    cur = st.mark
                elif is_conn and opt.name == "--restore-mark":
                    st.mark = st.ctmark
                    continue
                else:
                    continue
            except ValueError:
                st.uncertain.append(f"cannot read {opt.name} {opt.value} [{self._where(rule)}]")
                continue
            cur &= 0xFFFFFFFF
        if is_conn:
            st.ctmark = cur
            action += f" ctmark={cur:#x}"
        else:
            st.mark = cur
            action += f" mark={cur:#x}"
        self._hop(st, rule, action)

    # -- results -----------------------------------------------------------
    def _merge(self, finished: list[PathState]) -> list[Outcome]:
        """Paths that end the same way become one outcome.

        An unknown match forks a path into "assumed matched" and "assumed NOT matched";
        when both branches end the same way the answer does not depend on it, so the
        merged outcome drops that reason.
        """
        groups: dict[tuple, list[PathState]] = {}
        for st in finished:
            reasons = frozenset(_strip_assumption(u) for u in st.uncertain)
            key = (st.verdict or "accept", st.dnat, st.masquerade, st.snat, st.delivery, reasons)
            groups.setdefault(key, []).append(st)
        outcomes = []
        for (verdict, dnat, masq, snat, delivery, _), states in groups.items():
            first = max(states, key=lambda s: s.probability)
            seen: dict[str, set[str]] = {}
            for st in states:
                for u in st.uncertain:
                    seen.setdefault(_strip_assumption(u), set()).add(u)
            uncertain = []
            for reason, variants in seen.items():
                both = any(v.startswith("assumed matched") for v in variants) and any(
                    v.startswith("assumed NOT matched") for v in variants
                )
                if not both:
                    uncertain.extend(sorted(variants))
            hops = tuple(first.hops)
            outcomes.append(
                Outcome(
                    probability=sum(s.probability for s in states),
                    verdict=verdict,
                    dnat=dnat,
                    masquerade=masq,
                    snat=snat,
                    service=service_of_hops(hops),
                    uncertain=tuple(uncertain),
                    hops=hops,
                    path=tuple(first.path),
                    delivery=delivery,
                    reason=first.reason or "",
                    mark=first.mark,
                )
            )
        return outcomes


def _strip_assumption(text: str) -> str:
    for prefix in ("assumed matched: ", "assumed NOT matched: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text
