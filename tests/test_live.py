"""Reading the live node: real rules loaded into throwaway network namespaces with the
real iptables-restore of each backend, read back by load_live inside the namespace."""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from clirunner import flow_answers
from _kernel import (
    IPT,
    ROOT,
    add_node_addresses,
    call_in_netns,
    chain_texts,
    fixture_family,
    flows,
    load_live_in,
    netns,
    ns_sh,
    require_root_and,
    restore,
    sh,
)
from kptrace.errors import EnvironmentProblem, NotFound, UsageError
from kptrace.model.packet import Packet
from kptrace.model.state import NodeState, Route
from kptrace.sources import collect
from kptrace.sources.collect import ROOT_MESSAGE, read_save, undeclared_jumps
from kptrace.sources.files import load_files
from kptrace.sources.live import load_live
from kptrace.sources.netns import enter_netns
from kptrace.trace.simulate import trace

LIVE_SAVES = sorted(p.name for p in IPT.glob("*.live.save"))
BACKENDS = ("nft", "legacy")


def _tools(backend: str, family: int = 4) -> tuple[str, ...]:
    prefix = "ip6tables" if family == 6 else "iptables"
    return (f"{prefix}-{backend}-restore", f"{prefix}-{backend}-save")


def answers(node: NodeState, flow: dict, origin: str) -> list[tuple]:
    return flow_answers(node, flow, origin)


def assert_same_answers(live: NodeState, files: NodeState, data: dict) -> int:
    for flow in data["flows"]:
        src = ipaddress.ip_address(flow["sourceIP"])
        assert live.is_local(src) == files.is_local(src), flow["name"]
        origin = "local" if files.is_local(src) else "remote"
        assert answers(live, flow, origin) == answers(files, flow, origin), flow["name"]
    return len(data["flows"])


# -- rules: live equals the same file, for each backend and family --------------------


@pytest.mark.root
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fixture", LIVE_SAVES)
def test_live_equals_file(ns: str, fixture: str, backend: str) -> None:
    family = fixture_family(IPT / fixture)
    require_root_and(*_tools(backend, family), "sysctl")
    test = fixture.removesuffix(".live.save")
    data = flows(test) if (IPT / f"{test}.flows.json").exists() else None
    node_ips = data["nodeIPs"] if data else ["192.168.0.2", "2001:db8::1"]
    restore(ns, fixture, backend)
    add_node_addresses(ns, node_ips)
    # as on a Kubernetes node: kube-proxy sets route_localnet, the node forwards
    ns_sh(ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")

    live = load_live_in(ns)
    local = frozenset(ipaddress.ip_address(a) for a in (data["localIPs"] if data else node_ips))
    files = load_files([str(IPT / fixture)], local_ips=local)

    assert live.provenance.kind == "live" and live.provenance.backend == backend
    assert live.provenance.paths == () and live.provenance.time
    assert sorted(rs.family for rs in live.rulesets) == [4, 6]
    assert all(rs.backend == backend for rs in live.rulesets)
    assert live.ruleset_for({4: 6, 6: 4}[family]).tables == []  # the other family holds no rules
    assert not [w for w in live.warnings if "SPLIT BRAIN" in w or "changing" in w]
    live_rs, file_rs = live.ruleset_for(family), files.ruleset_for(family)
    assert live_rs is not None and file_rs is not None
    # (the nft backend read per chain takes every table as present: a missing one reads as empty)
    assert sorted(t for t in live_rs.tables if live_rs.chain_names(t)) == sorted(file_rs.tables)
    assert chain_texts(live_rs) == chain_texts(file_rs)
    assert local <= (live.local_ips or frozenset())
    assert live.sysctls["net.ipv4.conf.all.route_localnet"] == "1"
    if data:
        assert assert_same_answers(live, files, data) > 0


# -- backend choice ----------------------------------------------------------------


@pytest.mark.root
def test_split_brain_warns_and_backend_forces(ns: str) -> None:
    require_root_and(*_tools("nft"), *_tools("legacy"))
    restore(ns, "TestClusterIPGeneral.live.save", "nft")
    restore(ns, "TestNodePorts_1.live.save", "legacy")
    nft_file = load_files([str(IPT / "TestClusterIPGeneral.live.save")])
    legacy_file = load_files([str(IPT / "TestNodePorts_1.live.save")])

    state = load_live_in(ns)
    brain = [w for w in state.warnings if "SPLIT BRAIN" in w]
    assert len(brain) == 1 and "iptables-nft" in brain[0] and "iptables-legacy" in brain[0]
    assert "uses only iptables-nft" in brain[0]
    assert state.provenance.backend == "nft"
    assert chain_texts(state.ruleset_for(4)) == chain_texts(nft_file.rulesets[0])

    forced = load_live_in(ns, backend="legacy")
    assert forced.provenance.backend == "legacy"
    assert {rs.backend for rs in forced.rulesets} == {"legacy"}
    assert chain_texts(forced.ruleset_for(4)) == chain_texts(legacy_file.rulesets[0])
    assert any("SPLIT BRAIN" in w and "uses only iptables-legacy" in w for w in forced.warnings)


@pytest.mark.root
def test_backend_with_kube_chains_wins(ns: str) -> None:
    require_root_and(*_tools("nft"), *_tools("legacy"), "iptables-nft")
    restore(ns, "TestNoEndpointsReject.live.save", "legacy")
    ns_sh(ns, "iptables-nft", "-w", "5", "-A", "FORWARD", "-s", "198.51.100.0/24", "-j", "DROP")
    state = load_live_in(ns)
    assert state.provenance.backend == "legacy"
    assert not any("SPLIT BRAIN" in w for w in state.warnings)
    assert any("iptables-nft also holds 1 IPv4 rules" in w for w in state.warnings)


@pytest.mark.root
def test_no_kube_chains(ns: str) -> None:
    require_root_and(*_tools("nft"), *_tools("legacy"))
    state = load_live_in(ns)
    assert any("no kube-proxy chains" in w for w in state.warnings)
    assert sorted(rs.family for rs in state.rulesets) == [4, 6]
    out = trace(state, Packet(dst=ipaddress.ip_address("127.0.0.1"), dport=80, src=ipaddress.ip_address("127.0.0.1"), origin="local"))
    assert {o.verdict for o in out.outcomes} == {"accept"}


# -- addresses, routes, sysctls, ipsets -------------------------------------------


@pytest.mark.root
def test_addresses_routes_sysctls(ns: str) -> None:
    require_root_and("sysctl", *_tools("nft"))
    dev = add_node_addresses(ns, ["192.0.2.10", "2001:db8::10"], default_route=False)
    ns_sh(ns, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.1", "dev", dev, "onlink")
    ns_sh(ns, "ip", "route", "add", "blackhole", "10.1.0.0/16")
    ns_sh(ns, "ip", "route", "add", "unreachable", "10.2.0.0/16")
    ns_sh(ns, "ip", "route", "add", "prohibit", "10.3.0.0/16")
    ns_sh(ns, "ip", "-6", "route", "add", "unreachable", "2001:db8:dead::/48")
    ns_sh(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.route_localnet=1", "net.ipv6.conf.all.forwarding=1")

    state = load_live_in(ns)
    ips = state.local_ips or frozenset()
    for a in ("192.0.2.10", "2001:db8::10", "127.0.0.1", "::1"):
        assert ipaddress.ip_address(a) in ips
    routes = set(state.routes or ())
    net = ipaddress.ip_network
    assert Route(net("198.51.100.0/24"), "unicast", dev, ipaddress.ip_address("192.0.2.1"), "main") in routes
    assert Route(net("10.1.0.0/16"), "blackhole", None, None, "main") in routes
    assert Route(net("10.2.0.0/16"), "unreachable", None, None, "main") in routes
    assert Route(net("10.3.0.0/16"), "prohibit", None, None, "main") in routes
    assert any(r.dst == net("2001:db8:dead::/48") and r.kind == "unreachable" for r in routes)
    assert Route(net("192.0.2.10/32"), "local", dev, None, "local") in routes
    assert Route(net("127.0.0.0/8"), "local", "lo", None, "local") in routes
    assert state.is_local(ipaddress.ip_address("192.0.2.10")) is True
    assert state.is_local(ipaddress.ip_address("192.0.2.11")) is False
    assert state.sysctls == {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.route_localnet": "1",
        "net.ipv6.conf.all.forwarding": "1",
    }

    # A second namespace keeps the kernel defaults: /proc/sys follows the reader's netns.
    with netns("other") as other:
        fresh = load_live_in(other)
    assert fresh.sysctls["net.ipv4.ip_forward"] == "0"
    assert fresh.sysctls["net.ipv4.conf.all.route_localnet"] == "0"
    assert ipaddress.ip_address("192.0.2.10") not in (fresh.local_ips or frozenset())


@pytest.mark.root
def test_ipsets(ns: str) -> None:
    require_root_and("ipset", *_tools("nft"))
    ns_sh(ns, "ipset", "create", "KUBE-LOOP-BACK", "hash:ip,port,ip")
    ns_sh(ns, "ipset", "add", "KUBE-LOOP-BACK", "10.180.0.1,tcp:80,10.180.0.1")
    state = load_live_in(ns)
    assert state.ipsets is not None
    s = state.ipsets["KUBE-LOOP-BACK"]
    assert s.type == "hash:ip,port,ip" and s.members == frozenset({"10.180.0.1,tcp:80,10.180.0.1"})


# -- routing: what the kernel does with a DNATed packet that has no route --------------


def _counters(ns: str, table: str) -> dict[str, int]:
    """Packets per rule of a mangle chain, from ``iptables-nft-save -c``."""
    out: dict[str, int] = {}
    for line in ns_sh(ns, "iptables-nft-save", "-c", "-t", table).stdout.splitlines():
        if line.startswith("[") and "] -A " in line:
            packets = int(line[1:].split(":", 1)[0])
            chain = line.split("] -A ", 1)[1].split()[0]
            out[chain] = out.get(chain, 0) + packets
    return out


def _connect(client: str, dst: str, port: int) -> str:
    code = (
        "import errno, socket\n"
        "s = socket.socket(); s.settimeout(2)\n"
        "try:\n"
        f"    s.connect(({dst!r}, {port})); print('connected')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode.get(e.errno, 'timeout'))\n"
    )
    return ns_sh(client, sys.executable, "-c", code).stdout.strip()


@pytest.mark.root
def test_no_route_to_endpoint_drops_before_forward() -> None:
    """A ClusterIP packet from another host, DNATed to an endpoint the node has no route
    to: the kernel drops it at the routing decision after PREROUTING (no FORWARD), and
    with forwarding on answers ICMP net unreachable. With a route it reaches FORWARD."""
    require_root_and(*_tools("nft"), "iptables-nft", "sysctl")
    with netns("client") as client, netns("node") as node:
        sh("ip", "link", "add", "vc", "netns", client, "type", "veth", "peer", "name", "vn", "netns", node)
        ns_sh(client, "ip", "addr", "add", "203.0.113.2/24", "dev", "vc")
        ns_sh(client, "ip", "link", "set", "vc", "up")
        ns_sh(client, "ip", "route", "add", "172.30.0.0/16", "via", "203.0.113.1")
        ns_sh(node, "ip", "addr", "add", "203.0.113.1/24", "dev", "vn")
        ns_sh(node, "ip", "link", "set", "vn", "up")
        ns_sh(node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        restore(node, "TestClusterIPGeneral.live.save", "nft")
        for chain in ("PREROUTING", "INPUT", "FORWARD"):  # counting rules, no target
            ns_sh(node, "iptables-nft", "-w", "5", "-t", "mangle", "-A", chain, "-s", "203.0.113.2")

        # The kernel: no route to 172.30.0.0/16 nor to the endpoint 10.180.0.1.
        assert _connect(client, "172.30.0.41", 80) == "ENETUNREACH"
        seen = _counters(node, "mangle")
        assert seen["PREROUTING"] >= 1 and seen.get("FORWARD", 0) == 0 and seen.get("INPUT", 0) == 0
        dnat = [ln for ln in ns_sh(node, "iptables-nft-save", "-c", "-t", "nat").stdout.splitlines() if "10.180.0.1:80" in ln and "ns1/svc1" in ln]
        assert dnat and not dnat[0].startswith("[0:")  # DNAT happened before the routing decision

        packet = Packet(dst=ipaddress.ip_address("172.30.0.41"), dport=80, src=ipaddress.ip_address("203.0.113.2"), iif="vn")
        state = load_live_in(node)
        result = trace(state, packet)
        assert result.outcomes
        for o in result.outcomes:
            assert o.verdict == "drop" and o.dnat == "10.180.0.1:80"
            assert not any("FORWARD" in step for step in o.path)
            assert "no route" in o.reason

        # With a route to the endpoint the kernel forwards, and so does the trace.
        ns_sh(node, "ip", "link", "add", "pods", "type", "veth", "peer", "name", "podsp")
        ns_sh(node, "ip", "link", "set", "pods", "up")
        ns_sh(node, "ip", "link", "set", "podsp", "up")
        ns_sh(node, "ip", "route", "add", "10.180.0.0/16", "dev", "pods")
        ns_sh(node, "iptables-nft", "-w", "5", "-t", "mangle", "-Z")
        assert _connect(client, "172.30.0.41", 80) == "timeout"  # nobody answers on "pods"
        assert _counters(node, "mangle")["FORWARD"] >= 1
        routed = trace(load_live_in(node), packet)
        assert {o.verdict for o in routed.outcomes} == {"accept"}
        assert all(o.delivery == "forward" and "filter FORWARD" in o.path for o in routed.outcomes)


# -- privileges and environment ----------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize(
    "how",
    [
        pytest.param(("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"), id="nobody"),
        pytest.param(("setpriv", "--inh-caps=-all", "--bounding-set=-all"), id="root-without-caps"),
    ],
)
def test_without_privileges_says_root(ns: str, how: tuple[str, ...]) -> None:
    require_root_and("setpriv", *_tools("nft"), *_tools("legacy"))
    restore(ns, "TestClusterIPGeneral.live.save", "legacy")
    with pytest.raises(EnvironmentProblem) as exc:
        call_in_netns(None, "kptrace.sources.live.load_live", prefix=("ip", "netns", "exec", ns, *how))
    assert exc.value.message == ROOT_MESSAGE
    assert exc.value.exit_status == 3


def _fake_bin(tmp_path: Path, name: str, script: str) -> None:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def fake_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Only the commands a test writes into tmp_path can be found."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(collect, "SBIN_DIRS", ())
    return tmp_path


def test_missing_iptables_names_the_package(fake_path: Path) -> None:
    with pytest.raises(EnvironmentProblem) as exc:
        load_live()
    assert "iptables-nft-save not found" in exc.value.message and "'iptables'" in exc.value.message


def test_forced_backend_needs_its_binary(fake_path: Path) -> None:
    # (the legacy backend is read from the kernel: forcing it needs no binary)
    _fake_bin(fake_path, "iptables-legacy-save", "exit 0")
    with pytest.raises(EnvironmentProblem) as exc:
        load_live(backend="nft")
    assert "iptables-nft-save not found" in exc.value.message
    with pytest.raises(UsageError):
        load_live(backend="bpf")


def test_permission_denied_message(fake_path: Path) -> None:
    _fake_bin(fake_path, "iptables-nft-save", "echo 'iptables-nft-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)' >&2; exit 4")
    with pytest.raises(EnvironmentProblem) as exc:
        load_live()
    assert exc.value.message == ROOT_MESSAGE


def test_timeout(fake_path: Path) -> None:
    _fake_bin(fake_path, "iptables-nft-save", f"exec {shutil.which('sleep', path='/usr/bin:/bin')} 5")
    with pytest.raises(EnvironmentProblem) as exc:
        load_live(timeout=0.3)
    assert "did not finish within 0.3s" in exc.value.message


def test_legacy_modules_not_loaded_is_empty(fake_path: Path) -> None:
    _fake_bin(fake_path, "iptables-legacy-save", "echo 'Failed to list table names in /proc/net/ip_tables_names: No such file or directory' >&2; exit 1")
    assert read_save(str(fake_path / "iptables-legacy-save"), timeout=5) == ("", [])


# -- a ruleset that changes while it is read -----------------------------------------

_CONSISTENT = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n"
_TORN = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j KUBE-SVC-GONE\nCOMMIT\n"


class _Runner:
    def __init__(self, outputs: list[str]) -> None:
        self.outputs = outputs
        self.calls = 0

    def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        text = self.outputs[min(self.calls, len(self.outputs) - 1)]
        self.calls += 1
        return subprocess.CompletedProcess(list(argv), 0, text, "")


def test_changed_ruleset_is_read_again() -> None:
    runner = _Runner([_TORN, _CONSISTENT])
    assert read_save("iptables-nft-save", timeout=5, runner=runner) == (_CONSISTENT, [])
    assert runner.calls == 2


def test_ruleset_that_keeps_changing_gives_a_warning() -> None:
    runner = _Runner([_TORN])
    text, warnings = read_save("iptables-nft-save", timeout=5, runner=runner)
    assert text == _TORN and runner.calls == 4
    assert len(warnings) == 1 and "nat KUBE-SERVICES -> KUBE-SVC-GONE" in warnings[0]


def test_atomic_backend_is_not_checked() -> None:
    """iptables-legacy reads each table in one snapshot: one read, whatever it says."""
    runner = _Runner([_TORN])
    assert read_save("iptables-legacy-save", timeout=5, runner=runner, atomic=True) == (_TORN, [])
    assert runner.calls == 1


def test_undeclared_jumps_per_table() -> None:
    text = (
        "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-A - [0:0]\n[3:4] -A INPUT -m comment --comment \"x\" -g KUBE-B\n"
        "-A INPUT -j KUBE-A\n-A KUBE-A -j DNAT --to-destination 1.2.3.4\n-A KUBE-A -j MARK --set-xmark 0x1/0x1\nCOMMIT\n"
        "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-A\n-A PREROUTING -j lowercase\nCOMMIT\n"
    )
    assert undeclared_jumps(text) == [
        "filter INPUT -> KUBE-B", "nat PREROUTING -> KUBE-A", "nat PREROUTING -> lowercase"
    ]


@pytest.mark.parametrize("fixture", sorted(p.name for p in IPT.iterdir() if p.suffix in (".save", ".restore")))
def test_reference_rulesets_are_consistent(fixture: str) -> None:
    """No false alarm on real rulesets: targets such as DNAT or MARK are not chains."""
    assert undeclared_jumps((IPT / fixture).read_text()) == []


# -- network namespaces -----------------------------------------------------------


def test_enter_missing_netns() -> None:
    with pytest.raises(NotFound) as exc:
        enter_netns(f"kptrace-t-missing-{os.getpid()}")
    assert "not found (ip netns list)" in exc.value.message and exc.value.exit_status == 4
    with pytest.raises(UsageError):
        enter_netns("../etc")


@pytest.mark.root
def test_enter_netns_moves_commands_and_proc_sys(ns: str) -> None:
    require_root_and("sysctl")
    ns_sh(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    add_node_addresses(ns, ["192.0.2.77"], default_route=False)
    code = (
        "import subprocess\n"
        "from pyroute2 import IPRoute\n"
        "before = open('/proc/sys/net/ipv4/ip_forward')\n"
        f"enter_netns({ns!r})\n"
        "with IPRoute() as ipr:\n"
        "    names = sorted(l.get('IFLA_IFNAME') for l in ipr.get_links())\n"
        "child = subprocess.run(['cat', '/proc/sys/net/ipv4/ip_forward'], capture_output=True, text=True).stdout.strip()\n"
        "print(names, open('/proc/sys/net/ipv4/ip_forward').read().strip(), child, before.read().strip())\n"
    )
    host_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    proc = subprocess.run(
        [sys.executable, "-c", "from kptrace.sources.netns import enter_netns\n" + code],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )
    out = proc.stdout.strip()
    names, after, child, before = out.rsplit(" ", 3)
    assert "'node0'" in names and "'lo'" in names
    assert (after, child) == ("1", "1")  # files opened after setns, by us or a child
    assert before == host_forward  # a file opened before keeps the old namespace
