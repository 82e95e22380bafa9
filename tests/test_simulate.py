"""The simulator on small hand-written rulesets: each test pins one kernel behaviour."""

from __future__ import annotations

import ipaddress

import pytest

from kptrace.model.packet import Packet
from kptrace.model.state import NodeState, Provenance, Route
from kptrace.parse.ipset import parse_ipset_save
from kptrace.parse.iptables_save import parse_save
from kptrace.trace.simulate import JumpLoop, trace

ip = ipaddress.ip_address


def node(nat: str = "", filt: str = "", *, local=("192.168.0.2",), raw: str = "", **kw) -> NodeState:
    text = ""
    for table, body in (("raw", raw), ("nat", nat), ("filter", filt)):
        if body:
            chains = sorted({w.split()[1] for w in body.strip().splitlines() if w.startswith("-A")})
            decl = "".join(f":{c} {'ACCEPT' if c.isupper() and '-' not in c and c in ('PREROUTING','INPUT','OUTPUT','FORWARD','POSTROUTING') else '-'} [0:0]\n" for c in chains)
            text += f"*{table}\n{decl}{body.strip()}\nCOMMIT\n"
    rulesets, warnings = parse_save(text, source="t.save")
    local_ips = frozenset(ip(a) for a in local) if local is not None else None
    return NodeState(rulesets, Provenance("file"), local_ips=local_ips, warnings=warnings, **kw)


def pkt(dst: str, dport: int = 80, src: str | None = "10.0.0.2", **kw) -> Packet:
    return Packet(dst=ip(dst), dport=dport, src=ip(src) if src else None, sport=40000, **kw)


def test_random_shares_follow_kube_proxy_probabilities() -> None:
    n = node(
        """
-A PREROUTING -j SVC
-A SVC -m statistic --mode random --probability 0.3333333333 -j SEP1
-A SVC -m statistic --mode random --probability 0.5000000000 -j SEP2
-A SVC -j SEP3
-A SEP1 -p tcp -j DNAT --to-destination 10.1.0.1:8080
-A SEP2 -p tcp -j DNAT --to-destination 10.1.0.2:8080
-A SEP3 -p tcp -j DNAT --to-destination 10.1.0.3:8080
"""
    )
    t = trace(n, pkt("172.30.0.1"))
    shares = {o.dnat: o.probability for o in t.outcomes}
    assert set(shares) == {"10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"}
    for p in shares.values():
        assert p == pytest.approx(1 / 3, abs=1e-9)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_nth_mode_shares() -> None:
    n = node("-A PREROUTING -m statistic --mode nth --every 4 --packet 0 -j DNAT --to-destination 10.1.0.1\n")
    t = trace(n, pkt("172.30.0.1"))
    assert {o.dnat: o.probability for o in t.outcomes} == {"10.1.0.1:80": 0.25, None: 0.75}


def test_mark_arithmetic_and_masquerade() -> None:
    n = node(
        """
-A PREROUTING -j MARK --set-xmark 0x4000/0x4000
-A PREROUTING -j MARK --or-mark 0x1
-A PREROUTING -j MARK --xor-mark 0x1
-A PREROUTING -j MARK --and-mark 0xffff
-A POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A POSTROUTING -j MASQUERADE
"""
    )
    (o,) = trace(n, pkt("10.9.9.9")).outcomes
    assert o.masquerade and o.mark == 0
    assert [h.action for h in o.hops][:4] == ["MARK mark=0x4000", "MARK mark=0x4001", "MARK mark=0x4000", "MARK mark=0x4000"]


def test_masquerade_is_per_outcome_hairpin() -> None:
    n = node(
        """
-A PREROUTING -j SVC
-A SVC -m statistic --mode random --probability 0.5 -j SEP1
-A SVC -j SEP2
-A SEP1 -s 10.0.0.2/32 -j MARK --or-mark 0x4000
-A SEP1 -p tcp -j DNAT --to-destination 10.0.0.2:80
-A SEP2 -s 10.0.0.3/32 -j MARK --or-mark 0x4000
-A SEP2 -p tcp -j DNAT --to-destination 10.0.0.3:80
-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE
"""
    )
    by = {o.dnat: o.masquerade for o in trace(n, pkt("172.30.0.1")).outcomes}
    assert by == {"10.0.0.2:80": True, "10.0.0.3:80": False}


def test_return_goto_and_policy_drop() -> None:
    n = node(
        filt="""
-A FORWARD -j A
-A A -g B
-A A -j ACCEPT
-A B -p udp -j ACCEPT
-A B -j RETURN
"""
    )
    # goto B then RETURN returns to FORWARD (A's caller), skipping A's ACCEPT: policy applies.
    n.rulesets[0].chain("filter", "FORWARD").policy = "DROP"
    (o,) = trace(n, pkt("10.9.9.9")).outcomes
    assert o.verdict == "drop"
    assert o.hops[-1].action == "policy DROP"
    (u,) = trace(n, pkt("10.9.9.9", proto="udp")).outcomes
    assert u.verdict == "accept"


def test_reject_and_drop_end_the_path() -> None:
    n = node(filt="-A FORWARD -p tcp -d 172.30.0.46/32 --dport 80 -j REJECT --reject-with icmp-port-unreachable\n")
    (o,) = trace(n, pkt("172.30.0.46")).outcomes
    assert o.verdict == "reject" and "REJECT by filter FORWARD" in o.reason


def test_jump_loop_is_reported() -> None:
    n = node(filt="-A FORWARD -j A\n-A A -j B\n-A B -j A\n")
    with pytest.raises(JumpLoop) as exc:
        trace(n, pkt("10.9.9.9"))
    assert "A -> B -> A" in exc.value.message


def test_unknown_match_forks_with_reason() -> None:
    n = node(filt="-A FORWARD -m owner --uid-owner 0 -j DROP\n")
    t = trace(n, pkt("10.9.9.9"))
    assert sorted(o.verdict for o in t.outcomes) == ["accept", "drop"]
    assert all(o.probability == 0.5 for o in t.outcomes)
    assert all("-m owner is not evaluated" in o.uncertain[0] for o in t.outcomes)
    assert t.uncertain


def test_unknown_source_is_uncertain_not_guessed() -> None:
    n = node("-A PREROUTING ! -s 10.0.0.0/8 -j MARK --or-mark 0x4000\n-A POSTROUTING -m mark --mark 0x4000 -j MASQUERADE\n")
    t = trace(n, pkt("172.30.0.1", src=None))
    assert sorted(o.masquerade for o in t.outcomes) == [False, True]
    assert len(t.outcomes) == 2 and all("give --src" in o.uncertain[0] for o in t.outcomes)


def test_addrtype_local_needs_known_addresses() -> None:
    n = node("-A PREROUTING -m addrtype --dst-type LOCAL -j DNAT --to-destination 10.1.0.1\n", local=None)
    t = trace(n, pkt("192.168.0.2"))
    assert len(t.outcomes) == 2 and "give --local-ip" in t.outcomes[0].uncertain[0]
    known = node("-A PREROUTING -m addrtype --dst-type LOCAL -j DNAT --to-destination 10.1.0.1\n")
    (o,) = trace(known, pkt("192.168.0.2")).outcomes
    assert o.dnat == "10.1.0.1:80"


def test_local_packet_to_local_address_loops_back_through_input() -> None:
    n = node(
        nat="-A OUTPUT -j MARK --or-mark 0x1\n",
        filt="-A INPUT -p tcp --dport 30000 -j ACCEPT\n-A INPUT -j DROP\n",
    )
    (o,) = trace(n, pkt("192.168.0.2", 30000, src="192.168.0.2", origin="local")).outcomes
    assert o.verdict == "accept" and o.delivery == "local"
    assert o.path == ("nat OUTPUT", "routing: local (192.168.0.2)", "filter OUTPUT", "nat POSTROUTING", "filter INPUT")
    # the loop back through lo meets filter INPUT, but not nat PREROUTING again
    (d,) = trace(n, pkt("192.168.0.2", 31000, src="192.168.0.2", origin="local")).outcomes
    assert d.verdict == "drop"


def test_notrack_skips_nat() -> None:
    n = node("-A PREROUTING -j DNAT --to-destination 10.1.0.1\n", raw="-A PREROUTING -j NOTRACK\n")
    (o,) = trace(n, pkt("172.30.0.1")).outcomes
    assert o.dnat is None
    assert "nat PREROUTING" not in o.path


def test_dnat_reroutes_to_input_or_forward() -> None:
    n = node("-A PREROUTING -d 172.30.0.1 -j DNAT --to-destination 192.168.0.2:8080\n")
    (o,) = trace(n, pkt("172.30.0.1")).outcomes
    assert o.delivery == "local" and o.dnat == "192.168.0.2:8080"


def test_session_affinity_first_packet_has_no_history() -> None:
    n = node(
        """
-A PREROUTING -j SVC
-A SVC -m recent --name SEP1 --mask 255.255.255.255 --rsource --rcheck --seconds 10800 --reap -j SEP1
-A SVC -m statistic --mode random --probability 0.5 -j SEP1
-A SVC -j SEP2
-A SEP1 -p tcp -m recent --set --name SEP1 --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.1.0.1:80
-A SEP2 -p tcp -m recent --set --name SEP2 --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.1.0.2:80
"""
    )
    t = trace(n, pkt("172.30.0.1"))
    assert {o.dnat: o.probability for o in t.outcomes} == {"10.1.0.1:80": 0.5, "10.1.0.2:80": 0.5}
    assert any("session-affinity" in a for a in t.assumptions)


def test_ipset_membership() -> None:
    n = node("-A PREROUTING -m set --match-set KUBE-CLUSTER-IP dst,dst -j DNAT --to-destination 10.1.0.1\n")
    t = trace(n, pkt("172.30.0.1"))
    assert t.uncertain and "ipset KUBE-CLUSTER-IP is not known" in t.outcomes[0].uncertain[0]
    n.ipsets = parse_ipset_save("create KUBE-CLUSTER-IP hash:ip,port family inet\nadd KUBE-CLUSTER-IP 172.30.0.1,tcp:80\n")
    (o,) = trace(n, pkt("172.30.0.1")).outcomes
    assert o.dnat == "10.1.0.1:80"
    (miss,) = trace(n, pkt("172.30.0.1", 81)).outcomes
    assert miss.dnat is None


def test_routes_decide_forwarding() -> None:
    n = node(filt="-A FORWARD -j ACCEPT\n", routes=(Route(ipaddress.ip_network("10.0.0.0/8"), dev="eth0"),))
    (o,) = trace(n, pkt("172.30.0.1")).outcomes
    assert o.verdict == "drop" and "no route" in o.reason
    assert "filter FORWARD" not in o.path
    (ok,) = trace(n, pkt("10.9.9.9")).outcomes
    assert ok.verdict == "accept"


def test_localhost_nodeport_needs_route_localnet() -> None:
    nat = "-A OUTPUT -d 127.0.0.0/8 -p tcp --dport 3001 -j DNAT --to-destination 10.1.0.1:80\n"
    (o,) = trace(node(nat, sysctls={"net.ipv4.conf.all.route_localnet": "0"}), pkt("127.0.0.1", 3001, src="127.0.0.1", origin="local")).outcomes
    assert o.verdict == "drop" and "route_localnet" in o.reason
    t = trace(node(nat), pkt("127.0.0.1", 3001, src="127.0.0.1", origin="local"))
    assert t.outcomes[0].verdict == "accept"
    assert any("route_localnet=1" in a for a in t.assumptions)


def test_identical_outcomes_merge() -> None:
    n = node("-A PREROUTING -m statistic --mode random --probability 0.5 -j MARK --or-mark 0\n")
    (o,) = trace(n, pkt("10.9.9.9")).outcomes
    assert o.probability == pytest.approx(1.0)


def test_unknown_match_that_changes_nothing_is_not_uncertain() -> None:
    n = node(filt="-A FORWARD -m owner --uid-owner 0 -j LOG --log-prefix x\n")
    (o,) = trace(n, pkt("10.9.9.9")).outcomes
    assert o.probability == 1.0 and o.uncertain == ()


def test_forwarding_disabled_drops_before_forward() -> None:
    n = node(filt="-A FORWARD -j ACCEPT\n", sysctls={"net.ipv4.ip_forward": "0"})
    (o,) = trace(n, pkt("10.9.9.9")).outcomes
    assert o.verdict == "drop" and "ip_forward=0" in o.reason
    assert "filter FORWARD" not in o.path


@pytest.mark.parametrize("src,why", [("0.0.0.0", "0.0.0.0/8"), ("224.0.0.9", "multicast"), ("255.255.255.255", "limited broadcast")])
def test_martian_source_from_another_host_is_dropped_after_prerouting(src: str, why: str) -> None:
    nat = "-A PREROUTING -d 10.96.0.1/32 -p tcp --dport 80 -j DNAT --to-destination 10.1.0.1:80\n"
    (o,) = trace(node(nat, filt="-A FORWARD -j ACCEPT\n"), pkt("10.96.0.1", src=src)).outcomes
    assert o.verdict == "drop" and why in o.reason and "martian" in o.reason
    assert o.dnat is not None and o.dnat.startswith("10.1.0.1")  # PREROUTING ran first
    assert "filter FORWARD" not in o.path


def test_loopback_source_from_another_host_needs_route_localnet() -> None:
    n = node(filt="-A INPUT -j ACCEPT\n", sysctls={"net.ipv4.conf.all.route_localnet": "0"})
    (o,) = trace(n, pkt("192.168.0.2", src="127.0.0.5")).outcomes
    assert o.verdict == "drop" and "loopback" in o.reason
    n = node(filt="-A INPUT -j ACCEPT\n", sysctls={"net.ipv4.conf.all.route_localnet": "1"})
    (o,) = trace(n, pkt("192.168.0.2", src="127.0.0.5")).outcomes
    assert o.verdict == "accept"


def test_dhcp_discover_from_zero_source_is_not_martian() -> None:
    n = node(filt="-A INPUT -p udp --dport 67 -j ACCEPT\n")
    (o,) = trace(n, pkt("255.255.255.255", 67, src="0.0.0.0", proto="udp")).outcomes
    assert o.verdict == "accept" and "martian" not in (o.reason or "")
    assert "filter INPUT" in o.path and "filter FORWARD" not in o.path
