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
from kptrace.trace import simulate
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


@pytest.mark.parametrize("flows", sorted(IPT.glob("*.flows.json")), ids=lambda p: p.name)
def test_prefilter_changes_no_answer(flows, monkeypatch) -> None:
    data = json.loads(flows.read_text())
    rulesets, _ = parse_save((IPT / data["dump"]).read_text(), lenient=True)
    node = NodeState(rulesets, Provenance("file"), local_ips=frozenset(ipaddress.ip_address(i) for i in data["localIPs"]))
    for flow in data["flows"]:
        src = ipaddress.ip_address(flow["sourceIP"])
        for dport in (flow["destPort"], 3001, 9):
            pk = Packet(dst=ipaddress.ip_address(flow["destIP"]), dport=dport, proto=flow["protocol"].lower(), src=src, sport=1,
                        origin="local" if node.is_local(src) else "remote")
            with_filter = _outcomes(node, pk)
            monkeypatch.setattr(simulate, "cannot_match", lambda *_: False)
            without = _outcomes(node, pk)
            monkeypatch.undo()
            assert with_filter == without


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
