"""Tree output compared with golden files (set KPTRACE_UPDATE_GOLDEN=1 to rewrite them)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from clirunner import ROOT, run

GOLDEN = Path(__file__).parent / "golden"
EXAMPLE = "examples/webapp.save"
LB = "tests/fixtures/iptables/TestLoadBalancer.live.save"

CASES = {
    "svc-webapp": ["svc", "default/webapp", "--from", EXAMPLE],
    "svc-storefront": ["svc", "shop/storefront", "--from", EXAMPLE, "--local-ip", "192.168.49.2"],
    "svc-orders-no-endpoints": ["svc", "default/orders", "--from", EXAMPLE],
    "packet-clusterip": ["packet", "--dst", "10.103.46.104:80", "--src", "10.244.120.102", "--from", EXAMPLE, "--local-ip", "192.168.49.2"],
    "packet-nodeport": ["packet", "--dst", "192.168.49.2:31380", "--src", "203.0.113.9", "--from", EXAMPLE, "--local-ip", "192.168.49.2"],
    "packet-lb-blocked": ["packet", "--dst", "1.2.3.4:80", "--src", "203.0.113.130", "--from", LB, "--local-ip", "192.168.0.2"],
    "packet-uncertain": ["packet", "--dst", "192.168.0.2:3001", "--from", LB],
}


def _normalise(text: str) -> str:
    # The source line names an absolute path and a file time: neither is stable.
    return re.sub(r"source: .*\n", "source: <source>\n", text)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_tree(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # relative paths: the output names files as the user gave them
    r = run(*CASES[name], columns=110)
    got = _normalise(r.out) + f"[exit {r.code}]\n"
    path = GOLDEN / f"{name}.txt"
    if os.environ.get("KPTRACE_UPDATE_GOLDEN") == "1":
        path.write_text(got)
    assert path.exists(), f"missing golden file {path}: run with KPTRACE_UPDATE_GOLDEN=1"
    assert got == path.read_text()
