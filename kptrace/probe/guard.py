"""The probe's own nft table: counts each probe after the kernel's last decision and,
unless the probe is to be delivered, drops it there.

``inet kptrace_probe`` has one chain on postrouting and one on input, both at priority
300: after every iptables table (filter 0, srcnat 100) and before conntrack confirms the
connection (at INT_MAX), so a dropped probe leaves no conntrack entry. The rules match the
probe's original tuple through conntrack (``ct original``), which NAT does not rewrite;
an untracked probe is matched by its addresses and ports instead.
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


def install(src: IPAddress, dst: IPAddress, proto: str, sports: list[int], dport: int, *, drop: bool) -> None:
    ip = "ip6" if dst.version == 6 else "ip"
    ports = "{ " + ", ".join(map(str, sports)) + " }"
    verdict = "drop" if drop else "accept"
    tracked = (
        f"meta l4proto {proto} ct direction original ct original {ip} saddr {src} ct original {ip} daddr {dst} "
        f"ct original proto-src {ports} ct original proto-dst {dport}"
    )
    untracked = f"ct state untracked {ip} saddr {src} {ip} daddr {dst} meta l4proto {proto} th sport {ports} th dport {dport}"
    why = f'comment "{PROBE_COMMENT}: {"drops" if drop else "counts"} kptrace test packets after the last decision"'
    # Locally delivered packets of the node's own probes pass postrouting on lo first:
    # they are caught on input, where the kernel's last decision for them is made.
    script = f"""
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
  }}
}}
"""
    remove()  # a leftover from a killed run would double the rules
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
