"""``packet --inject`` for a source on another host without ``--src-netns`` (a temporary
namespace and veth joined to the node), the first difference marked when the kernel
leaves the predicted path, and what ``kill -9`` leaves for ``kptrace cleanup``.
Probes only travel between the lab's namespaces and the probe's own.
"""

from __future__ import annotations

import importlib.util
import io
import ipaddress
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from _kernel import call_in_netns, ns_sh, require, require_root_and, sh

from kptrace.lab import NODE_NS
from kptrace.probe import PROBE_COMMENT, PROBE_TABLE
from kptrace.probe.sourcens import LINK_PREFIX, NETNS_PREFIX

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
WEBAPP = "10.103.46.104"
WEBAPP_EPS = {"10.244.120.102:80", "10.244.120.103:80"}
CART_POD_IP = "10.244.120.120"
REMOTE_SRC = "198.18.0.9"  # no lab namespace has it: only a temporary one can send from it


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    require_root_and("iptables-nft-restore", "iptables-nft-save", "nft", "ip", "conntrack", "xtables-monitor")
    require(importlib.util.find_spec("scapy") is not None, "needs scapy (pip install '.[inject]')")
    from kptrace.lab import build
    from kptrace.lab.config import load_config

    try:
        yield build.up(load_config(None), "nft", rebuild=True)
    finally:
        build.down()


def kptrace(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "kptrace", *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
                          check=False)


def probe_leftovers() -> dict[str, list[str]]:
    """What a probe may leave: its namespaces, node-side links, guard table, rules,
    conntrack entries of the remote source, and trace monitors in the node namespace."""
    netns = sorted(n for n in os.listdir("/run/netns") if n.startswith(NETNS_PREFIX)) if os.path.isdir("/run/netns") else []
    links = [line.split(":")[1].strip().split("@")[0] for line in ns_sh(NODE_NS, "ip", "-o", "link", "show").stdout.splitlines()]
    tables = ns_sh(NODE_NS, "nft", "list", "tables").stdout
    rules = ns_sh(NODE_NS, "iptables-nft-save").stdout + ns_sh(NODE_NS, "iptables-legacy-save", check=False).stdout
    ct = ns_sh(NODE_NS, "conntrack", "-L", "-s", REMOTE_SRC, check=False).stdout
    node_ns = os.stat(f"/run/netns/{NODE_NS}").st_ino
    monitors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino != node_ns:
                continue
            with open(f"/proc/{pid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        if "(xtables-monitor)" in stat and stat.rsplit(")", 1)[1].split()[0] != "Z":
            monitors.append(pid)
    return {
        "netns": netns,
        "links": sorted(name for name in links if name.startswith(LINK_PREFIX)),
        "tables": [PROBE_TABLE] if PROBE_TABLE in tables else [],
        "rules": [line for line in rules.splitlines() if PROBE_COMMENT in line],
        "conntrack": [line for line in ct.splitlines() if REMOTE_SRC in line],
        "monitors": monitors,
    }


NOTHING: dict[str, list[str]] = {"netns": [], "links": [], "tables": [], "rules": [], "conntrack": [], "monitors": []}


@pytest.mark.root
def test_remote_source_without_src_netns(lab: dict[str, Any]) -> None:
    r = kptrace("--netns", NODE_NS, "packet", "--dst", f"{WEBAPP}:80", "--src", REMOTE_SRC, "--inject", "-o", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    obs = doc["observed"]
    assert doc["agrees"] and obs["evidence"] == "trace" and obs["temporary_netns"] is True, obs
    assert obs["src_netns"].startswith(NETNS_PREFIX) and obs["dnat"] in WEBAPP_EPS and obs["masquerade"] is True
    assert doc["packet"]["origin"] == "remote" and doc["packet"]["src"] == REMOTE_SRC
    assert any("temporary namespace" in a and "rp_filter" in a for a in doc["assumptions"]), doc["assumptions"]
    # Delivered, from an address of the client's subnet (the node's /32 route to the
    # probe's link wins over its connected /24), through the NodePort.
    r = kptrace("--netns", NODE_NS, "packet", "--dst", "192.168.49.2:31380", "--src", "203.0.113.77", "--inject", "--deliver")
    assert r.returncode == 0, r.stdout + r.stderr
    for text in ("from temporary netns kptrace-probe-", "evidence: the kernel's trace", "the kernel agrees with the prediction",
                 "temporary namespace"):
        assert text in r.stdout, r.stdout
    assert probe_leftovers() == NOTHING


def disagree_child(output: str) -> tuple[int, str]:
    """Predict, then change the node's rules before the probe (a rule in KUBE-SERVICES
    that returns before the Service's): the kernel leaves the predicted path at hop 2."""
    from kptrace.cli.common import Output
    from kptrace.cli.inject import run_inject
    from kptrace.model.packet import Packet
    from kptrace.sources.live import load_live
    from kptrace.trace.simulate import trace

    state = load_live()
    pk = Packet(dst=ipaddress.ip_address(WEBAPP), dport=80, src=ipaddress.ip_address(CART_POD_IP), origin="remote")
    prediction = trace(state, pk)
    rule = ["KUBE-SERVICES", "-d", f"{WEBAPP}/32", "-p", "tcp", "--dport", "80",
            "-m", "comment", "--comment", "kptrace test: changed after the prediction", "-j", "RETURN"]
    subprocess.run(["iptables-nft", "-w", "-t", "nat", "-I", rule[0], "1", *rule[1:]], check=True)
    try:
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = run_inject(state, pk, prediction, src_netns="kptrace-pod-cart-6f7d9-jx5tn", count=1, deliver=False,
                              output=Output(output))
    finally:
        subprocess.run(["iptables-nft", "-w", "-t", "nat", "-D", *rule], check=True)
    return code, buf.getvalue()


@pytest.mark.root
def test_first_difference_marked(lab: dict[str, Any]) -> None:
    code, out = call_in_netns(NODE_NS, "test_inject_remote.disagree_child", "json").value
    doc = json.loads(out)
    diff = doc["observed"]["first_difference"]
    assert code == 6 and doc["agrees"] is False
    assert diff["index"] == 1
    assert diff["predicted"]["chain"] == "KUBE-SERVICES" and "KUBE-SVC-" in diff["predicted"]["rule"]
    assert diff["observed"]["verdict"] == "RETURN" and "changed after the prediction" in diff["observed"]["rule"]
    assert doc["observed"]["dnat"] is None and doc["observed"]["verdict"] == "accept"
    os.environ["COLUMNS"] = "220"
    try:
        code, out = call_in_netns(NODE_NS, "test_inject_remote.disagree_child", "tree").value
    finally:
        del os.environ["COLUMNS"]
    assert code == 6
    marked = [line for line in out.splitlines() if "first difference" in line]
    assert len(marked) == 1 and "KUBE-SERVICES" in marked[0] and "RETURN" in marked[0], out
    assert "the kernel DISAGREES with the prediction" in out


KILL_CHILD = """
import sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from kptrace.sources.netns import enter_netns
enter_netns({node!r})
from kptrace.probe import send
def stalled(self, data, dst):
    print("sent", flush=True)
    time.sleep(30)
send.RawSender.send = stalled
from test_inject import inject_child
inject_child({dst!r}, 80, {src!r}, "remote", None, 1, False)
"""


@pytest.mark.root
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_mid_inject(lab: dict[str, Any], sig: signal.Signals) -> None:
    """Killed while the probe is out (temporary namespace, guard and trace monitor all
    up): SIGTERM cleans up by itself; after SIGKILL, ``kptrace cleanup`` does."""
    code = KILL_CHILD.format(root=str(ROOT), tests=str(TESTS), node=NODE_NS, dst=WEBAPP, src=REMOTE_SRC)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
        during = probe_leftovers()
        assert during["netns"] == [f"{NETNS_PREFIX}{proc.pid}"] and during["tables"] == [PROBE_TABLE], during
        assert during["links"] == [f"{LINK_PREFIX}{proc.pid:x}"] and len(during["monitors"]) == 1, during
        proc.send_signal(sig)
        assert proc.wait(timeout=10) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig == signal.SIGKILL:
        left = probe_leftovers()
        assert left["netns"] and left["tables"], left  # what cleanup is for
        r = kptrace("--netns", NODE_NS, "cleanup")
        assert r.returncode == 0, r.stderr
        assert f"network namespace {NETNS_PREFIX}{proc.pid}" in r.stdout and f"inet {PROBE_TABLE}" in r.stdout, r.stdout
    left = probe_leftovers()
    for _ in range(100):  # the monitor gets SIGTERM from the kernel when its parent dies
        if not left["monitors"]:
            break
        sh("sleep", "0.02")
        left = probe_leftovers()
    assert left == NOTHING
    assert "nothing to remove" in kptrace("--netns", NODE_NS, "cleanup").stdout


@pytest.mark.root
@pytest.mark.parametrize("src", ["224.0.0.9", "0.0.0.0"])
def test_martian_source_is_dropped_by_routing_as_predicted(lab: dict[str, Any], src: str) -> None:
    """The kernel runs nat PREROUTING (DNAT included), then its routing drops the packet
    with no rule: the prediction says so, and the trace agrees."""
    r = kptrace("--netns", NODE_NS, "packet", "--dst", f"{WEBAPP}:80", "--src", src, "--inject", "-o", "json")
    assert r.returncode == 1, r.stdout + r.stderr  # dropped, and the kernel agrees (not 6)
    doc = json.loads(r.stdout)
    assert doc["agrees"] and doc["observed"]["verdict"] is None and doc["observed"]["dnat"] in WEBAPP_EPS
    assert all(o["verdict"] == "drop" and "martian source" in o["reason"] for o in doc["outcomes"])
    assert probe_leftovers() == NOTHING
