"""``packet --inject`` agrees with the prediction for every lab Service, sent from the
client namespace, a pod namespace and the node itself, dropped and delivered, on both
iptables backends: the kernel's trace is the evidence on iptables-nft, the rule counters
on iptables-legacy. Probes only travel between the lab's namespaces.
"""

from __future__ import annotations

import importlib.util
import io
import ipaddress
import json
import re
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import pytest
from _kernel import call_in_netns, ns_sh, require, require_root_and

from kptrace.lab import CLIENT_NS, NODE_NS
from kptrace.probe import PROBE_COMMENT, PROBE_TABLE

CART_POD_NS = "kptrace-pod-cart-6f7d9-jx5tn"
SOURCES = {"client": CLIENT_NS, "pod": CART_POD_NS, "node": None}


@pytest.fixture(scope="module", params=["nft", "legacy"])
def lab(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    backend = request.param
    require_root_and(f"iptables-{backend}-restore", f"iptables-{backend}-save", "nft", "ip", "conntrack",
                     *(["xtables-monitor"] if backend == "nft" else []))
    require(importlib.util.find_spec("scapy") is not None, "needs scapy (pip install '.[inject]')")
    from kptrace.lab import build
    from kptrace.lab.config import load_config

    try:
        yield backend, build.up(load_config(None), backend, rebuild=True)
    finally:
        build.down()


def sweep_child(cases: list[tuple[str, int, str, str, bool]]) -> list[dict[str, Any]]:
    """Runs in the node namespace: one inject per case, the JSON of each summarised."""
    from kptrace.cli.common import Output
    from kptrace.cli.inject import run_inject
    from kptrace.model.packet import Packet
    from kptrace.sources.live import load_live
    from kptrace.trace.simulate import trace

    state = load_live()
    out = []
    for dst, dport, proto, where, deliver in cases:
        src_netns = SOURCES[where]
        pk = Packet(proto=proto, dst=ipaddress.ip_address(dst), dport=dport, src=None,  # type: ignore[arg-type]
                    origin="remote" if src_netns else "local")
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = run_inject(state, pk, trace(state, pk), src_netns=src_netns, count=1, deliver=deliver, output=Output.json)
        doc = json.loads(buf.getvalue())
        obs = doc["observed"]
        out.append({
            "case": f"{proto} {dst}:{dport} from {where}{' deliver' if deliver else ''}",
            "code": code, "agrees": doc["agrees"], "evidence": obs["evidence"], "verdict": obs["verdict"],
            "dnat": obs["dnat"], "sport": obs["sport"], "first_difference": obs["first_difference"],
            "traced": sum(1 for h in obs["hops"] if h["verdict"]), "hops": len(obs["hops"]), "notes": obs["notes"],
            "src": doc["packet"]["src"],
        })
    return out


def service_cases(state: dict[str, Any]) -> list[tuple[tuple[str, int, str], set[str]]]:
    """Every address and port of every lab Service, with its endpoints."""
    node_ip = state["node"]["ip"]
    out = []
    for svc in state["services"]:
        proto = svc["protocol"].lower()
        eps = {f"{e['ip']}:{e['port']}" for e in svc["endpoints"]}
        addrs = [(ip, svc["servicePort"]) for ip in svc["clusterIPs"] + svc["loadBalancerIPs"] + svc["externalIPs"]]
        if svc["nodePort"]:
            addrs.append((node_ip, svc["nodePort"]))
        out += [((ip, port, proto), eps) for ip, port in addrs]
    return out


@pytest.mark.root
def test_every_service_agrees(lab: tuple[str, dict[str, Any]]) -> None:
    backend, state = lab
    services = service_cases(state)
    assert len(services) >= 8  # webapp x2, orders, storefront x3, cart, kube-dns x2
    cases = [(ip, port, proto, where, deliver) for (ip, port, proto), _ in services
             for where in SOURCES for deliver in (False, True)]
    results = call_in_netns(NODE_NS, "test_inject_sweep.sweep_child", cases).value
    endpoints = {f"{ip}:{port}": eps for (ip, port, _), eps in services}
    bad = [r for r in results if not r["agrees"] or r["code"] not in (0, 1)]
    assert not bad, json.dumps(bad, indent=1)
    for r, (ip, port, _proto, _where, _deliver) in zip(results, cases):
        eps = endpoints[f"{ip}:{port}"]
        assert r["evidence"] == ("trace" if backend == "nft" else "counters"), r
        if backend == "nft":
            assert r["traced"] == r["hops"] > 0, r  # every hop is a traced rule
        if eps:
            assert r["verdict"] == "accept" and r["dnat"] in eps and r["code"] == 0, r
        else:
            assert r["verdict"] == "reject" and r["dnat"] is None and r["code"] == 1, r
    # Nothing is left: no guard table, no probe rule, no probe conntrack entry.
    assert ns_sh(NODE_NS, "nft", "list", "table", "inet", PROBE_TABLE, check=False).returncode != 0
    assert PROBE_COMMENT not in ns_sh(NODE_NS, f"iptables-{backend}-save").stdout
    listed = ns_sh(NODE_NS, "conntrack", "-L", check=False).stdout
    for r in results:
        assert not re.search(rf"src={re.escape(r['src'])} dst=\S+ sport={r['sport']} ", listed), r
