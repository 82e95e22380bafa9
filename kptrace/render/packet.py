"""A packet trace as JSON (schema kptrace.packet/v1) and as a rich tree."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from rich.tree import Tree

from ..model.packet import format_endpoint
from ..model.state import NodeState
from ..trace.simulate import Outcome, Trace
from .common import percent, source_dict, source_line

SCHEMA = "kptrace.packet/v1"


def packet_dict(trace: Trace, node: NodeState, warnings: list[str]) -> dict[str, Any]:
    pk = trace.packet
    return {
        "schema": SCHEMA,
        "source": source_dict(node),
        "packet": {
            "src": str(pk.src) if pk.src is not None else None,
            "dst": str(pk.dst),
            "proto": pk.proto,
            "sport": pk.sport,
            "dport": pk.dport,
            "origin": pk.origin,
        },
        "warnings": warnings,
        "assumptions": trace.assumptions,
        "outcomes": [_outcome_dict(o) for o in trace.outcomes],
    }


def _outcome_dict(o: Outcome) -> dict[str, Any]:
    return {
        "probability": round(o.probability, 12),
        "verdict": o.verdict,
        "dnat": o.dnat,
        "masquerade": o.masquerade,
        "snat": o.snat,
        "service": o.service,
        "uncertain": list(o.uncertain),
        "delivery": o.delivery,
        "reason": o.reason,
        "path": list(o.path),
        "hops": [
            {"table": h.table, "chain": h.chain, "rule": h.rule, "line": h.line, "action": h.action, "hook": h.hook}
            for h in o.hops
        ],
    }


_VERDICT_STYLE = {"accept": "bold green", "drop": "bold red", "reject": "bold red"}


def packet_tree(trace: Trace, node: NodeState, warnings: list[str], *, show_policies: bool = False) -> Tree:
    pk = trace.packet
    src = format_endpoint(pk.src, pk.sport) if pk.src is not None else "(any source)"
    how = "from this node: OUTPUT path" if pk.origin == "local" else "arriving from another host: PREROUTING path"
    title = Text.assemble(
        ("packet ", "bold"), f"{pk.proto} {src} -> {format_endpoint(pk.dst, pk.dport)}", (f"  ({how})", "dim")
    )
    root = Tree(title)
    root.add(Text(f"source: {source_line(node)}", style="dim"))
    n = len(trace.outcomes)
    outs = root.add(Text(f"{n} outcome{'s' if n != 1 else ''}", style="bold"))
    for o in sorted(trace.outcomes, key=lambda o: -o.probability):
        branch = outs.add(_outcome_title(o))
        if o.uncertain:
            unc = branch.add(Text("uncertain", style="bold yellow"))
            for u in o.uncertain:
                unc.add(Text(u, style="yellow"))
        _hops(branch, o, show_policies)
        if o.reason:
            branch.add(Text(f"=> {o.reason}", style=_VERDICT_STYLE.get(o.verdict, "")))
    for title, items, style in (("assumptions", trace.assumptions, "dim"), ("warnings", warnings, "yellow")):
        if items:
            node_ = root.add(Text(title, style="bold " + style if style != "dim" else "bold"))
            for item in items:
                node_.add(Text(item, style=style))
    return root


def _outcome_title(o: Outcome) -> Text:
    t = Text()
    t.append(f"{percent(o.probability):>6}  ", style="bold")
    t.append(o.verdict.upper(), style=_VERDICT_STYLE.get(o.verdict, ""))
    if o.dnat:
        t.append("  DNAT ")
        t.append(o.dnat, style="bold cyan")
    if o.masquerade:
        t.append("  masquerade", style="magenta")
    if o.snat:
        t.append(f"  SNAT {o.snat}", style="magenta")
    if o.service:
        t.append(f"  service {o.service}", style="blue")
    if o.delivery:
        t.append(f"  ({'delivered locally' if o.delivery == 'local' else 'forwarded'})", style="dim")
    if o.uncertain:
        t.append("  ?", style="bold yellow")
    return t


def _hops(branch: Tree, o: Outcome, show_policies: bool) -> None:
    """Hops grouped under the hook they ran in, with routing decisions in between."""
    by_hook: dict[str, list] = {}
    for h in o.hops:
        by_hook.setdefault(h.hook or "", []).append(h)
    for stage in o.path:
        hops = by_hook.pop(stage, [])
        if stage.startswith("routing"):
            branch.add(Text(stage, style="italic"))
            continue
        shown = [h for h in hops if show_policies or not (h.action == "policy ACCEPT")]
        if not shown:
            continue
        stage_node = branch.add(Text(stage, style="bold"))
        for h in shown:
            stage_node.add(_hop_text(h))


def _hop_text(h) -> Text:  # type: ignore[no-untyped-def]
    t = Text()
    loc = f"L{h.line}" if h.line else "  -"
    t.append(f"{loc:>6} ", style="dim")
    t.append(f"{h.chain}: ", style="bold")
    t.append(h.action, style="cyan")
    if not h.action.startswith("policy"):
        t.append("   " + h.rule, style="dim")
    return t
