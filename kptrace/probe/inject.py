"""Send probes and collect the kernel's evidence: counter deltas, guard counts, conntrack.

``inject`` never changes kube-proxy's chains. What it adds (the guard table, session
affinity entries of the probe source) is removed in a ``finally`` that also runs on
Ctrl-C and SIGTERM; ``cleanup`` removes what a kill -9 left.
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
from . import conntrack, counters, guard, send
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
    matched: Outcome | None = None
    agrees: bool = False
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
) -> Observation:
    """Send ``count`` probes like PACKET (distinct source ports) from the node (no
    ``src_netns``) or from another namespace, and observe what the kernel did."""
    if not 1 <= count <= MAX_COUNT:
        raise UsageError(f"--count must be between 1 and {MAX_COUNT}")
    if packet.proto not in ("tcp", "udp"):
        raise UsageError(f"--inject sends tcp or udp probes, not {packet.proto}")
    if packet.src is None:
        raise UsageError("the probe needs a source address")
    started = time.monotonic()
    src, dst = packet.src, packet.dst
    save = counters.save_command(backend, dst.version)
    recent = _recent_names(prediction.outcomes)
    with _lock(), _terminate_as_interrupt():
        sports = _pick_ports(count, conntrack.used_ports(src, dst, packet.proto, packet.dport))
        forget = {n for n in recent if not _recent_has(n, src)}
        kept = recent - forget
        sender = send.RawSender(dst.version, src_netns)
        try:
            datagrams = [send.build(src, dst, packet.proto, p, packet.dport) for p in sports]
            guard.install(src, dst, packet.proto, sports, packet.dport, drop=not deliver)
            before = counters.read_counters(save)
            for data in datagrams:
                sender.send(data, dst)
                for name in forget:  # every probe is a first packet from this client
                    _recent_forget(name, src)
            after, ends = _settle(save, before, prediction, count)
            cts = conntrack.entries(src, dst, packet.proto, packet.dport, set(sports)) if deliver else []
        finally:
            with _signals_held():
                sender.close()
                guard.remove()
                for name in forget:
                    _recent_forget(name, src)
                if deliver:
                    time.sleep(REPLY_WAIT)
                conntrack.delete(src, dst, packet.proto, packet.dport, set(sports))
    obs = _observe(prediction, counters.deltas(before, after), ends, count)
    obs.src, obs.sports, obs.conntrack = src, sports, cts
    if kept:
        obs.notes.append(
            f"session affinity: {src} already had an entry in {', '.join(sorted(kept))}: the kernel "
            "followed it (kptrace predicts a first connection); it was left in place"
        )
    _use_conntrack(obs, format_endpoint(dst, packet.dport))
    _judge(obs, prediction, count)
    obs.seconds = round(time.monotonic() - started, 3)
    return obs


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
        after = counters.read_counters(save)
        ends = guard.counts()
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
    if dnat != obs.dnat:
        obs.notes.append(f"the counters say DNAT {obs.dnat}, conntrack says {dnat}: conntrack wins")
    obs.dnat = dnat
    obs.masquerade = e.snat


def _judge(obs: Observation, prediction: Trace, count: int) -> None:
    outcomes = prediction.outcomes
    if count > 1:
        total: dict[str, float] = {}
        for o in outcomes:
            total[outcome_key(o)] = total.get(outcome_key(o), 0.0) + o.probability
        ok = set(obs.counts) <= set(total)
        for key, p in total.items():
            lo, hi = binomial_bounds(count, p)
            obs.bounds[key] = (lo, hi)
            ok = ok and lo <= obs.counts.get(key, 0) <= hi
        for key in set(obs.counts) - set(total):
            obs.notes.append(f"{key}: observed {obs.counts[key]} times, never predicted")
        obs.agrees = ok
        return
    for o in outcomes:
        if (o.verdict, o.dnat, o.masquerade) != (obs.verdict, obs.dnat, obs.masquerade):
            continue
        if o.verdict == "accept" and o.delivery != obs.delivery:
            continue
        counted = {(h.table, h.chain, h.rule) for h in obs.hops}
        missing = [h for h in _rule_hops(o) if h not in counted]
        obs.matched = o
        obs.agrees = not missing
        for table, chain, rule in missing:
            obs.notes.append(f"predicted but not counted by the kernel: {table} {rule}")
        return
    obs.agrees = False
