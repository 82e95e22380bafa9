"""The kernel's own trace of a probe on the iptables-nft backend.

The probe's table ``inet kptrace_probe`` gets two chains at priority -350 (before raw,
-300, and conntrack, -200) on prerouting and output that set ``meta nftrace`` for the
probe's tuple only. Every nft rule the packet then meets, kube-proxy's iptables-nft
rules included, is reported over netlink; ``xtables-monitor --trace`` prints those in
iptables syntax (``-A CHAIN ...``, the text ``iptables-save`` prints), so a hop maps to
a predicted rule by its text. iptables-legacy tables are not nft: there is no trace, and
the rule counters stay the evidence.

``parse`` is pure (tested on captured output in tests/fixtures/trace/); ``Monitor`` runs
the tool in the current network namespace for the duration of a probe.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from ..errors import EnvironmentProblem
from ..sources.collect import find_binary
from . import PROBE_TABLE

NFNLGRP_NFTRACE_BIT = 1 << 8  # nfnetlink group 9: trace events
NETLINK_NETFILTER = 12
READY_TIMEOUT = 2.0
PR_SET_PDEATHSIG = 1

# PACKET: 2 76b1f72a IN=kptr-client OUT=kptr-p1 ... SRC=203.0.113.10 DST=... ID=56902 DF SPORT=44444 DPORT=80 SYN
_PACKET = re.compile(r"^PACKET: (\d+) ([0-9a-f]+) (.*)$")
# TRACE: 2 76b1f72a nat:KUBE-SERVICES:rule:0x20:JUMP:KUBE-NODEPORTS  -4 -t nat -A KUBE-SERVICES ...
# TRACE: 2 d081c667 nat:KUBE-POSTROUTING:rule:0x28:0xfffffffb  -4 -t nat -A ... -j RETURN
# TRACE: 2 d081c667 filter:FORWARD:policy:ACCEPT
_TRACE = re.compile(r"^\s*TRACE: (\d+) ([0-9a-f]+) (\S+)\s*(.*)$")
# nft's internal verdicts, printed as numbers by some versions
_NUMERIC_VERDICTS = {-1: "CONTINUE", -2: "BREAK", -3: "JUMP", -4: "GOTO", -5: "RETURN", 0: "DROP", 1: "ACCEPT"}
_RULE_TEXT = re.compile(r"^-[46] -t (\S+) (-A .*)$")
_FIELD = re.compile(r"(\w+)=(\S+)")


@dataclass(frozen=True, slots=True)
class TraceEvent:
    table: str
    chain: str
    kind: str  # rule | policy | return
    verdict: str  # ACCEPT, DROP, JUMP, GOTO, CONTINUE, RETURN ("" for a plain return)
    target: str | None  # the chain jumped to
    rule: str  # "-A CHAIN ..." as iptables-save prints it; ":CHAIN POLICY" for a policy; ""
    handle: int | None

    @property
    def ours(self) -> bool:
        """An event of kptrace's own table (the trace marker or the guard)."""
        return self.table == PROBE_TABLE


@dataclass
class ProbeTrace:
    """Everything the kernel reported for one probe packet, in order."""

    sport: int
    events: list[TraceEvent] = field(default_factory=list)
    interfaces: list[tuple[str | None, str | None]] = field(default_factory=list)  # (IN, OUT) per hook
    ended: bool = False  # a final verdict was seen (the guard, or a drop)

    @property
    def hops(self) -> list[TraceEvent]:
        """The iptables rules (and policies) the packet took: kptrace's own chains and
        chain returns left out."""
        return [e for e in self.events if not e.ours and e.kind != "return"]


def _final(e: TraceEvent) -> bool:
    if e.verdict == "DROP":
        return True
    # The guard's rules (not its chains' policies) see the probe after the last decision.
    return e.ours and e.kind == "rule" and e.chain in ("post", "in")


def parse(text: str, sports: set[int], ip_ids: dict[int, int] | None = None) -> dict[int, ProbeTrace]:
    """The traces of the probes (by source port) in ``xtables-monitor --trace`` output.

    Events carry a trace id, not the packet: each is given to the probe whose PACKET line
    came last with that id. A PACKET line with a probe's source port (and, for IPv4, the
    IP id the probe was built with, ``ip_ids``) starts or continues that probe; the same
    port with another IP id is a later packet of the connection (the sender's RST), and a
    line with neither keeps the owner (after MASQUERADE the port is rewritten). Only the
    first packet of each probe counts: events after its final verdict are ignored.
    """
    out: dict[int, ProbeTrace] = {}
    owner: dict[str, int | None] = {}
    for line in text.splitlines():
        if m := _PACKET.match(line):
            tid = m.group(2)
            fields = dict(_FIELD.findall(m.group(3)))
            try:
                sport = int(fields.get("SPORT", ""))
            except ValueError:
                sport = -1
            if sport in sports:
                probe_id = (ip_ids or {}).get(sport)
                same = probe_id is None or "ID" not in fields or int(fields["ID"]) == probe_id
                owner[tid] = sport if same else None
            elif tid not in owner:
                owner[tid] = None
            who = owner[tid]
            if who is not None:
                pt = out.setdefault(who, ProbeTrace(who))
                if not pt.ended:
                    pt.interfaces.append((fields.get("IN"), fields.get("OUT")))
        elif m := _TRACE.match(line):
            who = owner.get(m.group(2))
            if who is None:
                continue
            pt = out.setdefault(who, ProbeTrace(who))
            if pt.ended:
                continue
            event = _event(m.group(3), m.group(4).strip())
            if event is None:
                continue
            pt.events.append(event)
            pt.ended = _final(event)
    return out


def _verdict(token: str) -> str:
    if token.startswith("0x"):
        value = int(token, 16)
        value = value - (1 << 32) if value >= 1 << 31 else value
        return _NUMERIC_VERDICTS.get(value, token)
    return token.upper()


def _event(spec: str, rest: str) -> TraceEvent | None:
    """One ``table:chain:kind[:handle][:verdict[:target]]`` and the rule text after it."""
    parts = spec.split(":")
    if len(parts) < 3 or parts[2] not in ("rule", "policy", "return"):
        return None
    table, chain, kind, tail = parts[0], parts[1], parts[2], parts[3:]
    handle = None
    if kind == "rule" and tail and tail[0].startswith("0x") and len(tail) > 1:
        handle, tail = int(tail[0], 16), tail[1:]
    verdict = _verdict(tail[0]) if tail else ""
    target = tail[1] if len(tail) > 1 else None
    if kind == "policy":
        rule = f":{chain} {verdict}"
    elif rt := _RULE_TEXT.match(rest):
        rule = rt.group(2)
    else:
        rule = ""
    return TraceEvent(table, chain, kind, verdict, target, rule, handle)


def available() -> bool:
    return find_binary("xtables-monitor") is not None


def _die_with_parent() -> None:
    # A kill -9 of kptrace must not leave the monitor running.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Monitor:
    """``xtables-monitor --trace`` in the current network namespace, its output in an
    unlinked temporary file; ``start`` returns once it listens for trace events."""

    def __init__(self) -> None:
        path = find_binary("xtables-monitor")
        if path is None:
            raise EnvironmentProblem("needs xtables-monitor (Debian: apt install iptables)")
        self._argv = [path, "--trace"]
        self._out = tempfile.TemporaryFile(mode="w+b")  # noqa: SIM115 - closed by stop()
        self._proc: subprocess.Popen[bytes] | None = None
        self._final = ""

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self._argv, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - a prctl only, before exec
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not self._listening():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise EnvironmentProblem("xtables-monitor --trace did not start listening for trace events")
            time.sleep(0.005)

    def _listening(self) -> bool:
        """Whether the monitor has a netfilter netlink socket bound to the trace group."""
        assert self._proc is not None
        pid = self._proc.pid
        try:
            inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")}
            with open(f"/proc/{pid}/net/netlink", encoding="ascii") as fh:
                rows = [line.split() for line in fh.readlines()[1:]]
        except OSError:
            return False
        return any(
            len(r) >= 10 and r[1] == str(NETLINK_NETFILTER) and int(r[3], 16) & NFNLGRP_NFTRACE_BIT and r[9] in inodes
            for r in rows
        )

    def text(self) -> str:
        """What the monitor printed so far."""
        self._out.flush()
        self._out.seek(0)
        return self._out.read().decode(errors="replace")

    def stop(self) -> str:
        """End the monitor; returns everything it printed (again on a second call)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if not self._out.closed:
            self._final = self.text()
            self._out.close()
        return self._final
