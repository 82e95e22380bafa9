"""The legacy backend read straight from the kernel (root; real iptables-legacy-restore):
every chain decodes to what iptables-legacy-save prints, a table with a rule kptrace
cannot decode is read with iptables-legacy-save, nothing is created by reading, IPVS mode
is refused, and the command line answers as it does from the saved file."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from _kernel import IPT, ROOT, add_nfacct, add_node_addresses, call_in_netns, chain_texts, fixture_family, load_live_in, ns_sh, require_root_and
from _xtables import FIXTURES, NFACCT, SOURCES, decoded_chains, saved_chains, table_from
from kptrace.errors import UnsupportedMode
from kptrace.generate import render_jumps, render_restore
from kptrace.generate.spec import synthetic_spec

LEGACY = ("iptables-legacy-restore", "iptables-legacy-save", "ip6tables-legacy-restore", "ip6tables-legacy-save")
RESTORE = {4: "iptables-legacy-restore", 6: "ip6tables-legacy-restore"}


def _rulesets() -> dict[str, tuple[int, str, str]]:
    """name -> (family, restore input, ipsets it uses): the fixtures' sources, every reference
    ruleset, and a generated node with kube-proxy's rarer options."""
    out = {}
    for stem, path in SOURCES.items():
        ipsets = path.with_suffix(".ipsets")
        out[stem] = (6 if stem.endswith("-v6") else 4, path.read_text(), ipsets.read_text() if ipsets.exists() else "")
    for path in sorted(IPT.glob("*.live.save")):
        out[path.name] = (fixture_family(path), path.read_text(), "")
    spec = replace(synthetic_spec(200, 4), nfacct=True, kubelet_firewall_jumps=True, random_fully=True,
                   masquerade_mark="0x00004000", large_cluster_threshold=100)
    out["synthetic-options"] = (4, render_restore(spec) + render_jumps(spec), "")
    return out


RULESETS = _rulesets()


def _load(ns: str, family: int, text: str, ipsets: str = "") -> None:
    add_nfacct(ns, *NFACCT)
    if ipsets:
        ns_sh(ns, "ipset", "restore", input=ipsets)
    ns_sh(ns, RESTORE[family], "--noflush", input=text)


@pytest.mark.root
@pytest.mark.parametrize("name", sorted(RULESETS))
def test_every_chain_decodes_as_the_save_prints_it(ns: str, name: str) -> None:
    require_root_and(*LEGACY, "ipset")
    family, text, ipsets = RULESETS[name]
    _load(ns, family, text, ipsets)
    data = call_in_netns(ns, "_xtables.capture", family).value
    tables = {t: table_from(data, t) for t in data["tables"]}
    expected = saved_chains(data["save"])
    assert expected and decoded_chains(tables) == expected
    if name in SOURCES:  # the stored capture still shows what this kernel and iptables print
        stored = json.loads((FIXTURES / f"{name}.json").read_text())
        assert saved_chains(stored["save"]) == expected


def _table_names(ns: str, family: int) -> list[str]:
    path = "/proc/net/ip6_tables_names" if family == 6 else "/proc/net/ip_tables_names"
    return ns_sh(ns, "cat", path, check=False).stdout.split()


@pytest.mark.root
def test_reading_creates_no_table(ns: str) -> None:
    require_root_and(*LEGACY)
    load_live_in(ns)
    assert _table_names(ns, 4) == [] and _table_names(ns, 6) == []
    ns_sh(ns, "iptables-legacy", "-w", "5", "-A", "INPUT", "-s", "198.51.100.0/24", "-j", "DROP")
    state = load_live_in(ns)
    assert _table_names(ns, 4) == ["filter"] and _table_names(ns, 6) == []
    assert state.provenance.backend == "legacy"
    assert chain_texts(state.ruleset_for(4))[("filter", "INPUT")] == ("ACCEPT", ["-A INPUT -s 198.51.100.0/24 -j DROP"])


@pytest.mark.root
def test_a_table_the_decoder_cannot_print_is_read_with_the_save(ns: str) -> None:
    require_root_and(*LEGACY)
    _load(ns, 4, (IPT / "TestClusterIPGeneral.live.save").read_text())
    ns_sh(ns, "iptables-legacy", "-w", "5", "-I", "KUBE-FORWARD", "-m", "limit", "--limit", "5/sec", "-j", "RETURN")
    saved = ns_sh(ns, "iptables-legacy-save").stdout
    assert "-m limit" in saved
    live = load_live_in(ns)
    rs = live.ruleset_for(4)
    assert chain_texts(rs) == {
        (t, c): v for t, chains in saved_chains(saved).items() for c, v in chains.items()
    }
    sources = {t: {r.source for (t2, c) in chain_texts(rs) if t2 == t for r in rs.chain(t, c).rules} for t in ("filter", "nat")}
    # chains decoded before the one with the limit match stay as decoded: the same rules
    assert "iptables-legacy-save -t filter" in sources["filter"]
    assert sources["filter"] <= {"iptables-legacy-save -t filter", "iptables-legacy (kernel table filter)"}
    assert sources["nat"] == {"iptables-legacy (kernel table nat)"}
    assert not [w for w in live.warnings if "changed while" in w]


IPVS_FILTER = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-NODE-PORT - [0:0]
-A INPUT -j KUBE-NODE-PORT
COMMIT
"""
IPVS_NAT = """*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
COMMIT
"""


@pytest.mark.root
@pytest.mark.parametrize("which", ["chain names", "ipset matches"])
def test_ipvs_mode_is_refused(ns: str, which: str) -> None:
    require_root_and(*LEGACY, "ipset")
    if which == "chain names":
        ns_sh(ns, "iptables-legacy-restore", input=IPVS_FILTER)
    else:
        ns_sh(ns, "ipset", "create", "KUBE-CLUSTER-IP", "hash:ip,port")
        ns_sh(ns, "iptables-legacy-restore", input=IPVS_NAT)
    with pytest.raises(UnsupportedMode, match="IPVS mode"):
        load_live_in(ns)


def _kptrace(*args: str) -> subprocess.CompletedProcess[str]:
    """The installed program's way in (kptrace.cli.entry), with its early read."""
    return subprocess.run([sys.executable, "-m", "kptrace", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "COLUMNS": "120",
                                         "PYTHONPATH": str(ROOT)})


@pytest.mark.root
def test_command_line_answers_as_from_the_file(ns: str) -> None:
    require_root_and(*LEGACY)
    fixture = IPT / "TestExternalTrafficPolicyLocal.live.save"
    _load(ns, 4, fixture.read_text())
    flows = json.loads((IPT / "TestExternalTrafficPolicyLocal.flows.json").read_text())
    local = [a for a in flows["localIPs"] if ":" not in a]
    add_node_addresses(ns, flows["nodeIPs"])  # with a default route, as the file assumes
    ns_sh(ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.ip_forward=1")
    for question in (["svc", "ns1/svc1"], ["packet", "--dst", f"{flows['flows'][0]['destIP']}:{flows['flows'][0]['destPort']}",
                                           "--src", flows["flows"][0]["sourceIP"]]):
        ip_args = [x for a in local for x in ("--local-ip", a)]
        live = _kptrace("--netns", ns, *question, *ip_args, "-o", "json")
        saved = _kptrace(*question, *ip_args, "--from", str(fixture), "-o", "json")
        assert live.returncode == saved.returncode, live.stderr
        a, b = json.loads(live.stdout), json.loads(saved.stdout)
        assert a["source"]["kind"] == "live" and a["source"]["backend"] == "legacy"
        for doc in (a, b):
            doc.pop("source"), doc.pop("warnings"), doc.pop("assumptions", None)  # live knows the routes
        strip_lines(a), strip_lines(b)
        assert a == b, question


def strip_lines(doc: object) -> None:
    """Rule line numbers exist in a file only."""
    if isinstance(doc, dict):
        doc.pop("line", None)
        for v in doc.values():
            strip_lines(v)
    elif isinstance(doc, list):
        for v in doc:
            strip_lines(v)


def test_rulesets_cover_both_families() -> None:
    assert {family for family, _, _ in RULESETS.values()} == {4, 6}
    assert Path(SOURCES["zoo-v4"]).exists()
