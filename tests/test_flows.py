"""Every packet flow kube-proxy's own tests expect, replayed through kptrace.

Each flow runs against the ruleset as a live node prints it (``.live.save``) and as
kube-proxy hands it to iptables-restore (``.restore``, to which kptrace adds
kube-proxy's standard jumps).
"""

from __future__ import annotations

import ipaddress
import json

import pytest

from clirunner import IPT, flow_packet, run
from kptrace.sources.files import load_files
from kptrace.trace.simulate import trace


def _cases():
    for flows_file in sorted(IPT.glob("*.flows.json")):
        data = json.loads(flows_file.read_text())
        test = flows_file.name.removesuffix(".flows.json")
        spellings = [data["dump"]]
        restore = IPT / f"{test}.restore"
        if restore.exists():
            spellings.append(restore.name)
        for dump in spellings:
            for flow in data["flows"]:
                yield pytest.param(dump, data["localIPs"], flow, id=f"{dump}::{flow['name']}")


def _check(outcomes, flow) -> None:
    expected = flow["output"]
    dnats = {o["dnat"] for o in outcomes if o["dnat"]}
    verdicts = {o["verdict"] for o in outcomes}
    assert abs(sum(o["probability"] for o in outcomes) - 1.0) < 1e-9
    assert not any(o["uncertain"] for o in outcomes), outcomes
    if expected in ("REJECT", "DROP"):
        assert verdicts == {expected.lower()}
    elif expected in ("ACCEPT", ""):
        assert not dnats
        assert verdicts == {"accept"}
    else:
        assert dnats == {e.strip() for e in expected.split(",")}
        assert verdicts == {"accept"}
    assert any(o["masquerade"] for o in outcomes) == flow["masq"]


@pytest.mark.parametrize("dump,local_ips,flow", list(_cases()))
def test_reference_flow(dump: str, local_ips: list[str], flow: dict) -> None:
    node = load_files([str(IPT / dump)], local_ips=frozenset(ipaddress.ip_address(i) for i in local_ips), lenient=True)
    result = trace(node, flow_packet(flow, node))
    _check(
        [
            {"dnat": o.dnat, "verdict": o.verdict, "probability": o.probability, "uncertain": o.uncertain, "masquerade": o.masquerade}
            for o in result.outcomes
        ],
        flow,
    )


@pytest.mark.parametrize("dump,local_ips,flow", [c for c in _cases() if "ClusterIPGeneral" in c.values[0] or "LoadBalancer" in c.values[0]])
def test_reference_flow_through_cli(dump: str, local_ips: list[str], flow: dict) -> None:
    """The same answers through the command line and its JSON."""
    dst = flow["destIP"]
    dst = f"[{dst}]" if ":" in dst else dst
    args = ["packet", "--from", str(IPT / dump), "--dst", f"{dst}:{flow['destPort']}", "--src", flow["sourceIP"],
            "--sport", "40000", "--proto", flow["protocol"].lower(), "-o", "json"]
    for ip in local_ips:
        args += ["--local-ip", ip]
    res = run(*args)
    data = res.json
    assert data["schema"] == "kptrace.packet/v1"
    _check(data["outcomes"], flow)
    blocked = flow["output"] in ("REJECT", "DROP")
    assert res.code == (1 if blocked else 0)
