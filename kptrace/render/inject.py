"""An inject result: the prediction and the kernel's observation side by side."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..model.packet import format_endpoint
from ..model.state import NodeState
from ..probe.inject import Observation, outcome_key
from ..trace.simulate import Trace
from .common import percent, source_line
from .packet import packet_dict


def observed_dict(obs: Observation, count: int) -> dict[str, Any]:
    if count > 1:
        return {
            "counts": obs.counts,
            "bounds": {k: list(v) for k, v in obs.bounds.items()},
            "probes": count,
            "notes": obs.notes,
            "seconds": obs.seconds,
        }
    return {
        "verdict": obs.verdict,
        "delivery": obs.delivery,
        "dnat": obs.dnat,
        "masquerade": obs.masquerade,
        "sport": obs.sports[0] if obs.sports else None,
        "hops": [
            {"table": h.table, "chain": h.chain, "rule": h.rule, "packets": h.packets, "predicted": h.predicted}
            for h in obs.hops
        ],
        "conntrack": [
            {"reply_src": e.reply_src, "reply_dst": e.reply_dst, "snat": e.snat} for e in obs.conntrack
        ],
        "notes": obs.notes,
        "seconds": obs.seconds,
    }


def inject_dict(trace: Trace, node: NodeState, warnings: list[str], obs: Observation, count: int) -> dict[str, Any]:
    doc = packet_dict(trace, node, warnings)
    doc["observed"] = observed_dict(obs, count)
    doc["agrees"] = obs.agrees
    return doc


def _summary(verdict: str | None, dnat: str | None, masq: bool, delivery: str | None) -> str:
    if verdict is None:
        return "lost (no rule counted it)"
    parts = [verdict.upper()]
    if dnat:
        parts.append(f"DNAT {dnat}")
    if masq:
        parts.append("masquerade")
    if delivery:
        parts.append("delivered locally" if delivery == "local" else "forwarded")
    return "  ".join(parts)


def inject_view(trace: Trace, node: NodeState, obs: Observation, count: int, src_netns: str | None) -> Group:
    pk = trace.packet
    where = f"from netns {src_netns}: PREROUTING path" if src_netns else "from the node: OUTPUT path"
    head = Text.assemble(
        ("inject ", "bold"), f"{pk.proto} {pk.src} -> {format_endpoint(pk.dst, pk.dport)}",
        (f"  ({where}; {count} probe{'s' if count != 1 else ''}, {obs.seconds:.2f}s)", "dim"),
    )
    parts: list[Any] = [head, Text(f"source: {source_line(node)}", style="dim")]
    table = Table(show_edge=False, pad_edge=False)
    if count > 1:
        table.add_column("outcome")
        table.add_column("predicted", justify="right")
        table.add_column("99.9% bounds", justify="right")
        table.add_column("observed", justify="right")
        shares: dict[str, float] = {}
        for o in trace.outcomes:
            shares[outcome_key(o)] = shares.get(outcome_key(o), 0.0) + o.probability
        for key in sorted(set(shares) | set(obs.counts)):
            lo, hi = obs.bounds.get(key, (0, 0))
            n = obs.counts.get(key, 0)
            style = "green" if key in shares and lo <= n <= hi else "bold red"
            table.add_row(key, percent(shares.get(key, 0.0)), f"{lo}-{hi}", Text(str(n), style=style))
    else:
        table.add_column("")
        table.add_column("predicted")
        table.add_column("observed (kernel)")
        best = obs.matched or max(trace.outcomes, key=lambda o: o.probability)
        pred = "\n".join(
            f"{percent(o.probability)} " + _summary(o.verdict, o.dnat, o.masquerade, o.delivery)
            for o in sorted(trace.outcomes, key=lambda o: -o.probability)
        )
        table.add_row("outcome", pred, _summary(obs.verdict, obs.dnat, obs.masquerade, obs.delivery))
        counted = {(h.table, h.chain, h.rule): h.packets for h in obs.hops}
        for h in best.hops:
            if h.rule.startswith(":"):
                continue
            n = counted.get((h.table, h.chain, h.rule), 0)
            mark = Text(f"+{n}", style="green") if n else Text("not counted", style="bold red")
            table.add_row(Text(f"{h.table} {h.chain}", style="dim"), f"L{h.line} {h.action}" if h.line else h.action, mark)
        for h in obs.hops:
            if not h.predicted:
                table.add_row(Text(f"{h.table} {h.chain}", style="dim"), Text("(not predicted)", style="yellow"), f"+{h.packets} {h.rule}")
        for e in obs.conntrack:
            table.add_row("conntrack", "", f"reply from {e.reply_src} to {e.reply_dst}" + ("  (source rewritten)" if e.snat else ""))
    parts.append(table)
    for n in obs.notes:
        parts.append(Text(n, style="yellow"))
    verdict = Text("the kernel agrees with the prediction", style="bold green") if obs.agrees else Text(
        "the kernel DISAGREES with the prediction", style="bold red"
    )
    parts.append(verdict)
    return Group(*parts)
