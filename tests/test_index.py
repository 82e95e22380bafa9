"""The fast paths give the same answers as reading everything.

- the block indexer equals the line-by-line indexer (chains, rules, line numbers);
- a Service catalog that parses only the rules a target can concern equals a full one;
- the simulator's text prefilter never skips a rule that would match;
- commands that do not need them import no heavy library.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from clirunner import IPT, ROOT
from kptrace.generate import render_restore, render_save, synthetic_spec
from kptrace.kube.catalog import Catalog
from kptrace.kube.describe import describe
from kptrace.model.packet import Packet
from kptrace.model.state import NodeState, Provenance
from kptrace.parse.iptables_save import _index_fast, parse_save
from kptrace.trace import prefilter, simulate
from kptrace.trace.simulate import trace


def _texts() -> list[tuple[str, str]]:
    out = [(p.name, p.read_text()) for p in sorted(IPT.glob("*.save")) + sorted(IPT.glob("*.restore"))]
    out.append(("webapp.save", (ROOT / "examples" / "webapp.save").read_text()))
    spec = synthetic_spec(60, 4, seed=7)
    out += [("generated.save", render_save(spec)), ("generated.restore", render_restore(spec))]
    return out


TEXTS = _texts()


def _dump(rulesets) -> list:
    return [
        (table, name, c.policy, c.line, [(r.line, r.raw) for r in c.rules])
        for rs in rulesets
        for table in rs.tables
        for name in rs.chain_names(table)
        for c in [rs.chain(table, name)]
    ]


@pytest.mark.parametrize("name,text", TEXTS, ids=[n for n, _ in TEXTS])
def test_block_index_equals_line_index(name: str, text: str) -> None:
    assert _index_fast(text, lenient=True) is not None, "the fast path should take this file"
    fast, _ = parse_save(text, lenient=True)
    slow, _ = parse_save(text, lenient=True, fast=False)
    assert _dump(fast) == _dump(slow)


@pytest.mark.parametrize("text", [
    "*nat\n:A - [0:0]\n-A A -j RETURN\n:B - [0:0]\n-A B -j A\nCOMMIT\n",  # a declaration after rules
    "*nat\n:A - [0:0]\n[1:2] -A A -j RETURN\nCOMMIT\n",  # counters
    "*nat\n:A - [0:0]\n-A A -j RETURN\nCOMMIT\n-A A -j RETURN\n",  # a rule after COMMIT
    "*nat\n:A - [0:0]\nCOMMIT\nstray\n*filter\nCOMMIT\n",  # a stray line between tables
    "*nat\n:A - [0:0]\n-A A -j RETURN\n-A A -j RETURN extra\nbad line\nCOMMIT\n",
])
def test_layouts_the_fast_index_does_not_take(text: str) -> None:
    assert _index_fast(text, lenient=False) is None


def test_unusual_input_falls_back_to_line_index() -> None:
    text = "*nat\n:X - [0:0]\n-N Y\n-A X -j Y\n-I X 1 -j RETURN\nCOMMIT\n"
    assert _index_fast(text, lenient=False) is None
    (rs,), _ = parse_save(text)
    assert [r.raw for r in rs.chain("nat", "X").rules] == ["-I X 1 -j RETURN", "-A X -j Y"]


@pytest.mark.parametrize("name,text", [t for t in TEXTS if t[0].endswith(".save")], ids=[n for n, _ in TEXTS if n.endswith(".save")])
def test_filtered_catalog_equals_full_catalog(name: str, text: str) -> None:
    for rs in parse_save(text, lenient=True)[0]:
        full = Catalog(rs)
        for sp in list(full.ports.values()):
            targets = [sp.name] if sp.name else []
            targets += [e.address for e in sp.entries if not e.kind.startswith("node-port") and not e.address.startswith("?")]
            for target in targets:
                expected = {(p.key, p.name) for p in full.find(target)}
                got = Catalog.for_target(rs, target).find(target)
                assert {(p.key, p.name) for p in got} == expected, target
                for p in got:
                    a, b = describe(rs, p), describe(rs, full.ports[p.key])
                    assert (a.endpoints, a.external_endpoints, a.no_endpoints, a.external_no_endpoints) == (
                        b.endpoints, b.external_endpoints, b.no_endpoints, b.external_no_endpoints
                    )
                    assert sorted(e.address for e in p.entries) == sorted(e.address for e in full.ports[p.key].entries)


def _outcomes(node: NodeState, packet: Packet) -> list:
    return sorted((o.verdict, o.dnat, o.masquerade, round(o.probability, 9), tuple(h.rule for h in o.hops)) for o in trace(node, packet).outcomes)


class _NoScan:
    """A prefilter that rules nothing out: every rule is parsed and evaluated."""

    def __init__(self, chain) -> None:
        pass

    def candidates(self, dst):
        return None

    def cannot_match(self, i, dst, dport) -> bool:
        return False


def _fresh(text: str, local_ips: frozenset) -> NodeState:
    rulesets, _ = parse_save(text, lenient=True)  # a new parse: no scan cached on its chains
    return NodeState(rulesets, Provenance("file"), local_ips=local_ips)


def _compare_prefilter(text: str, packets: list[Packet], local_ips: frozenset, monkeypatch) -> None:
    """The answers with the prefilter (per-rule checks, and the destination index forced
    onto every chain) equal the answers with every rule evaluated."""
    for pk in packets:
        node = _fresh(text, local_ips)
        with_filter = _outcomes(node, pk)
        monkeypatch.setattr(prefilter, "MIN_INDEXED_RULES", 0)
        node = _fresh(text, local_ips)
        indexed = _outcomes(node, pk)
        monkeypatch.setattr(simulate, "scan_of", _NoScan)
        node = _fresh(text, local_ips)
        without = _outcomes(node, pk)
        monkeypatch.undo()
        assert with_filter == indexed == without, pk


@pytest.mark.parametrize("flows", sorted(IPT.glob("*.flows.json")), ids=lambda p: p.name)
def test_prefilter_changes_no_answer(flows, monkeypatch) -> None:
    data = json.loads(flows.read_text())
    text = (IPT / data["dump"]).read_text()
    local_ips = frozenset(ipaddress.ip_address(i) for i in data["localIPs"])
    packets = []
    for flow in data["flows"]:
        src = ipaddress.ip_address(flow["sourceIP"])
        for dport in (flow["destPort"], 3001, 9):
            packets.append(Packet(dst=ipaddress.ip_address(flow["destIP"]), dport=dport, proto=flow["protocol"].lower(),
                                  src=src, sport=1, origin="local" if src in local_ips else "remote"))
    _compare_prefilter(text, packets, local_ips, monkeypatch)


def test_destination_index_changes_no_answer_on_a_large_ruleset(monkeypatch) -> None:
    """A generated node big enough for the index to apply on its own (KUBE-SERVICES over
    MIN_INDEXED_RULES rules), asked about every kind of address it has."""
    spec = synthetic_spec(300, 3, seed=11)
    text = render_save(spec)
    (rs,), _ = parse_save(text)
    scan = prefilter.scan_of(rs.chain("nat", "KUBE-SERVICES"))
    assert scan.candidates(ipaddress.ip_address("192.0.2.1")) is not None, "the index should apply"
    packets = []
    for svc in spec.services[:40]:
        for ip in svc.cluster_ips[:1]:
            for port in svc.ports[:1]:
                packets.append(Packet(dst=ipaddress.ip_address(ip), dport=port.port, proto=port.protocol.lower(),
                                      src=ipaddress.ip_address("10.244.99.7"), sport=1, origin="remote"))
    packets.append(Packet(dst=ipaddress.ip_address("192.0.2.1"), dport=80, proto="tcp",
                          src=ipaddress.ip_address("10.244.99.7"), sport=1, origin="remote"))
    _compare_prefilter(text, packets, frozenset(), monkeypatch)


def test_help_and_file_commands_import_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from kptrace.cli.app import main\n"
        "for args in (['--help'], ['svc', 'default/webapp', '--from', 'examples/webapp.save', '-o', 'json'],"
        " ['packet', '--dst', '10.103.46.104:80', '--from', 'examples/webapp.save', '-o', 'json']):\n"
        "    main(args)\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'scapy', 'kubernetes', 'pyroute2'})\n"
        "sys.stderr.write('HEAVY=' + ','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "HEAVY=" in r.stderr
    assert r.stderr.rsplit("HEAVY=", 1)[1].strip() == ""
