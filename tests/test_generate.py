"""Tests for the kube-proxy ruleset generator (kptrace.generate)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from _kernel import add_nfacct
from kptrace.generate import (
    ClusterSpec,
    Endpoint,
    Service,
    ServicePort,
    render_jumps,
    render_restore,
    render_save,
    spec_from_dict,
    spec_from_flows,
    spec_to_dict,
    synthetic_spec,
)
from kptrace.generate.__main__ import main as generate_main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "iptables"
EXAMPLES = ROOT / "examples"
REFERENCE_TESTS = sorted(
    p.name.removesuffix(".flows.json") for p in FIXTURES.glob("*.flows.json")
    if "setup" in json.loads(p.read_text())
)

# The reference live dumps were captured on a kernel without kube-proxy's nfacct
# counters, with the `-m nfacct` matches taken out of the payload (the rules kept).
# Our save output models a node where the counters exist, so drop the matches before
# comparing.
NFACCT_MATCH = re.compile(r" -m nfacct --nfacct-name +\S+")


def structure(text: str) -> dict[str, tuple[list[str], dict[str, list[str]]]]:
    """table -> (declared chains in order, chain -> its rules in order)."""
    tables: dict[str, tuple[list[str], dict[str, list[str]]]] = {}
    chains: list[str] = []
    rules: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("*"):
            chains, rules = [], {}
            tables[line[1:]] = (chains, rules)
        elif line.startswith(":"):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A "):
            rules.setdefault(line.split()[1], []).append(line)
    return tables


def assert_same_ruleset(got: str, expected: str) -> None:
    # Structure first, for a readable failure; then byte for byte.
    assert structure(got) == structure(expected)
    assert got == expected


def reference_spec(test: str) -> ClusterSpec:
    return spec_from_flows(json.loads((FIXTURES / f"{test}.flows.json").read_text()))


def _port80(node_port: int = 0, **extra: Any) -> dict[str, Any]:
    port: dict[str, Any] = {"name": "p80", "port": 80, "protocol": "TCP", **extra}
    if node_port:
        port["nodePort"] = node_port
    return port


def _slice(ns: str, name: str, *endpoints: dict[str, Any]) -> dict[str, Any]:
    return {"namespace": ns, "service": name, "slice": 1, "addressType": "IPv4", "endpoints": list(endpoints),
            "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}]}


# kube-proxy's TestOverallIPTablesRules (its fixture has no flows.json), transcribed
# into the reference setup format.
OVERALL = {
    "nodeIPs": ["192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2"],
    "clusterCIDR": "10.0.0.0/8",
    "setup": {
        "services": [
            {"namespace": "ns1", "name": "svc1", "type": "ClusterIP", "clusterIP": "172.30.0.41",
             "ports": [_port80()]},
            {"namespace": "ns2", "name": "svc2", "type": "LoadBalancer", "externalTrafficPolicy": "Local",
             "clusterIP": "172.30.0.42", "ports": [_port80(3001)], "loadBalancerIngress": ["1.2.3.4"],
             "externalIPs": ["192.168.99.22"], "healthCheckNodePort": 30000},
            {"namespace": "ns3", "name": "svc3", "type": "NodePort", "clusterIP": "172.30.0.43",
             "ports": [_port80(3003)]},
            {"namespace": "ns4", "name": "svc4", "type": "NodePort", "clusterIP": "172.30.0.44",
             "externalIPs": ["192.168.99.33"], "ports": [_port80(targetPort=80)]},
            {"namespace": "ns5", "name": "svc5", "type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
             "clusterIP": "172.30.0.45", "ports": [_port80(3002)], "loadBalancerIngress": ["5.6.7.8"],
             "healthCheckNodePort": 30000, "loadBalancerSourceRanges": [" 203.0.113.0/25"],
             "sessionAffinity": "ClientIP", "sessionAffinityTimeout": 10800},
            {"namespace": "ns6", "name": "svc6", "type": "ClusterIP", "clusterIP": "172.30.0.46",
             "ports": [_port80(targetPort=80)]},
        ],
        "endpointSlices": [
            _slice("ns1", "svc1", {"addresses": ["10.180.0.1"]}),
            _slice("ns2", "svc2", {"addresses": ["10.180.0.2"]}),
            _slice("ns3", "svc3", {"addresses": ["10.180.0.3"]}),
            _slice("ns4", "svc4", {"addresses": ["10.180.0.4"]},
                   {"addresses": ["10.180.0.5"], "nodeName": "test-node"}),
            _slice("ns5", "svc5", {"addresses": ["10.180.0.3"]}),
        ],
    },
}

# An IPv6 node with every kind of Service (dual-stack inputs are filtered to IPv6).
IPV6_ALL = {
    "family": 6, "nodeIPs": ["192.168.0.2", "2001:db8::1"], "clusterCIDR": "fd00:10::/64", "nfacct": True,
    "kubeletFirewallJumps": True,
    "services": [
        {"namespace": "a", "name": "lb", "type": "LoadBalancer", "clusterIPs": ["10.0.0.5", "fd00:172:30::5"],
         "ports": [{"name": "p", "port": 80, "nodePort": 30080},
                   {"name": "u", "port": 53, "protocol": "UDP", "nodePort": 30053}],
         "loadBalancerIPs": ["2001:db8:ff::1", "1.2.3.4"],
         "loadBalancerSourceRanges": ["2001:db8::/48", "10.0.0.0/8"],
         "externalIPs": ["2001:db8:1::99"], "sessionAffinity": "ClientIP", "sessionAffinityTimeout": 300,
         "endpoints": ["fd00:10::1", {"ip": "fd00:10::2", "local": True}, "10.1.1.1",
                       {"ip": "fd00:10::3", "ready": False, "terminating": True}]},
        {"namespace": "a", "name": "local", "type": "LoadBalancer", "externalTrafficPolicy": "Local",
         "healthCheckNodePort": 32000, "clusterIPs": ["fd00:172:30::6"],
         "ports": [{"name": "", "port": 443, "nodePort": 30443, "protocol": "SCTP"}],
         "loadBalancerIPs": ["2001:db8:ff::2"], "endpoints": ["fd00:10::7"]},
        {"namespace": "a", "name": "itp", "internalTrafficPolicy": "Local", "clusterIPs": ["fd00:172:30::7"],
         "ports": [{"name": "x", "port": 8080}], "endpoints": [{"ip": "fd00:10::8", "local": True}, "fd00:10::9"]},
        {"namespace": "a", "name": "itp-none", "internalTrafficPolicy": "Local", "clusterIPs": ["fd00:172:30::8"],
         "ports": [{"name": "x", "port": 8080}], "endpoints": ["fd00:10::9"]},
        {"namespace": "a", "name": "empty", "type": "NodePort", "clusterIPs": ["fd00:172:30::9"],
         "externalIPs": ["2001:db8:1::98"], "ports": [{"name": "x", "port": 8080, "nodePort": 31000}]},
    ],
}


def webapp_spec() -> ClusterSpec:
    return spec_from_dict(json.loads((EXAMPLES / "webapp.json").read_text()))


# --- (1) kube-proxy's reference rulesets -----------------------------------------------

def test_reference_fixtures_found() -> None:
    assert len(REFERENCE_TESTS) >= 6


@pytest.mark.parametrize("test", REFERENCE_TESTS)
def test_restore_matches_kube_proxy(test: str) -> None:
    expected = (FIXTURES / f"{test}.restore").read_text()
    assert_same_ruleset(render_restore(reference_spec(test)), expected)


@pytest.mark.parametrize("test", REFERENCE_TESTS)
def test_save_matches_live_dump(test: str) -> None:
    expected = (FIXTURES / f"{test}.live.save").read_text()
    assert_same_ruleset(NFACCT_MATCH.sub("", render_save(reference_spec(test))), expected)


def test_overall_rules() -> None:
    spec = spec_from_flows(OVERALL)
    assert_same_ruleset(render_restore(spec), (FIXTURES / "TestOverallIPTablesRules.restore").read_text())
    assert_same_ruleset(NFACCT_MATCH.sub("", render_save(spec)),
                        (FIXTURES / "TestOverallIPTablesRules.live.save").read_text())


def test_sync_order_is_same_rules_in_kube_proxy_write_order() -> None:
    spec = spec_from_flows(OVERALL)
    sorted_tables = structure(render_restore(spec))
    sync_text = render_restore(spec, order="sync")
    sync_tables = structure(sync_text)
    for table in ("filter", "nat"):
        assert sorted(sync_tables[table][0]) == sorted(sorted_tables[table][0])
        assert sync_tables[table][1] == sorted_tables[table][1]
    assert sync_tables["filter"][0][:5] == ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD",
                                            "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"]
    assert sync_tables["nat"][0][:4] == ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    nat_rules = sync_text.split("*nat\n")[1].splitlines()
    rules = [line for line in nat_rules if line.startswith("-A")]
    assert rules[0].startswith("-A KUBE-POSTROUTING")
    assert "must be the last rule" in rules[-1]
    with pytest.raises(ValueError, match="order"):
        render_restore(spec, order="random")  # type: ignore[arg-type]


# --- rule details ------------------------------------------------------------------------

def _svc_with_endpoints(n: int, **kwargs: Any) -> ClusterSpec:
    endpoints = tuple(Endpoint(f"10.1.0.{i + 1}") for i in range(n))
    svc = Service("ns", "svc", cluster_ips=("10.96.0.5",), ports=(ServicePort("http", 80),),
                  endpoints=endpoints, **kwargs)
    return ClusterSpec(services=(svc,), node_ips=("192.168.0.2",), cluster_cidr="10.1.0.0/16")


@pytest.mark.parametrize(("n", "restore", "saved"), [
    # `saved` values were read back from the kernel with iptables-save.
    (2, "0.5000000000", "0.50000000000"),
    (3, "0.3333333333", "0.33333333349"),
    (7, "0.1428571429", "0.14285714272"),
    (10, "0.1000000000", "0.10000000009"),
])
def test_probabilities(n: int, restore: str, saved: str) -> None:
    spec = _svc_with_endpoints(n)
    restore_probs = re.findall(r"--probability (\S+)", render_restore(spec))
    saved_probs = re.findall(r"--probability (\S+)", render_save(spec))
    assert len(restore_probs) == n - 1 and restore_probs[0] == restore
    assert saved_probs[0] == saved
    assert restore_probs[-1] == "0.5000000000" and saved_probs[-1] == "0.50000000000"


def test_large_cluster_mode_drops_endpoint_comments() -> None:
    small = render_restore(_svc_with_endpoints(3))
    large = render_restore(replace(_svc_with_endpoints(3), large_cluster_threshold=2))
    assert "-A KUBE-SEP-" in large and " -m comment --comment ns/svc:http " in small
    for line in large.splitlines():
        if line.startswith(("-A KUBE-SEP-", "-A KUBE-SVC-")) and "cluster IP" not in line:
            assert "--comment" not in line, line
    # Only the SEP and SVC->SEP rules lose their comments.
    assert '-m comment --comment "ns/svc:http cluster IP"' in large
    assert large.count("\n") == small.count("\n")


def test_endpoint_readiness_and_fallback() -> None:
    spec = spec_from_dict({"clusterCIDR": "10.1.0.0/16", "services": [
        {"namespace": "ns", "name": "a", "clusterIP": "10.96.0.1", "ports": [{"name": "p", "port": 80}],
         "endpoints": ["10.1.0.1", {"ip": "10.1.0.2", "ready": False},
                       {"ip": "10.1.0.3", "ready": False, "terminating": True}]},
        {"namespace": "ns", "name": "b", "clusterIP": "10.96.0.2", "ports": [{"name": "p", "port": 80}],
         "endpoints": [{"ip": "10.1.0.4", "ready": False, "terminating": True},
                       {"ip": "10.1.0.5", "ready": False, "serving": False, "terminating": True}]},
    ]})
    # a: only the ready endpoint; b: none ready, so the serving+terminating one.
    dnat = re.findall(r"--to-destination (\S+)", render_restore(spec))
    assert sorted(dnat) == ["10.1.0.1:80", "10.1.0.4:80"]


def test_endpoint_ports_and_sorting() -> None:
    # Endpoints sort by their "ip:port" string, as kube-proxy's EndpointSliceCache does.
    spec = spec_from_dict({"services": [
        {"namespace": "ns", "name": "a", "clusterIP": "10.96.0.1",
         "ports": [{"name": "web", "port": 80, "targetPort": 8080}, {"name": "admin", "port": 9000}],
         "endpoints": ["10.1.0.10", "10.1.0.9", {"ip": "10.1.0.2", "ports": {"web": 8081}}]},
    ]})
    text = render_restore(spec)
    web = re.findall(r'"ns/a:web -> (\S+)"', text)
    assert web == ["10.1.0.10:8080", "10.1.0.2:8081", "10.1.0.9:8080"]
    assert re.findall(r'"ns/a:admin -> (\S+)"', text) == ["10.1.0.10:9000", "10.1.0.9:9000"]
    # Without a cluster CIDR there is no local-traffic detector and no masquerade rule.
    assert "KUBE-MARK-MASQ" not in "".join(line for line in text.splitlines() if "cluster IP" in line)


def test_options() -> None:
    spec = replace(webapp_spec(), masquerade_all=True, conntrack_tcp_be_liberal=True, localhost_nodeports=False)
    text = render_restore(spec)
    assert '"default/webapp:http cluster IP" -m tcp -p tcp -d 10.103.46.104 --dport 80 -j KUBE-MARK-MASQ' in text
    assert "--ctstate INVALID" not in text
    assert "KUBE-FIREWALL" not in text and "127.0.0.0/8 --dport" not in text
    assert "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS" in text
    saved = render_save(spec)
    assert "-A KUBE-SERVICES ! -d 127.0.0.0/8 -m comment" in saved
    assert "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000" in saved
    assert "--or-mark 0x00004000" in text


def test_headless_externalname_and_other_family_are_skipped() -> None:
    spec = spec_from_dict({"services": [
        {"namespace": "ns", "name": "headless", "clusterIP": "None", "ports": [{"name": "p", "port": 80}],
         "endpoints": ["10.1.0.1"]},
        {"namespace": "ns", "name": "ext", "type": "ExternalName", "ports": [{"name": "p", "port": 80}]},
        {"namespace": "ns", "name": "v6", "clusterIP": "fd00::1", "ports": [{"name": "p", "port": 80}]},
    ]})
    text = render_restore(spec)
    assert "ns/" not in text


def test_jumps_and_kubelet_jumps() -> None:
    spec = webapp_spec()
    assert "-A INPUT -j KUBE-FIREWALL" in render_jumps(spec)
    jumps = render_jumps(replace(spec, kubelet_firewall_jumps=False))
    inputs = [line for line in jumps.splitlines() if line.startswith("-A INPUT")]
    assert [line.split()[-1] for line in inputs] == ["KUBE-PROXY-FIREWALL", "KUBE-NODEPORTS",
                                                     "KUBE-EXTERNAL-SERVICES"]


# --- (3) spec loading and validation -----------------------------------------------------

def _svc(**overrides: Any) -> dict[str, Any]:
    svc: dict[str, Any] = {"namespace": "ns", "name": "svc", "clusterIP": "10.96.0.1",
                           "ports": [{"name": "http", "port": 80}]}
    svc.update(overrides)
    return svc


@pytest.mark.parametrize(("data", "field"), [
    ({"services": [_svc(ports=[{"name": "http", "port": 80, "protocol": "HTTP"}])]},
     "services[0].ports[0].protocol"),
    ({"services": [_svc(ports=[{"name": "http", "port": 70000}])]}, "services[0].ports[0].port"),
    ({"services": [_svc(ports=[{"name": "http"}])]}, "services[0].ports[0].port"),
    ({"services": [_svc(ports=[{"name": "a", "port": 1}, {"name": "a", "port": 2}])]}, "services[0].ports[1].name"),
    ({"services": [_svc(ports=[{"name": "http", "port": 80, "nodePort": 30000}])]},
     "services[0].ports[0].nodePort"),
    ({"services": [_svc(clusterIP="10.96.0.300")]}, "services[0].clusterIPs[0]"),
    ({"services": [_svc(loadBalancerIPs=["1.2.3.4"])]}, "services[0].loadBalancerIPs"),
    ({"services": [_svc(type="Headless")]}, "services[0].type"),
    ({"services": [_svc(externalTrafficPolicy="local")]}, "services[0].externalTrafficPolicy"),
    ({"services": [_svc(endpoints=["10.1.0.1", {"ip": "nope"}])]}, "services[0].endpoints[1].ip"),
    ({"services": [_svc(endpoints=[{"ip": "10.1.0.1", "ready": "yes"}])]}, "services[0].endpoints[0].ready"),
    ({"services": [_svc(endpoints=[{"ip": "10.1.0.1", "ports": {"http": 0}}])]},
     "services[0].endpoints[0].ports.http"),
    ({"services": [_svc(endpoints="10.1.0.1")]}, "services[0].endpoints"),
    ({"services": [_svc(clusterIp="10.96.0.1")]}, "services[0].clusterIp"),
    ({"services": [_svc(), _svc()]}, "services[1]"),
    ({"services": [{"name": "svc", "clusterIP": "10.96.0.1"}]}, "services[0].namespace"),
    ({"services": [_svc(sessionAffinityTimeout=0)]}, "services[0].sessionAffinityTimeout"),
    ({"family": 5}, "family"),
    ({"clusterCIDR": "fd00::/64"}, "clusterCIDR"),
    ({"nodeIPs": "192.168.0.2"}, "nodeIPs"),
    ({"masqueradeMark": "0x4001"}, "masqueradeMark"),
    ({"masqueradeAll": 1}, "masqueradeAll"),
    ({"servics": []}, "servics"),
])
def test_spec_validation_errors(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as info:
        spec_from_dict(data)
    assert str(info.value).startswith(f"{field}:"), str(info.value)


def test_spec_from_dict_rejects_non_objects() -> None:
    with pytest.raises(ValueError, match="expected an object"):
        spec_from_dict([])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="setup"):
        spec_from_flows(json.loads((FIXTURES / "TestTracePacket.flows.json").read_text()))


def test_spec_normalises() -> None:
    svc = Service("ns", "svc", cluster_ips=["FD00:0:0::1"],  # type: ignore[arg-type]
                  load_balancer_source_ranges=[" 203.0.113.7/24"])  # type: ignore[arg-type]
    assert svc.cluster_ips == ("fd00::1",)
    assert svc.load_balancer_source_ranges == ("203.0.113.0/24",)
    assert Endpoint("10.1.0.1", ports={"b": 2, "a": 1}).ports == (("a", 1), ("b", 2))  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", [webapp_spec(), spec_from_dict(IPV6_ALL), synthetic_spec(50, 3),
                                  spec_from_flows(OVERALL)], ids=["webapp", "ipv6", "synthetic", "overall"])
def test_spec_dict_round_trip(spec: ClusterSpec) -> None:
    data = spec_to_dict(spec)
    assert spec_from_dict(json.loads(json.dumps(data))) == spec


# --- examples, CLI, benchmark ------------------------------------------------------------

def test_example_save_is_current() -> None:
    assert (EXAMPLES / "webapp.save").read_text() == render_save(webapp_spec())


def test_example_webapp_rules() -> None:
    text = render_save(webapp_spec())
    assert '-A KUBE-SERVICES -d 10.103.46.104/32 -p tcp -m comment --comment "default/webapp:http cluster IP"' in text
    assert re.search(r'"default/webapp:http -> 10\.244\.120\.102:80" -m statistic --mode random '
                     r"--probability 0\.50000000000 ", text)
    assert '--comment "default/orders:http has no endpoints"' in text


def test_module_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate_main([str(EXAMPLES / "webapp.json")]) == 0
    assert capsys.readouterr().out == render_save(webapp_spec())
    out = tmp_path / "restore.txt"
    assert generate_main([str(FIXTURES / "TestLoadBalancer.flows.json"), "--format", "restore",
                          "--out", str(out)]) == 0
    assert out.read_text() == (FIXTURES / "TestLoadBalancer.restore").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text('{"services": [{"namespace": "ns"}]}')
    assert generate_main([str(bad)]) == 2
    assert "services[0].name" in capsys.readouterr().err


def test_benchmark_script(tmp_path: Path) -> None:
    out = tmp_path / "rules.save"
    args = [sys.executable, str(ROOT / "benchmarks" / "gen_ruleset.py"), "--services", "40", "--endpoints", "3",
            "--out", str(out)]
    subprocess.run(args, check=True, capture_output=True)
    first = out.read_text()
    subprocess.run(args, check=True, capture_output=True)
    assert out.read_text() == first  # deterministic
    assert first == render_save(synthetic_spec(40, 3))
    assert '"default/no-endpoints:http has no endpoints"' in first


def test_synthetic_mix() -> None:
    spec = synthetic_spec(2000, 2)
    types = {t: sum(1 for s in spec.services if s.type == t) for t in ("ClusterIP", "NodePort", "LoadBalancer")}
    assert types["ClusterIP"] > types["NodePort"] > types["LoadBalancer"] > 0
    assert any(s.external_traffic_policy == "Local" for s in spec.services)
    assert any(not s.endpoints for s in spec.services)
    assert synthetic_spec(2000, 2) == spec


def test_large_ruleset_is_fast() -> None:
    spec = synthetic_spec(10_000, 10)
    for render in (render_restore, render_save):
        start = time.perf_counter()
        text = render(spec)
        elapsed = time.perf_counter() - start
        assert text.count("\n-A ") > 300_000
        assert elapsed < 10, f"{render.__name__} took {elapsed:.1f}s"


# --- (2) round trip through the kernel ---------------------------------------------------

def _kernel_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables-restore", "iptables-save", "ip6tables-restore", "ip6tables-save"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


@pytest.fixture
def netns() -> Any:
    reason = _kernel_unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"kernel round trip {reason}")
        pytest.skip(reason)
    name = f"kptrace-gen-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


ROUND_TRIP_SPECS = {
    **{test: (lambda test=test: reference_spec(test)) for test in REFERENCE_TESTS},
    "overall": lambda: spec_from_flows(OVERALL),
    "webapp": webapp_spec,
    "ipv6-all": lambda: spec_from_dict(IPV6_ALL),
    "ipv6-all-as-ipv4": lambda: replace(spec_from_dict(IPV6_ALL), family=4, cluster_cidr="10.0.0.0/8"),
    "synthetic": lambda: synthetic_spec(300, 4),
    "synthetic-large-options": lambda: replace(
        synthetic_spec(300, 4), nfacct=True, kubelet_firewall_jumps=True, random_fully=True,
        masquerade_mark="0x00004000", large_cluster_threshold=100),
    "synthetic-masquerade-all": lambda: replace(
        synthetic_spec(100, 3), masquerade_all=True, localhost_nodeports=False, conntrack_tcp_be_liberal=True,
        cluster_cidr=None, kubelet_firewall_jumps=True),
}


@pytest.mark.root
@pytest.mark.parametrize("case", sorted(ROUND_TRIP_SPECS))
def test_kernel_round_trip(case: str, netns: str) -> None:
    spec = ROUND_TRIP_SPECS[case]()
    tool = "ip6tables" if spec.family == 6 else "iptables"

    def run(*cmd: str, payload: str | None = None) -> str:
        done = subprocess.run(["ip", "netns", "exec", netns, *cmd], input=payload, text=True,
                              capture_output=True)
        assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr}"
        return done.stdout

    if spec.nfacct:
        add_nfacct(netns, "ct_state_invalid_dropped_pkts", "localhost_nps_accepted_pkts")
    run(f"{tool}-restore", "--noflush", payload=render_restore(spec))
    run(f"{tool}-restore", "--noflush", payload=render_jumps(spec))
    saved = run(f"{tool}-save")
    got = [re.sub(r"\[\d+:\d+\]$", "[0:0]", line) for line in saved.splitlines() if not line.startswith("#")]
    assert got == render_save(spec).splitlines()
