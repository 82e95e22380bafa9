"""``kptrace lab``: the config, and a real lab checked with real connections.

Connections are only ever made between the lab's own namespaces.  Kernel tests need
root and both iptables backends: they skip without them, and fail in CI (CI=true).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _kernel import require_root_and
from clirunner import Result, run
from kptrace.errors import EnvironmentProblem, UsageError
from kptrace.lab import CLIENT_NS, FIXED_NAMESPACES, NODE_NS, REMOTE_NS, STATE_FILE, is_lab_namespace
from kptrace.lab import build
from kptrace.lab.config import DEFAULT_LAB, EXAMPLE_CONFIG, config_from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent
NODE_IP = "192.168.49.2"
CLIENT_IP = "203.0.113.10"
WEBAPP = {"webapp-7c9f8d6b5-4xkqz", "webapp-7c9f8d6b5-9hvtm"}
STOREFRONT_LOCAL = "storefront-5d8b7c-pq2lw"
STOREFRONT = {STOREFRONT_LOCAL, "storefront-5d8b7c-m7zrt"}
CART = {"cart-6f7d9-jx5tn", "cart-6f7d9-b2wvk", "cart-6f7d9-r8cgh"}
COREDNS = {"coredns-7db6d8ff4d-8mx2k", "coredns-7db6d8ff4d-w5lz9"}
CART_POD = "cart-6f7d9-jx5tn"
HOME_NETNS = os.stat("/proc/thread-self/ns/net").st_ino


def cli(*args: str) -> Result:
    """``kptrace lab ...`` through the real entry point (exit codes, error mapping)."""
    return run("lab", *args)


def require_lab_prerequisites() -> None:
    require_root_and("iptables-nft-restore", "iptables-legacy-restore", "ip", "ps")


def answers(ns: str, ip: str, port: int, proto: str = "tcp", n: int = 1) -> list[tuple[str, str]]:
    """(server name, source address it saw) for N new connections or datagrams."""
    out = []
    for _ in range(n):
        name, _, seen = build.ask(ns, ip, port, proto, timeout=2.0).partition(" ")
        out.append((name, seen))
    return out


def names(ns: str, ip: str, port: int, proto: str = "tcp", n: int = 1) -> set[str]:
    return {name for name, _ in answers(ns, ip, port, proto, n)}


def leftovers() -> dict[str, list[str]]:
    """What of the lab the root namespace can see: namespaces, processes, links."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return {
        # other kptrace-* namespaces (throwaway test ones) are not the lab's
        "namespaces": sorted(n for n in (line.split()[0] for line in netns.splitlines() if line.strip()) if is_lab_namespace(n)),
        "processes": sorted(line.strip() for line in ps.splitlines() if "kptrace.lab.podserver" in line),
        "links": sorted(line.split(":")[1].strip() for line in links.splitlines() if "kptr" in line),
        "state": [STATE_FILE] if os.path.exists(STATE_FILE) else [],
    }


NOTHING: dict[str, list[str]] = {"namespaces": [], "processes": [], "links": [], "state": []}


# -- config (no privileges needed) ------------------------------------------------


def test_example_is_the_builtin_default() -> None:
    assert json.loads(EXAMPLE_CONFIG.read_text()) == DEFAULT_LAB
    assert load_config(None).digest == config_from_dict(DEFAULT_LAB).digest


def test_default_config_endpoints() -> None:
    cfg = load_config(ROOT / "examples" / "lab.json")
    by_name = {ep.name: ep for ep in cfg.endpoints}
    assert {ep.name for ep in cfg.pods} == WEBAPP | {STOREFRONT_LOCAL, CART_POD, "coredns-7db6d8ff4d-8mx2k"}
    assert {ep.name for ep in cfg.remotes} == (STOREFRONT | CART | COREDNS) - {ep.name for ep in cfg.pods}
    assert by_name["coredns-7db6d8ff4d-8mx2k"].tcp_ports == (53,) and by_name["coredns-7db6d8ff4d-8mx2k"].udp_ports == (53,)
    assert by_name[STOREFRONT_LOCAL].tcp_ports == (8080,)  # the targetPort, not the Service port
    assert by_name[CART_POD].netns == "kptrace-pod-" + CART_POD
    assert by_name["cart-6f7d9-b2wvk"].netns == REMOTE_NS
    assert cfg.spec.nfacct is False  # the lab creates no nfacct objects
    assert (cfg.node_ip, cfg.client_ip, cfg.client_gateway, cfg.remote_node_ip) == (NODE_IP, CLIENT_IP, "203.0.113.1", "192.168.49.3")


def test_host_network_endpoint_and_default_names() -> None:
    doc = {"nodeIPs": [NODE_IP], "services": [
        {"namespace": "default", "name": "kubernetes", "clusterIP": "10.96.0.1",
         "ports": [{"name": "https", "port": 443, "targetPort": 6443}], "endpoints": [NODE_IP]},
        {"namespace": "default", "name": "web", "clusterIP": "10.96.0.20",
         "ports": [{"name": "http", "port": 80}], "endpoints": [{"ip": "10.244.1.5", "local": True}, "10.244.2.7"]},
    ]}
    eps = {ep.name: ep for ep in config_from_dict(doc).endpoints}
    assert eps["kubernetes-1"].kind == "host" and eps["kubernetes-1"].netns == NODE_NS
    assert eps["kubernetes-1"].tcp_ports == (6443,)
    assert eps["web-1"].kind == "pod" and eps["web-2"].kind == "remote"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(family=6), "IPv4"),
        (lambda d: d.pop("nodeIPs"), "nodeIPs"),
        (lambda d: d["lab"].update(clientIP="203.0.113.1/24"), "first host"),
        (lambda d: d["lab"].update(clientIP="nonsense"), "lab.clientIP"),
        (lambda d: d["lab"].update(bogus=1), "lab.bogus"),
        (lambda d: d["services"][0]["endpoints"][0].update(pod="Bad_Name"), "endpoints[0].pod"),
        (lambda d: d["services"][0]["endpoints"][1].update(pod="webapp-7c9f8d6b5-4xkqz"), "both named"),
        (lambda d: d["services"][0]["endpoints"][0].update(ip="192.168.49.3"), "remoteNodeIP"),
        (lambda d: d["services"][0].update(clusterIP="not-an-ip"), "services[0].clusterIPs[0]"),
    ],
)
def test_config_errors(change: Any, message: str) -> None:
    doc = json.loads(json.dumps(DEFAULT_LAB))
    change(doc)
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config_from_dict(doc, "lab.json")


def test_bad_config_file_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "lab.json"
    path.write_text("{not json")
    with pytest.raises(UsageError, match="lab.json:1: not valid JSON"):
        load_config(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(EnvironmentProblem, match=r"needs root \(CAP_NET_ADMIN and CAP_SYS_ADMIN\)"):
        build.up(load_config(None))
    with pytest.raises(EnvironmentProblem, match="needs root"):
        build.down()
    assert cli("up").code == 3


def test_help_has_examples() -> None:
    for args in (["--help"], ["up", "--help"], ["down", "--help"], ["status", "--help"]):
        r = cli(*args)
        assert r.code == 0, r.err
    assert "sudo kptrace lab up --config" in cli("up", "--help").out


# -- a real lab -----------------------------------------------------------------


@pytest.mark.root
def test_up_down_leaves_nothing() -> None:
    """A whole cycle through the CLI, with the legacy backend (the fixture below uses nft).
    Runs before the module's lab exists."""
    require_lab_prerequisites()
    assert leftovers() == NOTHING, "a lab is already up on this machine"
    try:
        r = cli("up", "--backend", "legacy")
        assert r.code == 0, r.err
        assert "lab up in" in r.out
        seen = leftovers()
        assert set(FIXED_NAMESPACES) <= set(seen["namespaces"]) and len(seen["namespaces"]) == 9
        assert len(seen["processes"]) == 9
        assert seen["links"] == []  # every veth lives in the lab's namespaces only
        save = subprocess.run(["ip", "netns", "exec", NODE_NS, "iptables-legacy-save", "-t", "nat"],
                              capture_output=True, text=True, check=True).stdout
        assert "KUBE-SVC-" in save and "-j KUBE-SERVICES" in save
        assert names(CLIENT_NS, NODE_IP, 31380) <= WEBAPP
    finally:
        r = cli("down")
    assert r.code == 0, r.err
    assert "lab removed: 9 namespaces, 9 server processes" in r.out
    assert leftovers() == NOTHING
    again = cli("down")
    assert again.code == 0 and "no lab" in again.out
    assert cli("status").code == 4


@pytest.mark.root
def test_failed_up_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    require_lab_prerequisites()

    def broken(tool: str, payload: str, what: str) -> None:
        raise EnvironmentProblem(f"{tool} rejected the lab's {what}")

    monkeypatch.setattr(build, "_restore", broken)
    with pytest.raises(EnvironmentProblem, match="rejected"):
        build.up(load_config(None))
    assert leftovers() == NOTHING


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    require_lab_prerequisites()
    try:
        yield build.up(load_config(None), "nft", rebuild=True)
    finally:
        build.down()


def pod_ns(lab: dict[str, Any], pod: str) -> str:
    return str(lab["namespaces"]["pods"][pod])


@pytest.mark.root
def test_up_is_fast(lab: dict[str, Any]) -> None:
    assert not lab["reused"]
    assert lab["seconds"] <= 5.0


@pytest.mark.root
def test_clusterip_from_a_pod_reaches_both_endpoints(lab: dict[str, Any]) -> None:
    got = answers(pod_ns(lab, CART_POD), "10.103.46.104", 80, n=40)
    assert {name for name, _ in got} == WEBAPP
    assert {seen for _, seen in got} == {"10.244.120.120"}  # pod to pod: no masquerade


@pytest.mark.root
def test_nodeport_from_the_client_is_masqueraded(lab: dict[str, Any]) -> None:
    got = answers(CLIENT_NS, NODE_IP, 31380, n=20)
    assert {name for name, _ in got} == WEBAPP
    seen = {s for _, s in got}
    assert CLIENT_IP not in seen and seen <= set(lab["node"]["localIPs"])


@pytest.mark.root
def test_external_traffic_policy_local(lab: dict[str, Any]) -> None:
    # From outside: the local endpoint only, and the client's address is kept.
    for ip, port in (("192.168.49.200", 80), (NODE_IP, 30876)):
        got = answers(CLIENT_NS, ip, port, n=12)
        assert set(got) == {(STOREFRONT_LOCAL, CLIENT_IP)}, (ip, port)
    # From inside the cluster the policy does not apply: both endpoints.
    assert names(pod_ns(lab, CART_POD), "10.100.77.12", 80, n=40) == STOREFRONT


@pytest.mark.root
def test_service_without_endpoints_is_refused(lab: dict[str, Any]) -> None:
    for ns in (pod_ns(lab, CART_POD), CLIENT_NS):
        with pytest.raises(ConnectionRefusedError):
            build.ask(ns, "10.108.31.7", 8080, timeout=2.0)


@pytest.mark.root
def test_session_affinity_sticks(lab: dict[str, Any]) -> None:
    for pod in sorted(WEBAPP):
        got = names(pod_ns(lab, pod), "10.99.142.23", 80, n=10)
        assert len(got) == 1 and got <= CART, pod


@pytest.mark.root
def test_udp_service_answers(lab: dict[str, Any]) -> None:
    ns = pod_ns(lab, CART_POD)
    assert names(ns, "10.96.0.10", 53, "udp", n=30) == COREDNS  # a new socket, so a new flow, each time
    assert names(ns, "10.96.0.10", 53, "tcp", n=30) == COREDNS


@pytest.mark.root
def test_localhost_nodeport_on_the_node(lab: dict[str, Any]) -> None:
    assert names(NODE_NS, "127.0.0.1", 31380, n=6) <= WEBAPP  # needs route_localnet=1


@pytest.mark.root
def test_routes_keep_traffic_on_the_machine(lab: dict[str, Any]) -> None:
    """Route lookups only (no packet sent): the world is the sink, via the node."""
    from pyroute2 import IPRoute

    for ns, expected in ((NODE_NS, "kptr-sink"), (CLIENT_NS, "eth0")):
        with build.in_netns(ns):
            ipr = IPRoute()
        try:
            route = ipr.route("get", dst="192.0.2.77")[0]
            oif = ipr.get_links(route.get_attr("RTA_OIF"))[0].get_attr("IFLA_IFNAME")
        finally:
            ipr.close()
        assert oif == expected, ns
    assert os.stat("/proc/thread-self/ns/net").st_ino == HOME_NETNS  # the test thread came back


@pytest.mark.root
def test_status(lab: dict[str, Any]) -> None:
    data = build.status()
    assert data["up"] and data["probed"]
    assert all(ns["exists"] for ns in data["namespaces"])
    assert all(s["running"] and all(s["answers"].values()) for s in data["servers"])
    node = next(ns for ns in data["namespaces"] if ns["name"] == NODE_NS)
    assert f"{NODE_IP}/24" in node["addresses"]["kptr-client"]
    r = cli("status", "-o", "json")
    assert r.code == 0, r.err
    assert {s["service"] for s in r.json["services"]} == {
        "default/webapp", "default/orders", "shop/storefront", "default/cart", "kube-system/kube-dns"}
    text = cli("status")
    assert text.code == 0 and "servers: all 9 answer" in text.out
    assert "10.108.31.7:8080" in text.out and "no endpoints" in text.out


@pytest.mark.root
def test_status_without_root_shows_the_state_file(lab: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    data = build.status()
    assert data["up"] and not data["probed"]
    assert all(s["running"] and set(s["answers"].values()) == {None} for s in data["servers"])
    client = next(ns for ns in data["namespaces"] if ns["name"] == CLIENT_NS)
    assert client["addresses"] == {"eth0": [f"{CLIENT_IP}/24"]}


@pytest.mark.root
def test_up_twice_is_harmless(lab: dict[str, Any]) -> None:
    pids = sorted(s["pid"] for s in lab["servers"])
    r = cli("up")
    assert r.code == 0, r.err
    assert "already up (kept)" in r.out
    assert sorted(s["pid"] for s in build.read_state()["servers"]) == pids  # type: ignore[index]
    assert len(leftovers()["processes"]) == len(pids)
    # A forced rebuild replaces everything cleanly, and the lab still works.
    r = cli("up", "--rebuild", "-o", "json")
    assert r.code == 0, r.err
    assert not r.json["reused"]
    assert not set(pids) & {s["pid"] for s in r.json["servers"]}
    assert len(leftovers()["processes"]) == len(pids)
    assert names(CLIENT_NS, NODE_IP, 31380, n=10) <= WEBAPP
