"""Properties that must hold for any input: no traceback, shares sum to 1, loops end."""

from __future__ import annotations

import ipaddress

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clirunner import run
from kptrace.errors import KptraceError
from kptrace.model.packet import Packet
from kptrace.model.state import NodeState, Provenance
from kptrace.parse.iptables_save import parse_all_rules, parse_save
from kptrace.trace.simulate import trace

WORDS = [
    "*nat", "*filter", "*raw", ":PREROUTING", ":FORWARD", ":KUBE-X", "ACCEPT", "DROP", "-", "[0:0]", "COMMIT",
    "-A", "-I", "-N", "-X", "-P", "PREROUTING", "FORWARD", "KUBE-X", "-j", "-g", "-m", "tcp", "comment",
    "--comment", '"', '"a b"', "!", "-s", "-d", "10.0.0.0/8", "--dport", "80", "-p", "statistic",
    "--probability", "0.5", "DNAT", "--to-destination", "10.1.1.1:80", "\\", "\n", " ", "#", "[1:2]",
]

ruleset_like = st.lists(st.sampled_from(WORDS), max_size=60).map(" ".join)


def _load(text: str) -> None:
    for rs in parse_save(text, source="fuzz")[0]:
        parse_all_rules(rs)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), ruleset_like))
def test_parser_raises_only_its_own_errors(text: str) -> None:
    try:
        _load(text)
    except KptraceError:
        pass


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.text(max_size=200), ruleset_like))
def test_cli_never_shows_a_traceback(tmp_path_factory, text: str) -> None:
    f = tmp_path_factory.mktemp("fuzz") / "in.save"
    f.write_text(text, encoding="utf-8", errors="surrogateescape")
    r = run("packet", "--dst", "10.0.0.1:80", "--src", "10.0.0.2", "--from", str(f))
    assert r.code in (0, 1, 2, 3, 5)
    assert "Traceback" not in r.err and "internal error" not in r.err


CHAINS = ["C0", "C1", "C2", "C3"]
MATCHES = ["", "-s 10.0.0.0/8", "! -s 10.0.0.0/8", "-p tcp --dport 80", "-p udp", "-m owner --uid-owner 0",
           "-m mark --mark 0x4000/0x4000", "-m addrtype --dst-type LOCAL"]


@st.composite
def rulesets(draw: st.DrawFn, allow_loops: bool) -> str:
    lines = []
    for i, chain in enumerate(["PREROUTING"] + CHAINS):
        for _ in range(draw(st.integers(0, 4))):
            match = draw(st.sampled_from(MATCHES))
            if draw(st.booleans()):
                match += f" -m statistic --mode random --probability {draw(st.floats(0, 1)):.4f}"
            later = CHAINS if allow_loops else CHAINS[i:]
            target = draw(st.sampled_from(["ACCEPT", "DROP", "RETURN", "MARK --or-mark 0x4000",
                                           "DNAT --to-destination 10.1.0.1:80", *later]))
            lines.append(f"-A {chain} {match} -j {target}")
    decl = ":PREROUTING ACCEPT [0:0]\n" + "".join(f":{c} - [0:0]\n" for c in CHAINS)
    return "*nat\n" + decl + "\n".join(lines) + "\nCOMMIT\n"


def _node(text: str) -> NodeState:
    rulesets_, _ = parse_save(text)
    return NodeState(rulesets_, Provenance("file"), local_ips=frozenset({ipaddress.ip_address("192.168.0.2")}))


@settings(max_examples=200, deadline=None)
@given(rulesets(allow_loops=False), st.sampled_from(["10.0.0.2", "203.0.113.1"]), st.sampled_from(["tcp", "udp"]))
def test_probabilities_sum_to_one(text: str, src: str, proto: str) -> None:
    t = trace(_node(text), Packet(dst=ipaddress.ip_address("172.30.0.1"), dport=80, proto=proto, src=ipaddress.ip_address(src), sport=1234))
    assert abs(sum(o.probability for o in t.outcomes) - 1.0) < 1e-9
    assert all(o.probability >= 0 for o in t.outcomes)


@settings(max_examples=200, deadline=None)
@given(rulesets(allow_loops=True))
def test_jump_loops_terminate(text: str) -> None:
    try:
        t = trace(_node(text), Packet(dst=ipaddress.ip_address("172.30.0.1"), dport=80, src=ipaddress.ip_address("10.0.0.2"), sport=1))
    except KptraceError as exc:
        assert "loop" in exc.message or "paths" in exc.message
    else:
        assert abs(sum(o.probability for o in t.outcomes) - 1.0) < 1e-9
