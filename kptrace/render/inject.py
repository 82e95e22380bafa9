"""An inject result: the prediction and the kernel's observation side by side."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..model.packet import format_endpoint
from ..model.state import NodeState
from ..probe.inject import Observation, outcome_key
from ..trace.simulate import Hop, Outcome, Trace
from .common import percent, source_line
from .packet import packet_dict


def observed_dict(obs: Observation, count: int) -> dict[str, Any]:
    if count > 1:
        return {
            "evidence": obs.evidence,
            "counts": obs.counts,
            "bounds": {k: list(v) for k, v in obs.bounds.items()},
            "probes": count,
            "notes": obs.notes,
            "seconds": obs.seconds,
        }
    return {
        "evidence": obs.evidence,
        "verdict": obs.verdict,
        "delivery": obs.delivery,
        "dnat": obs.dnat,
        "masquerade": obs.masquerade,
        "sport": obs.sports[0] if obs.sports else None,
        "src_netns": obs.src_netns,
        "temporary_netns": obs.temporary_netns,
        "hops": [
            {"table": h.table, "chain": h.chain, "rule": h.rule, "packets": h.packets, "predicted": h.predicted,
             "verdict": h.verdict}
            for h in obs.hops
        ],
        "first_difference": _difference_dict(obs),
        "conntrack": [
            {"reply_src": e.reply_src, "reply_dst": e.reply_dst, "snat": e.snat} for e in obs.conntrack
        ],
        "notes": obs.notes,
        "seconds": obs.seconds,
    }


def _rule_hops(o: Outcome) -> list[Hop]:
    return [h for h in o.hops if not h.rule.startswith(":")]


def _difference_dict(obs: Observation) -> dict[str, Any] | None:
    """The first hop where the kernel's path and the compared prediction part: its index
    among the outcome's rule hops, and the hop on each side (null past an end)."""
    if obs.first_difference is None or obs.compared is None:
        return None
    i = obs.first_difference
    pred = _rule_hops(obs.compared)
    p = pred[i] if i < len(pred) else None
    o: dict[str, Any] | None = None
    if obs.evidence == "trace":
        taken = [h for h in obs.hops if not h.rule.startswith(":")]
        if i < len(taken):
            o = {"table": taken[i].table, "chain": taken[i].chain, "rule": taken[i].rule, "verdict": taken[i].verdict}
    return {
        "index": i,
        "predicted": {"table": p.table, "chain": p.chain, "rule": p.rule, "line": p.line} if p else None,
        "observed": o,
    }


def inject_dict(trace: Trace, node: NodeState, warnings: list[str], obs: Observation, count: int) -> dict[str, Any]:
    doc = packet_dict(trace, node, warnings)
    doc["observed"] = observed_dict(obs, count)
    doc["agrees"] = obs.agrees
    return doc


def _summary(verdict: str | None, dnat: str | None, masq: bool, delivery: str | None, evidence: str = "") -> str:
    if verdict is None:
        return "lost (the trace ends without a verdict)" if evidence == "trace" else "lost (no rule counted it)"
    parts = [verdict.upper()]
    if dnat:
        parts.append(f"DNAT {dnat}")
    if masq:
        parts.append("masquerade")
    if delivery:
        parts.append("delivered locally" if delivery == "local" else "forwarded")
    return "  ".join(parts)


EVIDENCE = {
    "trace": "the kernel's trace (xtables-monitor --trace)",
    "counters": "rule counter deltas (iptables-save -c)",
}


def inject_view(trace: Trace, node: NodeState, obs: Observation, count: int, src_netns: str | None) -> Group:
    pk = trace.packet
    if src_netns and obs.temporary_netns:
        where = f"from temporary netns {src_netns}: PREROUTING path"
    else:
        where = f"from netns {src_netns}: PREROUTING path" if src_netns else "from the node: OUTPUT path"
    head = Text.assemble(
        ("inject ", "bold"), f"{pk.proto} {pk.src} -> {format_endpoint(pk.dst, pk.dport)}",
        (f"  ({where}; {count} probe{'s' if count != 1 else ''}, {obs.seconds:.2f}s)", "dim"),
    )
    parts: list[Any] = [
        head,
        Text(f"source: {source_line(node)}", style="dim"),
        Text(f"evidence: {EVIDENCE.get(obs.evidence, obs.evidence)}", style="dim"),
    ]
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
        table.add_column("observed (kernel trace)" if obs.evidence == "trace" else "observed (kernel counters)")
        best = obs.compared or max(trace.outcomes, key=lambda o: o.probability)
        pred = "\n".join(
            f"{percent(o.probability)} " + _summary(o.verdict, o.dnat, o.masquerade, o.delivery)
            for o in sorted(trace.outcomes, key=lambda o: -o.probability)
        )
        table.add_row("outcome", pred, _summary(obs.verdict, obs.dnat, obs.masquerade, obs.delivery, obs.evidence))
        if obs.evidence == "trace":
            _trace_rows(table, best, obs)
        else:
            _counter_rows(table, best, obs)
        for e in obs.conntrack:
            table.add_row("conntrack", "", f"reply from {e.reply_src} to {e.reply_dst}" + ("  (source rewritten)" if e.snat else ""))
    parts.append(table)
    for n in obs.notes:
        parts.append(Text(n, style="yellow"))
    for a in trace.assumptions:
        parts.append(Text(f"assumption: {a}", style="dim"))
    verdict = Text("the kernel agrees with the prediction", style="bold green") if obs.agrees else Text(
        "the kernel DISAGREES with the prediction", style="bold red"
    )
    parts.append(verdict)
    return Group(*parts)


FIRST_DIFFERENCE = "◀ first difference"


def _hop_text(h: Hop) -> str:
    return f"L{h.line} {h.action}" if h.line else h.action


def _trace_rows(table: Table, best: Outcome, obs: Observation) -> None:
    """Predicted and traced rule hops side by side, in order; the first pair that
    differs is marked, and everything after it is shown as it is on each side."""
    pred = _rule_hops(best)
    taken = [h for h in obs.hops if not h.rule.startswith(":")]
    diff = obs.first_difference
    for i in range(max(len(pred), len(taken))):
        p = pred[i] if i < len(pred) else None
        o = taken[i] if i < len(taken) else None
        label = f"{(p or o).table} {(p or o).chain}"  # type: ignore[union-attr]
        if diff is None or i < diff:
            table.add_row(Text(label, style="dim"), _hop_text(p) if p else "", Text(f"= {o.verdict}" if o else "", style="green"))
            continue
        seen = Text(f"{o.table} {o.chain} {o.verdict}: {o.rule}" if o else "(trace ends)")
        if i == diff:
            seen.stylize("bold red")
            seen = Text.assemble((f"{FIRST_DIFFERENCE}  ", "bold red"), seen)
        table.add_row(Text(label, style="dim"), _hop_text(p) if p else "(no more predicted hops)", seen)


def _counter_rows(table: Table, best: Outcome, obs: Observation) -> None:
    counted = {(h.table, h.chain, h.rule): h.packets for h in obs.hops}
    for i, h in enumerate(_rule_hops(best)):
        n = counted.get((h.table, h.chain, h.rule), 0)
        if n:
            mark = Text(f"+{n}", style="green")
        else:
            mark = Text("not counted" + (f"  {FIRST_DIFFERENCE}" if i == obs.first_difference else ""), style="bold red")
        table.add_row(Text(f"{h.table} {h.chain}", style="dim"), _hop_text(h), mark)
    for h in obs.hops:
        if not h.predicted:
            table.add_row(Text(f"{h.table} {h.chain}", style="dim"), Text("(not predicted)", style="yellow"), f"+{h.packets} {h.rule}")
