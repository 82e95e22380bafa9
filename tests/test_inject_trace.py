"""The kernel-trace parser, on ``xtables-monitor --trace`` output captured in the lab
(tests/fixtures/trace/: one probe each, sent with the probe's own nftrace chains)."""

from __future__ import annotations

import re
from pathlib import Path

from kptrace.probe import PROBE_TABLE
from kptrace.probe.inject import _first_difference
from kptrace.probe.trace import parse

TRACES = Path(__file__).parent / "fixtures" / "trace"


def load(name: str) -> tuple[str, int]:
    """A capture and its probe's source port (the probe's IP id is its port)."""
    text = (TRACES / f"{name}.txt").read_text()
    m = re.search(r"\bID=(\d+) (?:DF )?SPORT=(\d+)", text)
    assert m and m.group(1) == m.group(2)
    return text, int(m.group(2))


def one(name: str):
    text, sport = load(name)
    traced = parse(text, {sport}, {sport: sport})
    assert list(traced) == [sport]
    return traced[sport]


def test_nodeport_from_client_every_rule_in_order() -> None:
    pt = one("nodeport-from-client-drop")
    assert pt.ended
    assert [(h.table, h.chain, h.verdict) for h in pt.hops] == [
        ("nat", "PREROUTING", "JUMP"), ("nat", "KUBE-SERVICES", "JUMP"), ("nat", "KUBE-NODEPORTS", "JUMP"),
        ("nat", "KUBE-EXT-VQTVIFOUPSLQKFZ4", "JUMP"), ("nat", "KUBE-MARK-MASQ", "CONTINUE"),
        ("nat", "KUBE-EXT-VQTVIFOUPSLQKFZ4", "JUMP"), ("nat", "KUBE-SVC-VQTVIFOUPSLQKFZ4", "JUMP"),
        ("nat", "KUBE-SEP-VQM2ZH22MUV3ACJS", "ACCEPT"),
        ("filter", "FORWARD", "JUMP"), ("filter", "FORWARD", "JUMP"), ("filter", "KUBE-FORWARD", "ACCEPT"),
        ("nat", "POSTROUTING", "JUMP"), ("nat", "KUBE-POSTROUTING", "CONTINUE"), ("nat", "KUBE-POSTROUTING", "ACCEPT"),
    ]
    # The rule text is iptables-save's, so it maps onto a predicted hop as it is.
    assert pt.hops[0].rule == '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    assert pt.hops[0].target == "KUBE-SERVICES"
    assert pt.hops[7].rule.endswith("-j DNAT --to-destination 10.244.120.103:80")
    # It ends in the guard: dropped after the last decision, on postrouting.
    last = pt.events[-1]
    assert last.table == PROBE_TABLE and (last.chain, last.kind, last.verdict) == ("post", "rule", "DROP")
    assert pt.interfaces[0] == ("kptr-client", None) and ("kptr-client", "kptr-p1") in pt.interfaces


def test_masqueraded_port_keeps_the_owner() -> None:
    """After MASQUERADE --random-fully the guard sees another source port; the trace id
    still ties its event to the probe."""
    text, sport = load("clusterip-from-node-drop")
    assert f"SPORT={sport} " in text and re.search(rf"SPORT=(?!{sport} )\d+ DPORT=80 SYN \n TRACE: 1 \S+ kptrace_probe:post", text)
    pt = one("clusterip-from-node-drop")
    assert pt.ended and pt.events[-1].chain == "post" and pt.events[-1].verdict == "DROP"
    assert pt.hops[0].rule.startswith("-A OUTPUT ")
    assert (pt.hops[9].table, pt.hops[9].rule) == ("filter", ":OUTPUT ACCEPT")  # a policy: ":CHAIN POLICY"


def test_reject_is_a_drop_verdict_of_the_reject_rule() -> None:
    pt = one("noendpoints-reject-from-pod")
    assert pt.ended
    last = pt.events[-1]
    assert (last.table, last.chain, last.verdict) == ("filter", "KUBE-SERVICES", "DROP")
    assert "-j REJECT" in last.rule


def test_numeric_return_verdict() -> None:
    pt = one("clusterip-from-pod-deliver")
    ret = [h for h in pt.hops if h.rule.endswith("-j RETURN")]
    assert len(ret) == 1 and ret[0].verdict == "RETURN"


def test_later_packets_of_the_connection_are_not_the_probe() -> None:
    """With --deliver the sender's kernel answers the SYN-ACK with a RST of the same
    ports (IP id 0): its trace must not be mixed into the probe's."""
    text, sport = load("clusterip-from-pod-deliver")
    assert "RST" in text
    pt = one("clusterip-from-pod-deliver")
    assert pt.ended and pt.events[-1].chain == "post" and pt.events[-1].verdict == "ACCEPT"
    assert not any("RELATED,ESTABLISHED" in e.rule for e in pt.events)
    # Without the IP id, the final verdict still closes the probe's trace.
    assert parse(text, {sport})[sport].events == pt.events


def test_udp_and_local_delivery_shapes() -> None:
    udp = one("dns-udp-from-pod-deliver")
    assert udp.ended and any("-j DNAT --to-destination 10.244.120.65:53" in h.rule for h in udp.hops)
    local = one("nodeport-from-node-local")
    assert local.ended and local.hops[0].rule.startswith("-A OUTPUT ")


def test_two_probes_interleaved() -> None:
    """Events are given to probes by trace id, whatever the interleaving."""
    a_text, a = load("nodeport-from-client-drop")
    b_text, b = load("lb-local-from-client-deliver")
    a_lines, b_lines = a_text.splitlines(), b_text.splitlines()
    mixed = []
    for i in range(max(len(a_lines), len(b_lines))):
        mixed += a_lines[i:i + 1] + b_lines[i:i + 1]
    both = parse("\n".join(mixed), {a, b}, {a: a, b: b})
    assert both[a].events == one("nodeport-from-client-drop").events
    assert both[b].events == one("lb-local-from-client-deliver").events


def test_other_packets_and_noise_are_ignored() -> None:
    text, sport = load("nodeport-from-client-drop")
    assert parse(text, {sport + 1}) == {}
    assert parse("garbage\n TRACE: 2 deadbeef nat:X:rule:0x1:ACCEPT  -4 -t nat -A X -j ACCEPT\n", {sport}) == {}
    assert parse("", {sport}) == {}


def test_first_difference() -> None:
    a, b, c = ("nat", "X", "-A X -j A"), ("nat", "X", "-A X -j B"), ("nat", "Y", "-A Y -j C")
    assert _first_difference([a, b], [a, b]) is None
    assert _first_difference([a, b], [a, c]) == 1
    assert _first_difference([a, b], [a]) == 1
    assert _first_difference([a], [a, b]) == 1
    assert _first_difference([], [a]) == 0
