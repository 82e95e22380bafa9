"""``kptrace packet ... --inject``: send real probes and compare with the prediction."""

from __future__ import annotations

import dataclasses

from ..errors import ExitStatus, UsageError
from ..model.packet import Packet
from ..model.state import NodeState
from ..trace.simulate import Trace, trace
from .common import Output, emit


def run_inject(
    state: NodeState,
    packet: Packet,
    trace_result: Trace,
    *,
    src_netns: str | None,
    count: int,
    deliver: bool,
    output: Output,
) -> int:
    """Probe, print prediction and observation side by side; returns the exit code
    (6 when the kernel disagrees, otherwise as ``packet``)."""
    from ..probe import send
    from ..probe.inject import inject
    from ..render.inject import inject_dict, inject_view

    if packet.src is None:
        # No source named: the sender decides where the probe starts.
        packet = dataclasses.replace(packet, origin="remote" if src_netns else "local")
    # A source on another host with no namespace to send from: a temporary one is made.
    temporary = src_netns is None and packet.origin == "remote"
    if temporary and packet.src == packet.dst:
        raise UsageError(
            f"--src {packet.src} is the destination and not the node's: a namespace holding it "
            "would deliver the probe to itself"
        )
    if src_netns is not None and packet.origin == "local":
        raise UsageError("--src-netns sends from outside the node, but --src is one of the node's addresses")
    if packet.src is None:
        # The address the sender's kernel would use; predict again with it, since the
        # prediction without a source is uncertain about rules testing the source.
        src = send.source_for(packet.dst, packet.dport, src_netns)
        packet = dataclasses.replace(packet, src=src)
        trace_result = trace(state, packet)
    backend = state.provenance.backend or "nft"
    obs = inject(
        packet, trace_result, backend=backend, src_netns=src_netns, count=count, deliver=deliver,
        temporary_source=temporary,
    )
    if temporary:
        trace_result.assumptions.append(
            f"the probe came from a temporary namespace ({obs.src_netns}) joined to the node by a veth: "
            "rules matching the input interface (-i) and reverse-path filtering (rp_filter) may treat "
            "real traffic from another host differently"
        )
    warnings = list(state.warnings)
    if output is Output.json:
        emit(inject_dict(trace_result, state, warnings, obs, count))
    else:
        emit(inject_view(trace_result, state, obs, count, obs.src_netns))
    if not obs.agrees:
        return int(ExitStatus.DISAGREES)
    if trace_result.uncertain:
        return int(ExitStatus.UNCERTAIN)
    if any(o.verdict != "accept" for o in trace_result.outcomes):
        return int(ExitStatus.BLOCKED)
    return int(ExitStatus.OK)
