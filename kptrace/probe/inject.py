"""Send probes and collect the kernel's evidence: its trace (iptables-nft) or counter
deltas (iptables-legacy, or several probes), guard counts, conntrack.

``inject`` never changes kube-proxy's chains. What it adds (the guard table, a temporary
source namespace, the trace monitor, session affinity entries of the probe source) is
removed in a ``finally`` that also runs on Ctrl-C and SIGTERM; ``cleanup`` removes what a
kill -9 left.
"""

from __future__ import annotations

import fcntl
import os
import random
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from ..model.packet import IPAddress, Packet, format_endpoint
from ..trace.simulate import Outcome, Trace
from . import conntrack, counters, guard, send, sourcens
from . import trace as ktrace
from .stats import binomial_bounds

SETTLE_TIMEOUT = 1.0  # seconds to wait for every probe to be counted somewhere
REPLY_WAIT = 0.05  # delivered probes: let the answer and the sender's RST pass first
MAX_COUNT = 10000


@dataclass
class ObservedHop:
    table: str
    chain: str
    rule: str
    packets: int
    predicted: bool
    verdict: str | None = None  # from the trace: JUMP, ACCEPT, DROP, ... (None: counters)


@dataclass
class Observation:
    src: IPAddress
    sports: list[int]
    verdict: str | None  # accept | drop | reject | None (lost: no rule counted it)
    delivery: str | None
    dnat: str | None
    masquerade: bool
    hops: list[ObservedHop]
    counts: dict[str, int] = field(default_factory=dict)
    bounds: dict[str, tuple[int, int]] = field(default_factory=dict)
    conntrack: list[conntrack.CtEntry] = field(default_factory=list)
    matched: Outcome | None = None  # the predicted outcome with the observed result
    compared: Outcome | None = None  # the outcome the hops were compared with
    first_difference: int | None = None  # index in the compared outcome's rule hops
    agrees: bool = False
    evidence: str = "counters"  # trace | counters
    src_netns: str | None = None
    temporary_netns: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def outcome_key(o: Outcome) -> str:
    """What a count is about: the endpoint, or the verdict when nothing DNATs."""
    return o.dnat or o.verdict


def _rule_hops(o: Outcome) -> list[tuple[str, str, str]]:
    return [(h.table, h.chain, h.rule) for h in o.hops if not h.rule.startswith(":")]


def _recent_names(outcomes: list[Outcome]) -> set[str]:
    names: set[str] = set()
    for o in outcomes:
        for h in o.hops:
            if " -m recent " in h.rule and " --set" in h.rule:
                m = re.search(r"--name (\S+)", h.rule)
                names.add(m.group(1) if m else "DEFAULT")
    return names


def _recent_has(name: str, src: IPAddress) -> bool:
    try:
        with open(f"/proc/net/xt_recent/{name}", encoding="ascii") as fh:
            return any(line.startswith(f"src={src} ") for line in fh)
    except OSError:
        return False


def _recent_forget(name: str, src: IPAddress) -> None:
    try:
        with open(f"/proc/net/xt_recent/{name}", "w", encoding="ascii") as fh:
            fh.write(f"-{src}\n")
    except OSError:
        pass  # not there: nothing to forget


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, so the cleanup in ``finally`` runs."""
    def handler(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Cleanup must not be cut short by a second Ctrl-C or SIGTERM."""
    try:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextmanager
def _lock() -> Iterator[None]:
    """One probe at a time per node namespace: they share the guard table's name. The
    lock is on the namespace itself (its nsfs file), so no lock file is left behind."""
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pick_ports(n: int, used: set[int]) -> list[int]:
    pool = [p for p in range(20000, 61000) if p not in used]
    if n > len(pool):
        raise UsageError(f"--count: at most {len(pool)} probes fit in the free source ports")
    return random.sample(pool, n)


def inject(
    packet: Packet,
    prediction: Trace,
    *,
    backend: str,
    src_netns: str | None = None,
    count: int = 1,
    deliver: bool = False,
    temporary_source: bool = False,
) -> Observation:
    """Send ``count`` probes like PACKET (distinct source ports) from the node (no
    ``src_netns``), from another namespace, or (``temporary_source``) from a namespace
    made for it, and observe what the kernel did.

    One probe on iptables-nft is followed by the kernel's trace; otherwise (legacy, or
    ``count`` > 1) the rule counters are the evidence."""
    if not 1 <= count <= MAX_COUNT:
        raise UsageError(f"--count must be between 1 and {MAX_COUNT}")
    if packet.proto not in ("tcp", "udp"):
        raise UsageError(f"--inject sends tcp or udp probes, not {packet.proto}")
    if packet.src is None:
        raise UsageError("the probe needs a source address")
    if temporary_source and src_netns is not None:
        raise UsageError("a temporary source namespace and --src-netns exclude each other")
    started = time.monotonic()
    src, dst = packet.src, packet.dst
    use_trace = backend == "nft" and count == 1 and ktrace.available()
    save = None if use_trace else counters.save_command(backend, dst.version)
    recent = _recent_names(prediction.outcomes)
    notes: list[str] = []
    if backend == "nft" and count == 1 and not use_trace:
        notes.append("xtables-monitor not found: the rule counters are the evidence, not the kernel's trace")
    temp_ns = sourcens.names()[0] if temporary_source else None
    before: dict[counters.RuleKey, int] = {}
    after: dict[counters.RuleKey, int] = {}
    traced: dict[int, ktrace.ProbeTrace] = {}
    with _lock(), _terminate_as_interrupt():
        sports = _pick_ports(count, conntrack.used_ports(src, dst, packet.proto, packet.dport))
        forget = {n for n in recent if not _recent_has(n, src)}
        kept = recent - forget
        sender: send.RawSender | None = None
        monitor: ktrace.Monitor | None = None
        try:
            if temp_ns is not None:
                _, _, temp_notes = sourcens.create(src)
                notes.extend(temp_notes)
                src_netns = temp_ns
            sender = send.RawSender(dst.version, src_netns)
            datagrams = [send.build(src, dst, packet.proto, p, packet.dport) for p in sports]
            if use_trace:
                monitor = ktrace.Monitor()
                monitor.start()
            guard.install(src, dst, packet.proto, sports, packet.dport, drop=not deliver, trace=use_trace)
            if save is not None:
                before = counters.read_counters(save)
            for data in datagrams:
                sender.send(data, dst)
                for name in forget:  # every probe is a first packet from this client
                    _recent_forget(name, src)
            if monitor is not None:
                traced = _settle_trace(monitor, sports, dst.version)
            else:
                assert save is not None
                after, ends = _settle(save, before, prediction, count)
            cts = conntrack.entries(src, dst, packet.proto, packet.dport, set(sports)) if deliver else []
            if monitor is not None:
                ends = guard.counts()
        finally:
            with _signals_held():
                if monitor is not None:
                    monitor.stop()
                if sender is not None:
                    sender.close()
                guard.remove()
                for name in forget:
                    _recent_forget(name, src)
                if deliver:
                    time.sleep(REPLY_WAIT)
                conntrack.delete(src, dst, packet.proto, packet.dport, set(sports))
                if temp_ns is not None:
                    sourcens.remove(temp_ns)
    if use_trace:
        obs = _observe_trace(prediction, traced.get(sports[0]), ends)
    else:
        obs = _observe(prediction, counters.deltas(before, after), ends, count)
    obs.src, obs.sports, obs.conntrack = src, sports, cts
    obs.src_netns, obs.temporary_netns = src_netns, temp_ns is not None
    obs.notes[:0] = notes
    if kept:
        obs.notes.append(
            f"session affinity: {src} already had an entry in {', '.join(sorted(kept))}: the kernel "
            "followed it (kptrace predicts a first connection); it was left in place"
        )
    _use_conntrack(obs, format_endpoint(dst, packet.dport))
    _judge(obs, prediction, count)
    obs.seconds = round(time.monotonic() - started, 3)
    return obs


def _settle_trace(monitor: ktrace.Monitor, sports: list[int], family: int) -> dict[int, ktrace.ProbeTrace]:
    """Read the monitor's output until every probe's trace reached a final verdict (the
    guard, or a drop) or the timeout (a probe the kernel dropped without a rule)."""
    ids = {p: p & 0xFFFF for p in sports} if family == 4 else None  # send.build sets the IP id
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        traced = ktrace.parse(monitor.text(), set(sports), ids)
        if all(p in traced and traced[p].ended for p in sports) or time.monotonic() > deadline:
            return traced
        time.sleep(0.01)


def _terminals(prediction: Trace) -> set[tuple[str, str, str]]:
    return {_rule_hops(o)[-1] for o in prediction.outcomes if o.verdict != "accept" and _rule_hops(o)}


def _settle(
    save: str, before: dict[counters.RuleKey, int], prediction: Trace, count: int
) -> tuple[dict[counters.RuleKey, int], dict[str, int]]:
    """Read counters until every probe is accounted for (guard or a predicted DROP/REJECT
    rule) or the timeout: a probe crossing a veth is processed asynchronously."""
    terminals = _terminals(prediction)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        # The guard first: it counts a probe after every iptables table, so the counters
        # read after it hold every rule that probe ran (the other order can miss the last
        # ones, e.g. MASQUERADE, of a probe crossing a veth between the two reads).
        ends = guard.counts()
        after = counters.read_counters(save)
        d = counters.deltas(before, after)
        seen = sum(ends.values()) + sum(v for k, v in d.items() if (k.table, k.chain, k.rule) in terminals)
        if seen >= count or time.monotonic() > deadline:
            return after, ends
        time.sleep(0.01)


def _observe(prediction: Trace, delta: dict[counters.RuleKey, int], ends: dict[str, int], count: int) -> Observation:
    predicted = {h for o in prediction.outcomes for h in _rule_hops(o)}
    hops = [ObservedHop(k.table, k.chain, k.rule, n, (k.table, k.chain, k.rule) in predicted) for k, n in delta.items()]
    counts: dict[str, int] = {}
    masq = 0
    for k, n in delta.items():
        target, to = counters.target_of(k.rule)
        if k.rule.startswith(":"):
            if k.rule.endswith(" DROP"):
                counts["drop"] = counts.get("drop", 0) + n
        elif target == "DNAT" and to:
            counts[to] = counts.get(to, 0) + n
        elif target in ("DROP", "REJECT"):
            counts[target.lower()] = counts.get(target.lower(), 0) + n
        elif target in ("MASQUERADE", "SNAT"):
            masq += n
    accepted = ends.get("post", 0) + ends.get("in", 0)
    notes: list[str] = []
    dnats = [k for k in counts if k not in ("drop", "reject")]
    # One probe: the verdict is where it was last seen.
    if ends.get("in"):
        verdict, delivery = "accept", "local"
    elif ends.get("post"):
        verdict, delivery = "accept", "forward"
    elif counts.get("reject"):
        verdict, delivery = "reject", None
    elif counts.get("drop"):
        verdict, delivery = "drop", None
    else:
        verdict, delivery = None, None
        notes.append(
            "no probe reached the end of POSTROUTING or INPUT and no DROP/REJECT rule counted it: "
            "the kernel dropped it without a rule (routing, rp_filter) or it never arrived"
        )
    obs = Observation(
        src=prediction.packet.dst, sports=[], verdict=verdict, delivery=delivery,
        dnat=dnats[0] if len(dnats) == 1 else None, masquerade=masq > 0, hops=hops, notes=notes,
    )
    if count > 1:
        # Endpoints from the DNAT rules' counts; non-DNAT outcomes by verdict.
        obs.counts = {k: v for k, v in counts.items() if k not in ("drop", "reject")}
        for key, n in (("reject", counts.get("reject", 0)), ("drop", counts.get("drop", 0))):
            if n:
                obs.counts[key] = n
        if not any(o.dnat for o in prediction.outcomes) and accepted:
            obs.counts["accept"] = accepted
    elif len(dnats) > 1:
        obs.notes.append(f"several DNAT rules counted packets ({', '.join(dnats)}): other traffic on the node?")
    return obs


def _use_conntrack(obs: Observation, original_dst: str) -> None:
    """A delivered probe's conntrack entry is the kernel's own record of its NAT."""
    if len(obs.sports) != 1 or not obs.conntrack:
        return
    e = obs.conntrack[0]
    dnat = e.reply_src if e.reply_src != original_dst else None
    if obs.evidence == "trace":
        # The trace is as much the probe's own as conntrack, and it also sees a
        # MASQUERADE that kept the address (a node's own packet leaving with its address).
        if dnat != obs.dnat:
            obs.notes.append(f"the trace says DNAT {obs.dnat}, conntrack says {dnat}")
        return
    if dnat != obs.dnat:
        obs.notes.append(f"the counters say DNAT {obs.dnat}, conntrack says {dnat}: conntrack wins")
    obs.dnat = dnat
    obs.masquerade = e.snat


def _observe_trace(prediction: Trace, pt: ktrace.ProbeTrace | None, ends: dict[str, int]) -> Observation:
    """One probe's observation from the kernel's trace: every rule it took, in order."""
    predicted = {(h.table, h.chain, h.rule) for o in prediction.outcomes for h in o.hops}
    events = pt.hops if pt is not None else []
    hops = [ObservedHop(e.table, e.chain, e.rule, 1, (e.table, e.chain, e.rule) in predicted, e.verdict) for e in events]
    dnat: str | None = None
    masq = False
    for e in events:
        target, to = counters.target_of(e.rule)
        if target == "DNAT" and to and e.verdict == "ACCEPT":
            dnat = to
        elif target in ("MASQUERADE", "SNAT") and e.verdict == "ACCEPT":
            masq = True
    notes: list[str] = []
    last = pt.events[-1] if pt is not None and pt.ended and pt.events else None
    verdict: str | None
    delivery: str | None = None
    if last is not None and last.ours:
        verdict, delivery = "accept", ("local" if last.chain == "in" else "forward")
    elif last is not None:  # a DROP verdict: a DROP or REJECT rule, or a DROP policy
        verdict = "reject" if counters.target_of(last.rule)[0] == "REJECT" else "drop"
    elif ends.get("in") or ends.get("post"):
        verdict, delivery = "accept", ("local" if ends.get("in") else "forward")
        notes.append("the trace ended early; the guard counted the probe")
    else:
        verdict = None
        notes.append(
            "the trace shows no final verdict for the probe: the kernel dropped it without a rule "
            "(routing, rp_filter) or it never arrived"
        )
    if pt is None:
        notes.append("the kernel reported no trace for the probe")
    return Observation(
        src=prediction.packet.dst, sports=[], verdict=verdict, delivery=delivery, dnat=dnat,
        masquerade=masq, hops=hops, notes=notes, evidence="trace",
    )


def _first_difference(predicted: list[tuple[str, str, str]], observed: list[tuple[str, str, str]]) -> int | None:
    for i, (p, o) in enumerate(zip(predicted, observed)):
        if p != o:
            return i
    return None if len(predicted) == len(observed) else min(len(predicted), len(observed))


def _dropped_by_routing(o: Outcome) -> bool:
    """Predicted to be dropped by the kernel's routing (no route, martian source, forwarding
    off), not by a rule: the trace then shows no final verdict, as for a lost probe."""
    return o.verdict == "drop" and bool(o.path) and o.path[-1].startswith("routing:")


def _same_result(o: Outcome, obs: Observation) -> bool:
    if obs.verdict is None and _dropped_by_routing(o):
        return (o.dnat, o.masquerade) == (obs.dnat, obs.masquerade)
    if (o.verdict, o.dnat, o.masquerade) != (obs.verdict, obs.dnat, obs.masquerade):
        return False
    return o.verdict != "accept" or o.delivery == obs.delivery


def _judge(obs: Observation, prediction: Trace, count: int) -> None:
    outcomes = prediction.outcomes
    if count > 1:
        _judge_split(obs, prediction, count)
        return
    same = [o for o in outcomes if _same_result(o, obs)]
    if obs.evidence == "trace":
        # The trace is the path itself: it must be one of the predicted paths, rule by rule.
        taken = [(h.table, h.chain, h.rule) for h in obs.hops if not h.rule.startswith(":")]
        exact = [o for o in same if _rule_hops(o) == taken]
        if exact:
            obs.matched = obs.compared = exact[0]
            obs.agrees = True
            return
        candidates = same or outcomes

        def common(o: Outcome) -> int:
            d = _first_difference(_rule_hops(o), taken)
            return len(taken) + 1 if d is None else d

        obs.compared = max(candidates, key=common) if candidates else None
        obs.matched = obs.compared if same else None
        if obs.compared is not None:
            obs.first_difference = _first_difference(_rule_hops(obs.compared), taken)
            if obs.first_difference is not None:
                obs.notes.append(f"the kernel's path leaves the predicted one at hop {obs.first_difference + 1}")
        obs.agrees = False
        return
    counted = {(h.table, h.chain, h.rule) for h in obs.hops}

    def uncounted(o: Outcome) -> list[tuple[str, str, str]]:
        return [h for h in _rule_hops(o) if h not in counted]

    if same:
        obs.matched = obs.compared = same[0]
        missing = uncounted(same[0])
        obs.agrees = not missing
        for table, _chain, rule in missing:
            obs.notes.append(f"predicted but not counted by the kernel: {table} {rule}")
    else:
        obs.compared = min(outcomes, key=lambda o: len(uncounted(o))) if outcomes else None
        obs.agrees = False
    if obs.compared is not None:
        hops = _rule_hops(obs.compared)
        obs.first_difference = next((i for i, h in enumerate(hops) if h not in counted), None)


def _judge_split(obs: Observation, prediction: Trace, count: int) -> None:
    total: dict[str, float] = {}
    for o in prediction.outcomes:
        total[outcome_key(o)] = total.get(outcome_key(o), 0.0) + o.probability
    ok = set(obs.counts) <= set(total)
    for key, p in total.items():
        lo, hi = binomial_bounds(count, p)
        obs.bounds[key] = (lo, hi)
        ok = ok and lo <= obs.counts.get(key, 0) <= hi
    for key in set(obs.counts) - set(total):
        obs.notes.append(f"{key}: observed {obs.counts[key]} times, never predicted")
    obs.agrees = ok
