"""The command line as a user meets it: output, exit codes, errors without tracebacks."""

from __future__ import annotations

import pytest

from clirunner import IPT, ROOT, run

TRACE = str(IPT / "TestTracePacket.save")
LB = str(IPT / "TestLoadBalancer.live.save")
V6 = str(IPT / "TestNodePorts_5.live.save")
EXAMPLE = str(ROOT / "examples" / "webapp.save")


def test_version_and_help() -> None:
    r = run("--version")
    assert r.code == 0 and r.out.startswith("kptrace ")
    for cmd in (["--help"], ["svc", "--help"], ["packet", "--help"]):
        r = run(*cmd)
        assert r.code == 0
        assert "Exit codes" in r.out
    assert "Examples" in run("packet", "--help").out


def test_svc_json_for_a_service_with_a_firewall() -> None:
    r = run("svc", "ns1/svc1", "--from", LB, "-o", "json")
    assert r.code == 0, r.err
    data = r.json
    assert data["schema"] == "kptrace.svc/v1"
    assert data["source"]["kind"] == "file"
    (svc,) = data["services"]
    assert svc["service"] == "ns1/svc1" and svc["port"] == "p80" and svc["protocol"] == "TCP"
    assert svc["clusterIPs"] == ["172.30.0.41"] and svc["portNumber"] == 80
    assert svc["loadBalancerIPs"] == ["1.2.3.4", "5.6.7.8"]
    assert svc["nodePort"] == 3001
    assert svc["endpoints"] == [{"address": "10.180.0.1:80", "probability": 1.0, "chain": "KUBE-SEP-SXIVWICOYRO3J4NJ"}]
    assert svc["externalEndpoints"] is None
    assert svc["noEndpoints"] is None


def test_svc_by_address_and_by_port_number() -> None:
    by_ip = run("svc", "172.30.0.41:80", "--from", LB, "-o", "json").json["services"]
    by_num = run("svc", "ns1/svc1:80", "--from", LB, "-o", "json").json["services"]
    assert by_ip == by_num and by_ip[0]["service"] == "ns1/svc1"


def test_svc_external_traffic_policy_local() -> None:
    data = run("svc", "ns1/svc1:p80", "--from", str(IPT / "TestExternalTrafficPolicyLocal.live.save"), "-o", "json").json
    (svc,) = data["services"]
    assert [e["address"] for e in svc["endpoints"]] == ["10.180.0.1:80", "10.180.2.1:80"]
    assert [e["address"] for e in svc["externalEndpoints"]] == ["10.180.2.1:80"]
    assert svc["externalEndpoints"][0]["chain"].startswith("KUBE-SEP-")


def test_svc_without_endpoints_exits_1() -> None:
    r = run("svc", "ns1/svc1", "--from", str(IPT / "TestNoEndpointsReject.live.save"), "-o", "json")
    assert r.code == 1
    (svc,) = r.json["services"]
    assert svc["endpoints"] == [] and svc["noEndpoints"] == "reject"
    tree = run("svc", "ns1/svc1", "--from", str(IPT / "TestNoEndpointsReject.live.save"))
    assert "connection refused" in tree.out and tree.code == 1


def test_svc_ipv6() -> None:
    r = run("svc", "[fd00:172:30::41]:80", "--from", V6, "-o", "json")
    assert r.code == 0
    (svc,) = r.json["services"]
    assert [e["address"] for e in svc["endpoints"]] == ["[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"]


def test_svc_not_found_suggests() -> None:
    r = run("svc", "ns1/svc11", "--from", TRACE, "--lenient")
    assert r.code == 4
    assert "did you mean" in r.err and "ns1/svc1:p80" in r.err
    assert "Traceback" not in r.err


def test_svc_without_comments_by_recomputed_chain_names(tmp_path) -> None:
    import re

    text = (IPT / "TestLoadBalancer.live.save").read_text()
    stripped = tmp_path / "no-comments.save"
    stripped.write_text(re.sub(r' -m comment --comment ("[^"]*"|\S+)', "", text))
    data = run("svc", "ns1/svc1:p80", "--from", str(stripped), "-o", "json").json
    (svc,) = data["services"]
    assert svc["service"] == "ns1/svc1" and svc["endpoints"][0]["address"] == "10.180.0.1:80"


def test_packet_tree_and_exit_codes() -> None:
    ok = run("packet", "--dst", "172.30.0.44:80", "--src", "10.0.0.2", "--from", TRACE, "--lenient", "--local-ip", "192.168.0.2")
    assert ok.code == 0
    assert "2 outcomes" in ok.out and "10.180.0.4:80" in ok.out and "10.180.0.5:80" in ok.out
    drop = run("packet", "--dst", "1.2.3.4:80", "--src", "203.0.113.130", "--from", LB, "--local-ip", "192.168.0.2")
    assert drop.code == 1 and "DROP" in drop.out
    unsure = run("packet", "--dst", "192.168.0.2:3001", "--from", LB)
    assert unsure.code == 5 and "uncertain" in unsure.out


def test_packet_json_schema() -> None:
    r = run("packet", "--dst", "172.30.0.41:80", "--src", "10.180.0.1", "--from", LB, "-o", "json")
    d = r.json
    assert set(d) == {"schema", "source", "packet", "warnings", "assumptions", "outcomes"}
    assert d["packet"] == {"src": "10.180.0.1", "dst": "172.30.0.41", "proto": "tcp", "sport": None, "dport": 80, "origin": "remote"}
    (o,) = d["outcomes"]
    assert o["dnat"] == "10.180.0.1:80" and o["masquerade"] is True and o["service"] == "ns1/svc1:p80"
    assert {"table", "chain", "rule", "line", "action"} <= set(o["hops"][0])
    assert o["hops"][0]["line"] == 40 and o["hops"][0]["table"] == "nat"


def test_origin_local_by_source() -> None:
    d = run("packet", "--dst", "1.2.3.4:80", "--src", "192.168.0.2", "--local-ip", "192.168.0.2", "--from", LB, "-o", "json").json
    assert d["packet"]["origin"] == "local"
    assert d["outcomes"][0]["path"][0] == "nat OUTPUT"
    forced = run("packet", "--dst", "1.2.3.4:80", "--src", "192.168.0.2", "--origin", "remote", "--from", LB, "-o", "json").json
    assert forced["packet"]["origin"] == "remote"


def test_payload_warns_about_added_jumps() -> None:
    d = run("packet", "--dst", "172.30.0.41:80", "--src", "10.0.0.2", "--from", str(IPT / "TestLoadBalancer.restore"), "-o", "json").json
    assert any("standard jump rules" in w for w in d["warnings"])


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["packet", "--dst", "10.0.0.1", "--from", LB], 2, "give IP:PORT"),
        (["packet", "--dst", "nonsense:80", "--from", LB], 2, "is not an IP address"),
        (["packet", "--dst", "fd00::1:80", "--from", V6], 2, "[addr]:port"),
        (["packet", "--dst", "10.0.0.1:80", "--proto", "icmpx", "--from", LB], 2, "is not one of tcp, udp, sctp"),
        (["packet", "--dst", "10.0.0.1:99999", "--from", LB], 2, "port must be"),
        (["packet", "--dst", "10.0.0.1:80", "--from", "/nonexistent/file"], 2, "/nonexistent/file: no such file"),
        (["packet", "--dst", "[fd00::1]:80", "--from", LB], 2, "no IPv6 rules"),
        (["packet", "--dst", "10.0.0.1:80", "--src", "fd00::1", "--from", LB], 2, "different IP families"),
        (["packet", "--from", LB], 2, "Missing option '--dst'"),
        (["svc", "x", "--bogus"], 2, "No such option"),
    ],
)
def test_usage_errors(args: list[str], code: int, message: str) -> None:
    r = run(*args)
    assert r.code == code
    assert message in r.err
    assert "Traceback" not in r.err + r.out


@pytest.mark.parametrize(
    "content,message",
    [
        ("", "empty file"),
        ("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE-SERVICES\n", "not closed with COMMIT"),
        ("-A PREROUTING -j X\n", "rule before any table header"),
        ("\x00\x01garbage", "binary data"),
        ("random words\nmore\n", "not a ruleset kptrace reads"),
        ('*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m comment --comment "x -j ACCEPT\nCOMMIT\n', "unbalanced quote"),
    ],
)
def test_malformed_input(tmp_path, content: str, message: str) -> None:
    f = tmp_path / "bad.save"
    f.write_text(content)
    r = run("packet", "--dst", "10.0.0.1:80", "--from", str(f))
    assert r.code == 2, r.err
    assert message in r.err
    assert str(f) in r.err
    assert "Traceback" not in r.err


def test_parse_error_shows_line_and_caret(tmp_path) -> None:
    f = tmp_path / "caret.save"
    f.write_text('*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -m comment --comment "x -j ACCEPT\nCOMMIT\n')
    r = run("packet", "--dst", "10.0.0.1:80", "--from", str(f))
    lines = r.err.splitlines()
    assert lines[0] == f"kptrace: error: {f}:3: unbalanced quote"
    assert lines[1].strip().startswith("-A PREROUTING")
    assert lines[2].index("^") == lines[1].index('"x')


def test_json_errors_on_stdout() -> None:
    r = run("svc", "nope/nope", "--from", LB, "-o", "json")
    assert r.code == 4
    assert r.json == {"schema": "kptrace.error/v1", "error": r.json["error"], "exit": 4}
    assert "nope/nope" in r.json["error"]


def test_unsupported_modes(tmp_path) -> None:
    ipvs = tmp_path / "ipvs.save"
    ipvs.write_text("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n")
    r = run("svc", "a/b", "--from", str(ipvs))
    assert r.code == 3 and "IPVS mode detected: not supported yet" in r.err
    nft = tmp_path / "k.nft"
    nft.write_text((IPT.parent / "nftables" / "TestClusterIPGeneral.live.nft").read_text())
    r = run("svc", "a/b", "--from", str(nft))
    assert r.code == 3 and "nftables mode detected: not supported yet" in r.err


def test_stdin(monkeypatch) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO((IPT / "TestLoadBalancer.live.save").read_text()))
    r = run("svc", "ns1/svc1", "--from", "-", "-o", "json")
    assert r.code == 0 and r.json["source"]["paths"] == ["<stdin>"]


def test_debug_shows_traceback(tmp_path) -> None:
    f = tmp_path / "bad.save"
    f.write_text("-A X -j Y\n")
    from kptrace.errors import ParseError

    with pytest.raises(ParseError):
        run("packet", "--dst", "10.0.0.1:80", "--from", str(f), "--debug")
