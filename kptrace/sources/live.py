"""Read the running node: iptables rules (nft and legacy, IPv4 and IPv6), ipsets,
addresses, routes and sysctls of the current network namespace."""

from __future__ import annotations

import datetime as _dt

from ..model.state import NodeState
from .collect import Runner, build_state, collect, run_command


def load_live(
    *,
    backend: str | None = None,
    lenient: bool = False,
    timeout: float = 30.0,
    runner: Runner = run_command,
    per_chain: bool = True,
) -> NodeState:
    """The node's state now. ``backend`` ("nft" or "legacy") overrides the choice of
    the backend holding kube-proxy's chains; ``timeout`` bounds each command.
    ``per_chain`` reads rules only as a question reaches them: the nft backend's chains
    one by one, the legacy backend's chains from the tables copied out of the kernel."""
    time = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    raw = collect(backend=backend, timeout=timeout, runner=runner, per_chain=per_chain)
    return build_state(
        raw,
        kind="live",
        backend=backend,
        lenient=lenient,
        sources={"ipset": "ipset save", "addresses": "netlink addresses", "routes": "netlink routes"},
        rule_sources=raw.commands,
        time=time,
    )
