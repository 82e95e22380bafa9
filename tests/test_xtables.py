"""The legacy table decoder on blobs captured from a kernel (tests/fixtures/xtables):
every chain decodes to exactly what iptables-legacy-save printed for the same table."""

from __future__ import annotations

import base64
import json
import socket
import struct

import pytest

from _xtables import FIXTURES, decoded_chains, extensions, saved_chains, table_from
from kptrace.cli.entry import live_question
from kptrace.parse.xt_extensions import Undecodable, ip6, prefix_len, save_string
from kptrace.parse.xtables import ERROR_HEADER, XtTable

CAPTURES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load(stem: str) -> tuple[dict, dict[str, XtTable]]:
    data = json.loads((FIXTURES / f"{stem}.json").read_text())
    return data, {name: table_from(data, name) for name in data["tables"]}


def test_fixtures_cover_both_families_and_kube_proxy() -> None:
    assert {"zoo-v4", "zoo-v6", "kube-proxy-v4", "kube-proxy-v6"} <= set(CAPTURES)


@pytest.mark.parametrize("stem", CAPTURES)
def test_every_chain_decodes_as_iptables_save_prints_it(stem: str) -> None:
    data, tables = load(stem)
    expected = saved_chains(data["save"])
    got = decoded_chains(tables)
    assert sorted(got) == sorted(expected)
    for table in expected:
        assert sorted(got[table]) == sorted(expected[table]), table
        for chain, (policy, rules) in expected[table].items():
            assert got[table][chain] == (policy, rules), (table, chain)


@pytest.mark.parametrize("stem", CAPTURES)
def test_lookups_without_an_index(stem: str) -> None:
    """Chains are found one by one (find), by prefix and by jumps; counts match the save."""
    data, tables = load(stem)
    expected = saved_chains(data["save"])
    for table, chains in expected.items():
        t = tables[table]
        for chain in chains:
            assert t.has_chain(chain), (table, chain)
            fresh = table_from(data, table)  # no search or jump has filled it yet
            assert fresh.chain(chain) == chains[chain]
        assert not t.has_chain("KUBE-NO-SUCH-CHAIN") and not t.has_chain("ERROR")
        assert t.chain("KUBE-NO-SUCH-CHAIN") is None
        users = [c for c, (policy, _) in chains.items() if policy is None]
        assert table_from(data, table).has_any(prefixes=("KUBE-",)) == any(c.startswith("KUBE-") for c in users)
        assert table_from(data, table).has_any(("NOPE",), ("KUBE-SE",)) == any(c.startswith("KUBE-SE") for c in users)
        assert t.rule_count() == sum(len(rules) for _, rules in chains.values())


def test_the_captures_cover_every_decoder() -> None:
    """Each extension and revision the decoder knows is in the captured tables, so each is
    checked against iptables' own output; and the rules use the forms worth checking."""
    from kptrace.parse.xt_extensions import MATCHES, TARGETS

    seen: set[tuple[str, str, int]] = set()
    for stem in CAPTURES:
        for t in load(stem)[1].values():
            seen |= extensions(t)
    assert {("match", n, r) for n, r in MATCHES} | {("match", "set", 4)} <= seen
    assert {("target", n, r) for n, r in TARGETS} <= seen
    text = "".join(json.loads((FIXTURES / f"{s}.json").read_text())["save"] for s in CAPTURES)
    for word in (" -g ", " ! -s ", " -i ", " ! -o ", "+ ", " -f ", " ! -p ", "/255.0.255.0 ", "[fd00::1-fd00::5]:80-81",
                 "::ffff:1.2.3.4/128", "--ctstate INVALID", "--state NEW", "--tcp-flags", "--log-prefix",
                 "! --match-set", "src,dst --return-nomatch", "! --bytes-eq"):
        assert word in text, word


def _patched(stem: str, table: str, old: bytes, new: bytes) -> XtTable:
    data = json.loads((FIXTURES / f"{stem}.json").read_text())
    t = table_from(data, table)
    blob = bytes(t.blob)
    assert old in blob
    data["tables"][table]["blob"] = base64.b64encode(blob.replace(old, new, 1)).decode()
    return table_from(data, table)


def test_an_unknown_extension_is_undecodable_not_guessed() -> None:
    # The statistic match renamed to one no decoder knows.
    header = struct.pack("=H29sB", 56, b"statistic", 0)
    t = _patched("zoo-v4", "nat", header, struct.pack("=H29sB", 56, b"statisticx", 0))
    with pytest.raises(Undecodable, match="statisticx"):
        t.chain("KUBE-A")
    # A known extension at a revision whose layout is unknown.
    t = _patched("zoo-v4", "nat", header, struct.pack("=H29sB", 56, b"statistic", 7))
    with pytest.raises(Undecodable, match="revision 7"):
        t.chain("KUBE-A")
    # Chains without the changed rule still decode.
    assert t.chain("KUBE-POST") is not None


def test_a_set_without_a_name_is_undecodable() -> None:
    data, _tables = load("zoo-v4")
    data["sets"] = {}
    with pytest.raises(Undecodable, match="set index"):
        table_from(data, "filter").chain("INPUT")


def test_a_truncated_blob_is_undecodable() -> None:
    data, tables = load("kube-proxy-v4")
    t = tables["nat"]
    cut = XtTable(4, "nat", bytes(t.blob)[: len(t.blob) // 2], valid_hooks=0, hook_entry=(0,) * 5,
                  underflow=(0,) * 5, num_entries=t.num_entries)
    for chain in saved_chains(data["save"])["nat"]:
        try:
            cut.chain(chain)
        except Undecodable:
            pass  # the only error a damaged blob may give


def test_a_jump_must_land_on_a_chain() -> None:
    data, tables = load("zoo-v4")
    t = tables["mangle"]
    first = t.builtins["PREROUTING"][0]
    target = first + struct.unpack_from("=H", t.blob, first + 88)[0]
    verdict = struct.unpack_from("=i", t.blob, target + 32)[0]
    assert verdict > 0  # -A PREROUTING -j MY-CHAIN
    blob = bytearray(t.blob)
    struct.pack_into("=i", blob, target + 32, verdict + 8)
    bad = XtTable(4, "mangle", bytes(blob), valid_hooks=1, hook_entry=(first, 0, 0, 0, 0),
                  underflow=t.builtins["PREROUTING"][1:] + (0, 0, 0, 0), num_entries=t.num_entries)
    with pytest.raises(Undecodable, match="does not start a chain"):
        bad.chain("PREROUTING")


def test_error_header_layout() -> None:
    assert len(ERROR_HEADER) == 32 and ERROR_HEADER[2:7] == b"ERROR"


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        ("", ' ""'),
        ("abc-1_2", " abc-1_2"),
        ("a b", ' "a b"'),
        ('say "hi"', ' "say \\"hi\\""'),
        ("back\\slash", ' "back\\\\slash"'),
        ("it's", ' "it\\\'s"'),
        ("default/webapp:http", ' "default/webapp:http"'),
    ],
)
def test_save_string_quotes_as_iptables(value: str, printed: str) -> None:
    assert save_string(value) == printed


def test_masks_and_ipv6_text() -> None:
    assert prefix_len(bytes([255, 255, 0, 0])) == 16
    assert prefix_len(bytes(4)) == 0
    assert prefix_len(bytes([255, 0, 255, 0])) is None
    for text in ("::", "::1", "fd00::1", "::ffff:1.2.3.4", "::1.2.3.4", "2001:db8::1:0:0:1"):
        assert ip6(socket.inet_pton(socket.AF_INET6, text)) == text


@pytest.mark.parametrize(
    ("args", "live", "netns"),
    [
        (["svc", "default/webapp"], True, None),
        (["--netns", "node1", "svc", "default/webapp"], True, "node1"),
        (["--netns=node1", "--debug", "packet", "--dst", "10.0.0.1:80"], True, "node1"),
        (["svc", "default/webapp", "--from", "x.save"], False, None),
        (["svc", "default/webapp", "-f", "x.save"], False, None),
        (["packet", "--dst", "1.2.3.4:80", "--from=x.save"], False, None),
        (["svc", "--help"], False, None),
        (["dump", "/tmp/x"], False, None),
        (["lab", "up"], False, None),
        (["--netns", "svc"], False, "svc"),
        ([], False, None),
    ],
)
def test_live_question(args: list[str], live: bool, netns: str | None) -> None:
    assert live_question(args) == (live, netns)


def test_an_undecodable_table_is_read_from_its_save_and_a_change_is_reported() -> None:
    from kptrace.parse.detect import parse_iptables_mode_save
    from kptrace.sources.legacy import blob_ruleset

    data, tables = load("zoo-v4")
    tables["nat"] = _patched("zoo-v4", "nat", struct.pack("=H29sB", 56, b"statistic", 0),
                             struct.pack("=H29sB", 56, b"statisticx", 0))
    # The save is read after KUBE-POST was decoded, and one of its rules is gone since.
    later = data["save"].replace("-A KUBE-POST -j MASQUERADE --random-fully\n", "")
    assert later != data["save"]
    asked: list[str] = []

    def save_table(family: int, table: str):  # -> Ruleset
        asked.append(table)
        found, _ = parse_iptables_mode_save(later, source=f"iptables-legacy-save -t {table}", backend="legacy")
        return found[0]

    warnings: list[str] = []
    rs = blob_ruleset(4, tables, save_table=save_table, lenient=False, warn=warnings.append)
    post = rs.chain("nat", "KUBE-POST")
    assert post is not None and "-A KUBE-POST -j MASQUERADE --random-fully" in [r.raw for r in post.rules]
    assert post.rules[0].source == "iptables-legacy (kernel table nat)" and not asked
    a = rs.chain("nat", "KUBE-A")  # holds the rule no decoder knows
    assert asked == ["nat"] and a is not None
    assert {r.source for r in a.rules} == {"iptables-legacy-save -t nat"}
    assert [r.raw for r in a.rules] == saved_chains(later)["nat"]["KUBE-A"][1]
    assert len(warnings) == 1 and "nat table changed while it was read" in warnings[0] and "KUBE-POST" in warnings[0]
    assert rs.chain("filter", "INPUT").rules[0].source == "iptables-legacy (kernel table filter)"  # other tables
