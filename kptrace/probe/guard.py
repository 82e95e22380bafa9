"""The probe's own nft table: counts each probe after the kernel's last decision and,
unless the probe is to be delivered, drops it there.

``inet kptrace_probe`` has one chain on postrouting and one on input, both at priority
300: after every iptables table (filter 0, srcnat 100) and before conntrack confirms the
connection (at INT_MAX), so a dropped probe leaves no conntrack entry. The rules match the
probe's original tuple through conntrack (``ct original``), which NAT does not rewrite;
an untracked probe is matched by its addresses and ports instead.

With ``trace``, two more chains at priority -350 (before raw and conntrack) on
prerouting and output set ``meta nftrace`` for the probe's tuple (see ``trace``).
"""

from __future__ import annotations

import json
import subprocess

from ..errors import EnvironmentProblem
from ..model.packet import IPAddress
from ..sources.collect import find_binary, missing_binary
from . import PROBE_COMMENT, PROBE_TABLE


def _nft(args: list[str], script: str | None = None, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    path = find_binary("nft")
    if path is None:
        raise missing_binary("nft")
    proc = subprocess.run([path, *args], input=script, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise EnvironmentProblem(f"nft {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


TRACE_PRIORITY = -350  # before raw (-300) and conntrack (-200): the trace starts at the first table


def install(
    src: IPAddress, dst: IPAddress, proto: str, sports: list[int], dport: int, *, drop: bool, trace: bool = False
) -> None:
    ip = "ip6" if dst.version == 6 else "ip"
    ports = "{ " + ", ".join(map(str, sports)) + " }"
    verdict = "drop" if drop else "accept"
    tracked = (
        f"meta l4proto {proto} ct direction original ct original {ip} saddr {src} ct original {ip} daddr {dst} "
        f"ct original proto-src {ports} ct original proto-dst {dport}"
    )
    untracked = f"ct state untracked {ip} saddr {src} {ip} daddr {dst} meta l4proto {proto} th sport {ports} th dport {dport}"
    why = f'comment "{PROBE_COMMENT}: {"drops" if drop else "counts"} kptrace test packets after the last decision"'
    marked = f"{ip} saddr {src} {ip} daddr {dst} meta l4proto {proto} th sport {ports} th dport {dport}"
    mark_why = f'comment "{PROBE_COMMENT}: traces kptrace test packets"'
    tracing = "" if not trace else f"""
  chain trace_pre {{
    type filter hook prerouting priority {TRACE_PRIORITY}; policy accept;
    {marked} meta nftrace set 1 {mark_why}
  }}
  chain trace_out {{
    type filter hook output priority {TRACE_PRIORITY}; policy accept;
    {marked} meta nftrace set 1 {mark_why}
  }}"""
    # Locally delivered packets of the node's own probes pass postrouting on lo first:
    # they are caught on input, where the kernel's last decision for them is made.
    # Declaring and deleting the table first, in the same transaction, replaces a
    # leftover of a killed run (which would double the rules) without a second nft call.
    script = f"""
table inet {PROBE_TABLE}
delete table inet {PROBE_TABLE}
table inet {PROBE_TABLE} {{
  chain post {{
    type filter hook postrouting priority 300; policy accept;
    oifname != "lo" {tracked} counter {verdict} {why}
    oifname != "lo" {untracked} counter {verdict} {why}
  }}
  chain in {{
    type filter hook input priority 300; policy accept;
    {tracked} counter {verdict} {why}
    {untracked} counter {verdict} {why}
  }}{tracing}
}}
"""
    _nft(["-f", "-"], script)


def counts() -> dict[str, int]:
    """Packets counted per chain ("post", "in")."""
    doc = json.loads(_nft(["-j", "list", "table", "inet", PROBE_TABLE]).stdout)
    out = {"post": 0, "in": 0}
    for item in doc.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        for expr in rule.get("expr", []):
            if "counter" in expr:
                out[rule["chain"]] = out.get(rule["chain"], 0) + int(expr["counter"]["packets"])
    return out


def exists() -> bool:
    return _nft(["list", "table", "inet", PROBE_TABLE], check=False).returncode == 0


def remove() -> bool:
    """Delete the table; True when there was one."""
    return _nft(["delete", "table", "inet", PROBE_TABLE], check=False).returncode == 0
