"""On the nft backend, live questions fetch only the chains they reach."""

from __future__ import annotations

import ipaddress
import os

import pytest

from _kernel import call_in_netns, ns_sh, require_root_and
from kptrace.generate import render_jumps, render_restore, synthetic_spec
from kptrace.sources.chains import parse_chain_list, skeleton_save

CHAINS = """table ip filter {
	chain INPUT {
		type filter hook input priority filter; policy drop;
	}
	chain KUBE-SERVICES {
	}
}
table ip6 nat {
	chain PREROUTING {
		type nat hook prerouting priority dstnat; policy accept;
	}
}
table inet kptrace_probe {
	chain x {
	}
}
"""


def test_parse_chain_list() -> None:
    listed = parse_chain_list(CHAINS)
    assert listed == {4: {"filter": [("INPUT", "DROP"), ("KUBE-SERVICES", None)]}, 6: {"nat": [("PREROUTING", "ACCEPT")]}}
    assert skeleton_save(listed[4]) == "*filter\n:INPUT DROP [0:0]\n:KUBE-SERVICES - [0:0]\nCOMMIT\n"


def fetches_for(dst: str, dport: int, src: str) -> tuple[int, list[str], str, list[str | None]]:
    """Run in the namespace: trace one packet live, counting the commands kptrace ran."""
    from kptrace.model.packet import Packet
    from kptrace.sources.collect import run_command
    from kptrace.sources.live import load_live
    from kptrace.trace.simulate import trace

    calls: list[list[str]] = []

    def runner(argv, timeout):  # type: ignore[no-untyped-def]
        calls.append(list(argv))
        return run_command(argv, timeout)

    state = load_live(runner=runner)
    result = trace(state, Packet(dst=ipaddress.ip_address(dst), dport=dport, src=ipaddress.ip_address(src), sport=1))
    chain_reads = sum("-S" in argv for argv in calls)
    saves = [os.path.basename(argv[0]) for argv in calls if argv[0].endswith("-save")]
    return chain_reads, saves, state.ruleset_for(4).source, [o.dnat for o in result.outcomes]


@pytest.mark.root
def test_live_reads_only_the_chains_reached(ns: str) -> None:
    require_root_and("iptables-nft-restore", "nft")
    spec = synthetic_spec(300, 3, seed=3)
    ns_sh(ns, "iptables-nft-restore", input=render_restore(spec).replace(" -m nfacct --nfacct-name localhost_nps_accepted_pkts", "").replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", ""))
    ns_sh(ns, "iptables-nft-restore", "--noflush", input=render_jumps(spec))
    svc = next(s for s in spec.services if s.endpoints and s.type == "ClusterIP" and s.ports[0].protocol == "TCP")
    chain_reads, saves, source, dnats = call_in_netns(
        ns, "test_live_chains.fetches_for", str(svc.cluster_ips[0]), svc.ports[0].port, "10.244.1.1"
    ).value
    assert "(per chain)" in source
    assert not any(s.startswith("iptables-nft-save") or s.startswith("ip6tables-nft-save") for s in saves)
    assert 3 <= chain_reads <= 30  # KUBE-SERVICES, the Service's chains, the built-ins: not 1,500 chains
    assert {d.rsplit(":", 1)[0] for d in dnats if d} == {str(e.ip) for e in svc.endpoints}


def test_jump_targets_are_read_ahead() -> None:
    """Loading a Service's chain starts reading its endpoints' chains; a chain jumping to
    more than READ_AHEAD_MAX chains (KUBE-SERVICES) starts nothing."""
    import subprocess
    import threading

    from kptrace.sources.chains import READ_AHEAD_MAX, per_chain_ruleset

    seps = [f"KUBE-SEP-{i:016d}" for i in range(3)]
    outputs = {
        "KUBE-SVC-A": "-N KUBE-SVC-A\n" + "".join(f"-A KUBE-SVC-A -j {s}\n" for s in seps) + "-A KUBE-SVC-A -j MARK --set-xmark 0x1/0x1\n",
        "KUBE-SERVICES": "-N KUBE-SERVICES\n" + "".join(f"-A KUBE-SERVICES -j KUBE-SVC-{i}\n" for i in range(READ_AHEAD_MAX + 1)),
    }
    calls: list[str] = []
    lock = threading.Lock()

    def runner(argv, timeout):
        name = argv[-1]
        with lock:
            calls.append(name)
        text = outputs.get(name, f"-N {name}\n-A {name} -j RETURN\n")
        return subprocess.CompletedProcess(argv, 0, text, "")

    rs = per_chain_ruleset(4, ["nat"], command="iptables-nft", nft="nft", timeout=5, runner=runner, lenient=False)
    svc = rs.chain("nat", "KUBE-SVC-A")
    assert [svc.raw(i) for i in range(len(svc))][0] == f"-A KUBE-SVC-A -j {seps[0]}"
    for sep in seps:  # each read once: ahead, then taken from there
        assert rs.chain("nat", sep).raw(0) == f"-A {sep} -j RETURN"
    assert sorted(calls) == sorted(["KUBE-SVC-A", *seps])
    calls.clear()
    rs.chain("nat", "KUBE-SERVICES")
    assert calls == ["KUBE-SERVICES"]
