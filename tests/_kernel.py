"""Helpers for tests that need root and a real kernel: throwaway network namespaces,
and running kptrace inside one without moving the pytest process.

Outside CI a missing prerequisite skips; in CI (CI=true) it fails, so a broken runner
cannot turn the kernel tests into silent skips.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from kptrace import errors
from kptrace.model.rules import Chain, Ruleset
from kptrace.model.state import NodeState

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
IPT = TESTS / "fixtures" / "iptables"
IN_CI = os.environ.get("CI") == "true"
_counter = itertools.count()


def require(condition: bool, why: str) -> None:
    if condition:
        return
    import pytest  # not at the top: children without privileges may not see it

    if IN_CI:
        pytest.fail(f"CI prerequisite missing: {why}")
    pytest.skip(why)


def require_root_and(*binaries: str) -> None:
    require(os.geteuid() == 0, "needs root")
    missing = [b for b in binaries if shutil.which(b) is None]
    require(not missing, f"needs {', '.join(missing)}")


def sh(*argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), input=input, capture_output=True, text=True, check=check, timeout=60)


def ns_sh(ns: str, *argv: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, input=input, check=check)


@contextmanager
def netns(tag: str = "ns") -> Iterator[str]:
    """A new, uniquely named network namespace, deleted whatever happens."""
    require_root_and("ip")
    name = f"kptrace-t-{tag}-{os.getpid()}-{next(_counter)}"
    sh("ip", "netns", "add", name)
    try:
        ns_sh(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        sh("ip", "netns", "del", name, check=False)


def restore(ns: str, fixture: str | Path, backend: str) -> None:
    """Load a saved ruleset with the real iptables-restore of a backend."""
    path = IPT / fixture if isinstance(fixture, str) else fixture
    text = path.read_text()
    prefix = "ip6tables" if fixture_family(path) == 6 else "iptables"
    ns_sh(ns, f"{prefix}-{backend}-restore", input=text)


def fixture_family(path: Path) -> int:
    return 6 if "TestNodePorts_5" in path.name else 4


# Creates nfacct counters in the current network namespace (what kube-proxy's
# nfacct.Ensure does): NFNL_SUBSYS_ACCT / NFNL_MSG_ACCT_NEW with an NFACCT_NAME attribute.
NFACCT_ADD = r"""
import socket, struct, sys
for name in sys.argv[1:]:
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
    s.bind((0, 0))
    value = name.encode() + b"\0"
    attr = struct.pack("HH", 4 + len(value), 1) + value
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("BBH", 0, 0, 0) + attr
    s.send(struct.pack("IHHII", 16 + len(body), 7 << 8, 0x1 | 0x4 | 0x400, 1, 0) + body)
    error = struct.unpack_from("i", s.recv(4096), 16)[0]
    if error:
        sys.exit(f"nfacct {name}: error {error}")
"""


def add_nfacct(ns: str, *names: str) -> None:
    """kube-proxy's nfacct counters in NS, so that rules matching them load."""
    ns_sh(ns, sys.executable, "-c", NFACCT_ADD, *names)


def add_node_addresses(ns: str, addresses: list[str], *, default_route: bool = True) -> str:
    """The node's IPs on one interface (dummy, or a veth pair where the kernel has no
    dummy driver), with default routes through it; returns the interface name."""
    dev = "node0"
    # No IPv6 link-local addresses: the kernel adds them asynchronously after link up, which
    # would make two reads of the same namespace differ.
    ns_sh(ns, "sysctl", "-qw", "net.ipv6.conf.default.addr_gen_mode=1", "net.ipv6.conf.all.addr_gen_mode=1")
    if ns_sh(ns, "ip", "link", "add", dev, "type", "dummy", check=False).returncode != 0:
        ns_sh(ns, "ip", "link", "add", dev, "type", "veth", "peer", "name", "node0p")
        ns_sh(ns, "ip", "link", "set", "node0p", "up")
    ns_sh(ns, "ip", "link", "set", dev, "up")
    for addr in addresses:
        if ":" in addr:
            ns_sh(ns, "ip", "-6", "addr", "add", f"{addr}/128", "dev", dev, "nodad")
        else:
            ns_sh(ns, "ip", "addr", "add", f"{addr}/32", "dev", dev)
    if default_route:
        ns_sh(ns, "ip", "route", "add", "default", "dev", dev)
        ns_sh(ns, "ip", "-6", "route", "add", "default", "dev", dev)
    return dev


# -- kptrace inside a namespace ----------------------------------------------------

_CHILD = """
import pickle, sys
sys.path[:0] = [{root!r}, {tests!r}]
import importlib
import _kernel
from kptrace.errors import KptraceError
try:
    if {ns!r} is not None:
        from kptrace.sources.netns import enter_netns
        enter_netns({ns!r})
    func = getattr(importlib.import_module({module!r}), {func!r})
    result = ("ok", _kernel.snapshot(func(*{args!r}, **{kwargs!r})))
except KptraceError as exc:
    result = ("error", type(exc).__name__, exc.message, exc.detail)
with open({out!r}, "wb") as fh:
    pickle.dump(result, fh)
"""


@dataclass
class ChildResult:
    value: Any
    stdout: str
    stderr: str


def call_in_netns(
    ns: str | None, func: str, *args: Any, prefix: tuple[str, ...] = (), **kwargs: Any
) -> ChildResult:
    """``FUNC(*args, **kwargs)`` (a dotted name) in a child process that entered NS.

    A KptraceError comes back raised as the same class; a NodeState comes back with
    every chain parsed. ``prefix`` runs the child under another command (setpriv).
    """
    module, _, name = func.rpartition(".")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pickle")
        os.chmod(tmp, 0o777)  # a child without privileges writes here too
        code = _CHILD.format(root=str(ROOT), tests=str(TESTS), ns=ns, module=module, func=name, args=args, kwargs=kwargs, out=out)
        proc = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0 or not os.path.exists(out):
            raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stderr}")
        with open(out, "rb") as fh:
            result = pickle.load(fh)
    if result[0] == "error":
        cls = getattr(errors, result[1])
        exc = cls.__new__(cls)
        errors.KptraceError.__init__(exc, result[2], detail=result[3])
        raise exc
    return ChildResult(result[1], proc.stdout, proc.stderr)


def load_live_in(ns: str | None, **kwargs: Any) -> NodeState:
    return call_in_netns(ns, "kptrace.sources.live.load_live", **kwargs).value


def snapshot(value: Any) -> Any:
    """A NodeState whose rulesets hold parsed chains (picklable); other values as they are."""
    if not isinstance(value, NodeState):
        return value
    rulesets = []
    for rs in value.rulesets:
        chains = {}
        for table in rs.tables:
            for chain in rs.iter_chains(table):  # rebuilt parsed: a lazy parser does not pickle
                chains[(table, chain.name)] = Chain(table, chain.name, chain.policy, list(chain.rules), line=chain.line)
        names = {t: rs.chain_names(t) for t in rs.tables if rs.chain_names(t)}
        rulesets.append(Ruleset(rs.family, names, functools.partial(_stored_chain, chains), source=rs.source, backend=rs.backend))
    return replace(value, rulesets=rulesets)


def _stored_chain(chains: dict[tuple[str, str], Chain | None], table: str, name: str) -> Chain | None:
    return chains.get((table, name))


# -- comparing states ------------------------------------------------------------


def chain_texts(rs: Ruleset) -> dict[tuple[str, str], tuple[str | None, list[str]]]:
    """(table, chain) -> (policy, raw rules): what must agree between two readings."""
    out = {}
    for table in rs.tables:
        for chain in rs.iter_chains(table):
            out[(table, chain.name)] = (chain.policy, [r.raw for r in chain.rules])
    return out


def flows(test: str) -> dict:
    return json.loads((IPT / f"{test}.flows.json").read_text())
