"""kube-proxy's own test rulesets (``*.live.save``) loaded into the lab's node: a real probe
for each of their flows lands where the flow says, and agrees with kptrace's prediction
rule by rule (the kernel's trace, iptables-nft).

The node gets the flows' node IPs (on ``lo``); endpoints need no namespace, since the
probes are dropped after the kernel's last decision (the default route, to the lab's
sink, forwards them). Remote sources are sent from a temporary namespace (no
``--src-netns``), node sources by the node itself.

Flows left out, and why:
- every flow of TestNodePorts_5: IPv6, and the lab is IPv4 only;
- SCTP flows: ``--inject`` sends TCP and UDP probes only;
- "same node to LB1/LB2, SNATted to ...": the source is the destination, so a namespace
  holding it delivers the probe to itself and it never reaches the node;
- TestTracePacket: not a ``.live.save`` (static rules, not a proxier's output).
"""

from __future__ import annotations

import importlib.util
import io
import ipaddress
import json
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import pytest
from _kernel import IPT, call_in_netns, ns_sh, require, require_root_and

from kptrace.lab import NODE_NS
from kptrace.probe import PROBE_TABLE
from kptrace.probe.sourcens import NETNS_PREFIX

RULESETS = ["TestClusterIPGeneral", "TestExternalTrafficPolicyLocal", "TestLoadBalancer", "TestNoEndpointsReject",
            "TestNodePorts_1"]


def realisable(flow: dict[str, Any]) -> bool:
    return flow["protocol"] in ("TCP", "UDP") and flow["sourceIP"] != flow["destIP"] and ":" not in flow["destIP"]


@pytest.fixture(scope="module")
def node() -> Iterator[None]:
    require_root_and("iptables-nft-restore", "iptables-nft-save", "nft", "ip", "conntrack", "xtables-monitor")
    require(importlib.util.find_spec("scapy") is not None, "needs scapy (pip install '.[inject]')")
    from kptrace.lab import build
    from kptrace.lab.config import load_config

    try:
        build.up(load_config(None), "nft", rebuild=True)
        yield
    finally:
        build.down()


def flows_child(flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs in the node namespace: one inject per flow, from where the flow's source is."""
    from kptrace.cli.common import Output
    from kptrace.cli.inject import run_inject
    from kptrace.model.packet import Packet
    from kptrace.sources.live import load_live
    from kptrace.trace.simulate import trace

    state = load_live()
    out = []
    for flow in flows:
        src = ipaddress.ip_address(flow["sourceIP"])
        pk = Packet(dst=ipaddress.ip_address(flow["destIP"]), dport=flow["destPort"], proto=flow["protocol"].lower(),
                    src=src, origin="local" if state.is_local(src) else "remote")
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = run_inject(state, pk, trace(state, pk), src_netns=None, count=1, deliver=False, output=Output.json)
        doc = json.loads(buf.getvalue())
        obs = doc["observed"]
        out.append({"flow": flow["name"], "code": code, "agrees": doc["agrees"], "evidence": obs["evidence"],
                    "verdict": obs["verdict"], "dnat": obs["dnat"], "masquerade": obs["masquerade"],
                    "temporary": obs["temporary_netns"], "notes": obs["notes"], "first_difference": obs["first_difference"]})
    return out


@pytest.mark.root
@pytest.mark.parametrize("ruleset", RULESETS)
def test_reference_flows_in_the_kernel(node: None, ruleset: str) -> None:
    data = json.loads((IPT / f"{ruleset}.flows.json").read_text())
    ns_sh(NODE_NS, "iptables-nft-restore", input=(IPT / f"{ruleset}.live.save").read_text())
    have = ns_sh(NODE_NS, "ip", "-o", "addr", "show", "dev", "lo").stdout
    for ip in data["nodeIPs"]:
        if ":" not in ip and f" {ip}/" not in have:
            ns_sh(NODE_NS, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
    flows = [f for f in data["flows"] if realisable(f)]
    assert flows
    results = call_in_netns(NODE_NS, "test_inject_reference.flows_child", flows).value
    for flow, r in zip(flows, results):
        expected = flow["output"]
        assert r["agrees"] and r["evidence"] == "trace", r
        assert r["temporary"] == (flow["sourceIP"] not in data["localIPs"]), r
        if expected in ("REJECT", "DROP"):
            assert r["verdict"] == expected.lower() and r["code"] == 1, r
        elif expected in ("", "ACCEPT"):
            assert r["verdict"] == "accept" and r["dnat"] is None, r
        else:
            assert r["verdict"] == "accept" and r["dnat"] in {e.strip() for e in expected.split(",")}, r
        assert r["masquerade"] == flow["masq"], r
    assert ns_sh(NODE_NS, "nft", "list", "table", "inet", PROBE_TABLE, check=False).returncode != 0
    assert not [n for n in ns_sh(NODE_NS, "ip", "netns", "list").stdout.split() if n.startswith(NETNS_PREFIX)]
