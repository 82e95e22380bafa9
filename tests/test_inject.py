"""``packet --inject``: real probes through the lab's node agree with the prediction, and
leave nothing behind. Probes are only sent between the lab's own namespaces (or inside a
throwaway one). Kernel tests need root: they skip without it, and fail in CI (CI=true).
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _kernel import call_in_netns, netns, ns_sh, require_root_and
from kptrace.errors import UsageError
from kptrace.lab import CLIENT_NS, NODE_NS
from kptrace.probe import PROBE_COMMENT, PROBE_TABLE
from kptrace.probe.stats import binomial_bounds

ROOT = Path(__file__).resolve().parent.parent
WEBAPP = "10.103.46.104"
WEBAPP_EPS = {"10.244.120.102:80", "10.244.120.103:80"}
NODE_IP = "192.168.49.2"
CLIENT_IP = "203.0.113.10"
CART_POD_NS = "kptrace-pod-cart-6f7d9-jx5tn"
CART_POD_IP = "10.244.120.120"
ORDERS = "10.108.31.7"
CART = "10.99.142.23"


# -- without privileges --------------------------------------------------------------


def test_binomial_bounds() -> None:
    assert binomial_bounds(200, 0.5) == (77, 123)  # about 0.5*200 ± 3.29 sd
    assert binomial_bounds(200, 1.0) == (200, 200)
    assert binomial_bounds(200, 0.0) == (0, 0)
    lo, hi = binomial_bounds(10000, 0.25)  # large N: no float overflow
    assert lo < 2500 < hi and hi - lo < 300


def test_src_netns_with_a_node_source_is_refused() -> None:
    """--src-netns sends from outside the node: a node address as --src contradicts it.
    (A remote source without --src-netns gets a temporary namespace: test_inject_remote.)"""
    from kptrace.cli.common import Output, load_state
    from kptrace.cli.inject import run_inject
    from kptrace.model.packet import Packet
    from kptrace.trace.simulate import trace

    state = load_state([str(ROOT / "examples" / "webapp.save")], ["192.168.49.2"])
    pk = Packet(dst=ipaddress.ip_address(WEBAPP), dport=80, src=ipaddress.ip_address("192.168.49.2"), origin="local")
    with pytest.raises(UsageError, match="--src-netns"):
        run_inject(state, pk, trace(state, pk), src_netns="kptrace-client", count=1, deliver=False, output=Output.json)


def test_remote_source_equal_to_destination_is_refused() -> None:
    from kptrace.cli.common import Output, load_state
    from kptrace.cli.inject import run_inject
    from kptrace.model.packet import Packet
    from kptrace.trace.simulate import trace

    state = load_state([str(ROOT / "examples" / "webapp.save")], ["192.168.49.2"])
    pk = Packet(dst=ipaddress.ip_address(WEBAPP), dport=80, src=ipaddress.ip_address(WEBAPP), origin="remote")
    with pytest.raises(UsageError, match="deliver the probe to itself"):
        run_inject(state, pk, trace(state, pk), src_netns=None, count=1, deliver=False, output=Output.json)


# -- in the lab ------------------------------------------------------------------------


def inject_child(
    dst: str, dport: int, src: str | None, origin: str, src_netns: str | None, count: int, deliver: bool, output: str = "json",
    proto: str = "tcp",
) -> int:
    """Runs in a child that entered the node namespace (as ``kptrace --netns``)."""
    from kptrace.cli.common import Output
    from kptrace.cli.inject import run_inject
    from kptrace.model.packet import Packet
    from kptrace.sources.live import load_live
    from kptrace.trace.simulate import trace

    state = load_live()
    pk = Packet(
        proto=proto,
        dst=ipaddress.ip_address(dst), dport=dport, src=ipaddress.ip_address(src) if src else None, origin=origin  # type: ignore[arg-type]
    )
    return run_inject(state, pk, trace(state, pk), src_netns=src_netns, count=count, deliver=deliver, output=Output(output))


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    require_root_and("iptables-nft-restore", "iptables-nft-save", "nft", "ip", "conntrack")
    pytest.importorskip("scapy")
    from kptrace.lab import build
    from kptrace.lab.config import load_config

    try:
        yield build.up(load_config(None), "nft", rebuild=True)
    finally:
        build.down()


SPORTS: list[int] = []


@pytest.fixture
def clean(lab: dict[str, Any]) -> Iterator[None]:
    """After every test: no guard table, no probe rule, no conntrack entry of a probe."""
    SPORTS.clear()
    yield
    assert ns_sh(NODE_NS, "nft", "list", "table", "inet", PROBE_TABLE, check=False).returncode != 0
    assert PROBE_COMMENT not in ns_sh(NODE_NS, "iptables-nft-save").stdout
    listed = ns_sh(NODE_NS, "conntrack", "-L", check=False).stdout
    ports = {int(p) for p in re.findall(r"\bsport=(\d+)", listed)}
    assert not ports & set(SPORTS), "a probe left a conntrack entry"


def inject(
    dst: str, dport: int, src: str | None, origin: str, src_netns: str | None, count: int = 1, deliver: bool = False, proto: str = "tcp"
) -> tuple[int, dict]:
    res = call_in_netns(NODE_NS, "test_inject.inject_child", dst, dport, src, origin, src_netns, count, deliver, "json", proto)
    doc = json.loads(res.stdout)
    if count == 1:
        SPORTS.append(doc["observed"]["sport"])
    return res.value, doc


@pytest.mark.root
@pytest.mark.parametrize("deliver", [False, True], ids=["drop", "deliver"])
def test_clusterip_from_pod(clean: None, deliver: bool) -> None:
    code, doc = inject(WEBAPP, 80, CART_POD_IP, "remote", CART_POD_NS, deliver=deliver)
    obs = doc["observed"]
    assert doc["agrees"] and code == 0, obs
    assert obs["verdict"] == "accept" and obs["delivery"] == "forward"
    assert obs["dnat"] in WEBAPP_EPS and obs["masquerade"] is False
    assert any(h["chain"].startswith("KUBE-SEP-") and h["predicted"] for h in obs["hops"])
    if deliver:
        assert [e["reply_src"] for e in obs["conntrack"]] == [obs["dnat"]]
    else:
        assert obs["conntrack"] == []


@pytest.mark.root
@pytest.mark.parametrize("deliver", [False, True], ids=["drop", "deliver"])
def test_nodeport_from_client(clean: None, deliver: bool) -> None:
    code, doc = inject(NODE_IP, 31380, CLIENT_IP, "remote", CLIENT_NS, deliver=deliver)
    obs = doc["observed"]
    assert doc["agrees"] and code == 0, obs
    assert obs["dnat"] in WEBAPP_EPS and obs["masquerade"] is True
    if deliver:
        assert obs["conntrack"][0]["snat"] is True and obs["conntrack"][0]["reply_dst"].startswith(NODE_IP + ":")


@pytest.mark.root
@pytest.mark.parametrize("deliver", [False, True], ids=["drop", "deliver"])
def test_udp_dns_from_pod(clean: None, deliver: bool) -> None:
    code, doc = inject("10.96.0.10", 53, CART_POD_IP, "remote", CART_POD_NS, deliver=deliver, proto="udp")
    assert doc["agrees"] and code == 0, doc["observed"]
    assert doc["observed"]["dnat"] in {"10.244.120.65:53", "10.244.205.2:53"}


@pytest.mark.root
def test_from_the_node_itself(clean: None) -> None:
    """No --src-netns: a raw socket in the node namespace, the OUTPUT path."""
    code, doc = inject(WEBAPP, 80, None, "local", None)
    assert doc["agrees"] and code == 0, doc["observed"]
    assert doc["packet"]["origin"] == "local" and doc["observed"]["dnat"] in WEBAPP_EPS


@pytest.mark.root
def test_side_by_side_view(clean: None) -> None:
    res = call_in_netns(NODE_NS, "test_inject.inject_child", NODE_IP, 31380, CLIENT_IP, "remote", CLIENT_NS, 1, False, "tree")
    assert res.value == 0
    for text in ("predicted", "observed (kernel trace)", "KUBE-NODEPORTS", "= JUMP", "evidence: the kernel's trace",
                 "the kernel agrees with the prediction"):
        assert text in res.stdout, res.stdout


@pytest.mark.root
def test_no_endpoints_reject(clean: None) -> None:
    code, doc = inject(ORDERS, 8080, CART_POD_IP, "remote", CART_POD_NS)
    assert [o["verdict"] for o in doc["outcomes"]] == ["reject"]
    assert doc["observed"]["verdict"] == "reject" and doc["agrees"] and code == 1


@pytest.mark.root
def test_two_endpoint_split(clean: None) -> None:
    code, doc = inject(WEBAPP, 80, CART_POD_IP, "remote", CART_POD_NS, count=200)
    counts = doc["observed"]["counts"]
    assert set(counts) <= WEBAPP_EPS and sum(counts.values()) == 200
    lo, hi = binomial_bounds(200, 0.5)
    assert all(lo <= n <= hi for n in counts.values()), counts
    assert doc["agrees"] and code == 0


@pytest.mark.root
def test_affinity_entry_forgotten(clean: None) -> None:
    """cart has session affinity: the probe source's -m recent entry is removed again."""
    code, doc = inject(CART, 80, CLIENT_IP, "remote", CLIENT_NS, deliver=True)
    assert doc["agrees"] and code == 0, doc["observed"]
    listing = ns_sh(NODE_NS, "sh", "-c", "cat /proc/net/xt_recent/*").stdout
    assert f"src={CLIENT_IP} " not in listing


@pytest.mark.root
def test_sigterm_cleans_up(lab: dict[str, Any]) -> None:
    """Killed (SIGTERM) while the probe is out, the guard table is still removed."""
    code = f"""
import sys, time
sys.path[:0] = [{str(ROOT)!r}, {str(Path(__file__).parent)!r}]
from kptrace.sources.netns import enter_netns
enter_netns({NODE_NS!r})
from kptrace.probe import send
def stalled(self, data, dst):
    print("sent", flush=True)
    time.sleep(30)
send.RawSender.send = stalled
from test_inject import inject_child
inject_child({WEBAPP!r}, 80, {CLIENT_IP!r}, "remote", {CLIENT_NS!r}, 1, False)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "sent"
        assert ns_sh(NODE_NS, "nft", "list", "table", "inet", PROBE_TABLE, check=False).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert ns_sh(NODE_NS, "nft", "list", "table", "inet", PROBE_TABLE, check=False).returncode != 0


@pytest.mark.root
def test_cleanup_removes_leftovers() -> None:
    require_root_and("nft", "iptables-nft")
    with netns("probe") as ns:
        ns_sh(ns, "nft", "add", "table", "inet", PROBE_TABLE)
        ns_sh(ns, "iptables-nft", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "9",
              "-m", "comment", "--comment", PROBE_COMMENT, "-j", "TRACE")
        ns_sh(ns, "iptables-nft", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "ACCEPT")
        removed = call_in_netns(ns, "kptrace.probe.cleanup.cleanup").value
        assert any(PROBE_TABLE in r for r in removed) and any(PROBE_COMMENT in r for r in removed)
        assert ns_sh(ns, "nft", "list", "table", "inet", PROBE_TABLE, check=False).returncode != 0
        saved = ns_sh(ns, "iptables-nft-save", "-t", "raw").stdout
        assert PROBE_COMMENT not in saved and "--dport 9 -j ACCEPT" in saved  # other rules stay
        assert call_in_netns(ns, "kptrace.probe.cleanup.cleanup").value == []


@pytest.mark.root
def test_cli_inject_and_cleanup(clean: None) -> None:
    """The command line end to end: JSON with observed and agrees, exit 0, nothing left."""
    args = ["--netns", "kptrace-node", "packet", "--dst", "192.168.49.2:31380", "--inject",
            "--src-netns", "kptrace-client", "--count", "20", "-o", "json"]
    r = subprocess.run([sys.executable, "-m", "kptrace", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["agrees"] is True
    assert set(data["observed"]["counts"]) <= {"10.244.120.102:80", "10.244.120.103:80"}
    assert sum(data["observed"]["counts"].values()) == 20
    r = subprocess.run([sys.executable, "-m", "kptrace", "--netns", "kptrace-node", "cleanup"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "nothing to remove" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "kptrace", "packet", "--dst", "10.0.0.1:80", "--count", "3",
                          "--from", "examples/webapp.save"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "go with --inject" in bad.stderr
