"""``kptrace dump``: a bundle written on a node reads back as the live state it saved."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from clirunner import flow_answers
from _kernel import (
    ROOT,
    add_node_addresses,
    call_in_netns,
    chain_texts,
    flows,
    load_live_in,
    netns,
    ns_sh,
    require_root_and,
    restore,
)
from kptrace.errors import ParseError, UsageError
from kptrace.model.state import NodeState
from kptrace.sources.dump import FORMAT, load_dump, write_dump

NODE_IPS = ["192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1", "2001:db8:1::2"]


def _prepare(ns: str, rules: list[tuple[str, str]]) -> None:
    for fixture, backend in rules:
        restore(ns, fixture, backend)
    add_node_addresses(ns, NODE_IPS)
    ns_sh(ns, "ip", "route", "add", "blackhole", "10.99.0.0/16")
    ns_sh(ns, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1", "net.ipv4.ip_forward=1")
    ns_sh(ns, "ipset", "create", "KUBE-TEST", "hash:ip,port")
    ns_sh(ns, "ipset", "add", "KUBE-TEST", "10.180.0.1,tcp:80")


def _dump_in(ns: str, directory: Path, **kwargs: str) -> dict:
    return call_in_netns(ns, "kptrace.sources.dump.write_dump", str(directory), **kwargs).value


def assert_same_state(dumped: NodeState, live: NodeState) -> None:
    assert dumped.provenance.backend == live.provenance.backend
    assert [(rs.family, rs.backend) for rs in dumped.rulesets] == [(rs.family, rs.backend) for rs in live.rulesets]
    for d, l in zip(dumped.rulesets, live.rulesets):
        assert chain_texts(d) == chain_texts(l)
    assert dumped.local_ips == live.local_ips
    assert dumped.routes == live.routes
    assert dumped.sysctls == live.sysctls
    assert dumped.ipsets == live.ipsets
    assert dumped.warnings == live.warnings


def _answers(node: NodeState, flow: dict) -> list[tuple]:
    return flow_answers(node, flow)


CASES = [
    pytest.param([("TestClusterIPGeneral.live.save", "nft")], "TestClusterIPGeneral", id="v4-nft"),
    pytest.param([("TestNodePorts_5.live.save", "legacy")], "TestNodePorts_5", id="v6-legacy"),
    pytest.param([("TestLoadBalancer.live.save", "legacy"), ("TestNodePorts_5.live.save", "legacy")], "TestLoadBalancer", id="v4+v6-legacy"),
    pytest.param([("TestExternalTrafficPolicyLocal.live.save", "nft"), ("TestNoEndpointsReject.live.save", "legacy")], "TestExternalTrafficPolicyLocal", id="split-brain"),
]


@pytest.mark.root
@pytest.mark.parametrize("rules,test", CASES)
def test_dump_reads_back_as_live(ns: str, tmp_path: Path, rules: list[tuple[str, str]], test: str) -> None:
    require_root_and("iptables-nft-restore", "iptables-legacy-restore", "ip6tables-legacy-restore", "ipset", "sysctl")
    _prepare(ns, rules)
    bundle = tmp_path / "bundle"
    manifest = _dump_in(ns, bundle)
    live = load_live_in(ns)
    dumped = load_dump(str(bundle))

    assert_same_state(dumped, live)
    assert dumped.provenance.kind == "dump"
    assert dumped.provenance.time == manifest["time"]
    assert str(bundle / "manifest.json") in dumped.provenance.paths
    assert {str(bundle / rel) for rel in manifest["files"]} <= set(dumped.provenance.paths)
    split = len({backend for _f, backend in rules}) == 2
    assert any("SPLIT BRAIN" in w for w in manifest["backend_warnings"]) == split
    assert any("SPLIT BRAIN" in w for w in dumped.warnings) == split
    data = flows(test)
    for flow in data["flows"]:
        assert _answers(dumped, flow) == _answers(live, flow), flow["name"]

    forced = load_dump(str(bundle), backend="legacy")
    assert forced.provenance.backend == "legacy"


@pytest.mark.root
def test_manifest(ns: str, tmp_path: Path) -> None:
    require_root_and("iptables-nft-restore", "ipset", "sysctl")
    _prepare(ns, [("TestClusterIPGeneral.live.save", "nft")])
    manifest = _dump_in(ns, tmp_path / "b")
    on_disk = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["format"] == FORMAT == "kptrace-dump/v1"
    assert manifest["host"] and manifest["time"].endswith("+00:00")
    assert manifest["kernel"] == os.uname().release
    assert manifest["tools"]["kptrace"]
    assert "iptables-nft-save" in manifest["tools"]["iptables-nft-save"]
    assert manifest["backend"] == "nft" and manifest["backend_forced"] is False
    files = manifest["files"]
    # Only the saves that hold tables are written; the others are named as empty.
    assert [f for f in files if f.startswith("iptables/")] == ["iptables/nft-v4.save"]
    assert "iptables-legacy-save" in manifest["empty"]
    assert files["iptables/nft-v4.save"] | {"bytes": 0, "sha256": ""} == {
        "kind": "iptables-save", "backend": "nft", "family": 4, "command": "iptables-nft-save", "bytes": 0, "sha256": "",
    }
    assert {files[f]["kind"] for f in files} == {"iptables-save", "ipset-save", "addresses", "routes", "sysctls"}
    for rel, entry in files.items():
        assert (tmp_path / "b" / rel).stat().st_size == entry["bytes"]
    routes = json.loads((tmp_path / "b" / "routes.json").read_text())
    assert {"table": "main", "family": 4, "dst": "10.99.0.0/16", "kind": "blackhole", "dev": None, "gateway": None} in routes["routes"]
    assert json.loads((tmp_path / "b" / "sysctls.json").read_text())["net.ipv4.ip_forward"] == "1"
    assert {"ifname": "node0", "family": 4, "address": "192.168.0.2", "prefixlen": 32} in json.loads(
        (tmp_path / "b" / "addresses.json").read_text()
    )


@pytest.mark.root
def test_dump_does_not_change_the_node(ns: str, tmp_path: Path) -> None:
    require_root_and("iptables-nft-restore", "iptables-legacy-restore", "ipset", "sysctl", "nft")
    _prepare(ns, [("TestClusterIPGeneral.live.save", "nft"), ("TestNodePorts_1.live.save", "legacy")])

    def state() -> list[str]:
        cmds = [["iptables-nft-save", "-c"], ["iptables-legacy-save", "-c"], ["ip6tables-nft-save"], ["ip6tables-legacy-save"],
                ["nft", "list", "ruleset"], ["ipset", "save"], ["ip", "-d", "addr"], ["ip", "route", "show", "table", "all"],
                ["ip", "-6", "route", "show", "table", "all"], ["ip", "rule"], ["lsmod"] if shutil.which("lsmod") else ["true"]]
        out = []
        for cmd in cmds:
            text = ns_sh(ns, *cmd).stdout
            out.append("\n".join(ln for ln in text.splitlines() if not ln.startswith("#")))
        return out

    before = state()
    _dump_in(ns, tmp_path / "b")
    assert state() == before


def test_dump_refuses_a_directory_with_files(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("x")
    with pytest.raises(UsageError, match="not empty"):
        write_dump(str(tmp_path))
    with pytest.raises(UsageError, match="not a directory"):
        write_dump(str(tmp_path / "old"))


# -- damaged bundles ---------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One real bundle (IPv4 nft and IPv6 legacy) for the damage tests to copy."""
    require_root_and("iptables-nft-restore", "ip6tables-legacy-restore", "ipset", "sysctl")
    path = tmp_path_factory.mktemp("dump") / "bundle"
    with netns("dump") as ns:
        _prepare(ns, [("TestClusterIPGeneral.live.save", "nft"), ("TestNodePorts_5.live.save", "legacy")])
        _dump_in(ns, path)
    yield path


@pytest.fixture
def copy(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def _manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


@pytest.mark.root
def test_bundle_loads(copy: Path) -> None:
    state = load_dump(str(copy))
    assert state.provenance.backend == "nft" and any("SPLIT BRAIN" in w for w in state.warnings)
    assert not any("checksum" in w for w in state.warnings)


@pytest.mark.root
@pytest.mark.parametrize("rel", ["iptables/nft-v4.save", "routes.json", "addresses.json", "sysctls.json", "ipset.save"])
def test_missing_file_is_named(copy: Path, rel: str) -> None:
    (copy / rel).unlink()
    with pytest.raises(UsageError) as exc:
        load_dump(str(copy))
    assert exc.value.message == f"{copy / rel}: listed in manifest.json but missing (incomplete bundle?)"
    assert exc.value.exit_status == 2


@pytest.mark.root
def test_truncated_save_is_named(copy: Path) -> None:
    path = copy / "iptables" / "nft-v4.save"
    text = path.read_text()
    path.write_text(text[: text.rindex("COMMIT")])
    with pytest.raises(ParseError) as exc:
        load_dump(str(copy))
    assert exc.value.source == str(path) and "COMMIT" in exc.value.message and exc.value.exit_status == 2


@pytest.mark.root
def test_garbled_save_is_named_with_its_line(copy: Path) -> None:
    path = copy / "iptables" / "legacy-v6.save"
    lines = path.read_text().split("\n")
    lines[5] = "garbage here"
    path.write_text("\n".join(lines))
    with pytest.raises(ParseError) as exc:
        load_dump(str(copy), backend="legacy")
    assert exc.value.source == str(path) and exc.value.line == 6


@pytest.mark.root
@pytest.mark.parametrize(
    "rel,text,line",
    [
        ("routes.json", '{"routes": [\n  {"dst": "10.0.0.0/8",\n', 3),
        ("addresses.json", "", None),
        ("sysctls.json", "[1, 2]", None),
        ("routes.json", '{"routes": [{"dst": "not-a-network", "kind": "unicast"}], "policy_rules": []}', None),
        ("addresses.json", '[{"address": "300.1.2.3"}]', None),
        ("routes.json", '{"routes": {}}', None),
    ],
    ids=["truncated-json", "empty", "wrong-shape", "bad-route", "bad-address", "routes-not-list"],
)
def test_corrupt_json_is_named(copy: Path, rel: str, text: str, line: int | None) -> None:
    (copy / rel).write_text(text)
    with pytest.raises(ParseError) as exc:
        load_dump(str(copy))
    assert exc.value.source == str(copy / rel)
    assert exc.value.message.startswith(f"{copy / rel}")
    if line is not None:
        assert exc.value.line == line
    assert exc.value.exit_status == 2


@pytest.mark.root
def test_manifest_problems(copy: Path, tmp_path: Path) -> None:
    (copy / "manifest.json").write_text('{"format": "kptrace-dump/v1", "files": ')
    with pytest.raises(ParseError) as exc:
        load_dump(str(copy))
    assert exc.value.source == str(copy / "manifest.json")

    (copy / "manifest.json").write_text(json.dumps({"format": "kptrace-dump/v9", "files": {}}))
    with pytest.raises(UsageError, match="kptrace-dump/v9"):
        load_dump(str(copy))

    (copy / "manifest.json").write_text(json.dumps({"format": "something", "files": {}}))
    with pytest.raises(ParseError, match="not a kptrace dump manifest"):
        load_dump(str(copy))

    (copy / "manifest.json").unlink()
    with pytest.raises(UsageError, match="no manifest.json"):
        load_dump(str(copy))
    with pytest.raises(UsageError, match="not a directory"):
        load_dump(str(tmp_path / "nothing-here"))


@pytest.mark.root
def test_edited_and_unknown_files_warn(copy: Path) -> None:
    sysctls = json.loads((copy / "sysctls.json").read_text())
    sysctls["net.ipv4.ip_forward"] = "0"
    (copy / "sysctls.json").write_text(json.dumps(sysctls))
    manifest = _manifest(copy)
    manifest["files"]["ipvs/ipvsadm.txt"] = {"kind": "ipvsadm", "sha256": "0"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    state = load_dump(str(copy))
    assert state.sysctls["net.ipv4.ip_forward"] == "0"
    assert any("sysctls.json: changed since the dump was written" in w for w in state.warnings)
    assert any("'ipvsadm' file, which this kptrace does not read" in w for w in state.warnings)


@pytest.mark.root
def test_file_outside_the_bundle_is_refused(copy: Path) -> None:
    manifest = _manifest(copy)
    manifest["files"]["../etc/passwd"] = {"kind": "sysctls"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ParseError, match="outside the bundle"):
        load_dump(str(copy))


# -- the command ------------------------------------------------------------------


@pytest.mark.root
def test_dump_command_through_the_cli(ns: str, tmp_path: Path) -> None:
    """``kptrace --netns NS dump DIR`` writes the bundle of that namespace and says what it wrote."""
    require_root_and("iptables-nft-restore", "ipset", "sysctl")
    _prepare(ns, [("TestClusterIPGeneral.live.save", "nft")])
    target = tmp_path / "b"
    code = f"import sys\nfrom kptrace.cli.app import main\nsys.exit(main(['--netns', {ns!r}, 'dump', {str(target)!r}, '--backend', 'nft']))"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"Wrote {target}" in proc.stdout
    for text in ("iptables/nft-v4.save", "iptables-nft-save (IPv4)", "routes.json", "sysctls.json", "ipset.save"):
        assert text in proc.stdout
    manifest = _manifest(target)
    assert manifest["backend_forced"] is True
    assert load_dump(str(target)).provenance.backend == "nft"
    # The bundle holds the namespace's addresses, not the host's.
    assert ipaddress.ip_address("192.168.99.11") in (load_dump(str(target)).local_ips or frozenset())
