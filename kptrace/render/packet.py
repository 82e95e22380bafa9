"""A packet trace as JSON (schema kptrace.packet/v1) and as a rich tree."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from rich.tree import Tree

from ..model.packet import format_endpoint
from ..model.state import NodeState
from ..trace.simulate import Hop, Outcome, Trace
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
    src = format_endpoint(pk.src, pk.sport) if pk.src is not None else "(source not given)"
    how = "sent by this node: OUTPUT path" if pk.origin == "local" else "arriving from another host: PREROUTING path"
    title = Text.assemble(
        ("packet ", "bold"), f"{pk.proto} {src} -> {format_endpoint(pk.dst, pk.dport)}", (f"  ({how})", "dim")
    )
    root = Tree(title)
    root.add(Text(f"source: {source_line(node)}", style="dim"))
    outcomes = sorted(trace.outcomes, key=lambda o: -o.probability)
    n = len(outcomes)
    summary = root.add(Text(f"{n} outcome{'s' if n != 1 else ''}", style="bold"))
    for i, o in enumerate(outcomes, 1):
        summary.add(_outcome_title(o, i if n > 1 else None))
    for i, o in enumerate(outcomes):
        label = Text("rule by rule" if n == 1 else f"rule by rule, outcome {i + 1}", style="bold")
        branch = root.add(label)
        if o.uncertain:
            unc = branch.add(Text("uncertain", style="bold yellow"))
            for u in o.uncertain:
                unc.add(Text(u, style="yellow"))
        skip, same_as = _shared_prefix(outcomes, i)
        if skip:
            last = o.hops[skip - 1]
            branch.add(Text(
                f"... as outcome {same_as + 1} up to L{last.line} {last.chain} ({skip} rule{'s' if skip != 1 else ''})",
                style="dim",
            ))
        _hops(branch, o, skip, show_policies)
        if o.reason:
            branch.add(Text(f"=> {o.reason}", style=_VERDICT_STYLE.get(o.verdict, "")))
    for title_, items, style in (("assumptions", trace.assumptions, ""), ("warnings", warnings, "yellow")):
        if items:
            node_ = root.add(Text(title_, style=("bold " + style).strip()))
            for item in items:
                node_.add(Text(item, style=style or "dim"))
    return root


def _shared_prefix(outcomes: list[Outcome], i: int) -> tuple[int, int]:
    """How many leading hops outcome i shares with an earlier one, and which."""
    best, which = 0, 0
    hops = outcomes[i].hops
    for j in range(i):
        other = outcomes[j].hops
        k = 0
        while k < len(hops) and k < len(other) and hops[k] == other[k]:
            k += 1
        if k > best:
            best, which = k, j
    if best and best == len(hops):
        best -= 1  # always show where it ends
    return best, which


def _outcome_title(o: Outcome, number: int | None) -> Text:
    t = Text()
    if number is not None:
        t.append(f"{number}. ", style="dim")
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
        t.append("  (uncertain)", style="bold yellow")
    return t


def _hops(branch: Tree, o: Outcome, skip: int, show_policies: bool) -> None:
    """Hops from index ``skip`` on, under the hook they ran in, with routing decisions."""
    by_hook: dict[str, list[Hop]] = {}
    for h in o.hops[skip:]:
        by_hook.setdefault(h.hook or "", []).append(h)
    first_hook = o.hops[skip].hook if skip < len(o.hops) else None
    started = skip == 0 or first_hook is None
    for stage in o.path:
        if not started:
            if stage != first_hook:
                continue
            started = True
        hops = by_hook.pop(stage, [])
        if stage.startswith("routing"):
            branch.add(Text(stage, style="italic"))
            continue
        shown = [h for h in hops if show_policies or h.action != "policy ACCEPT"]
        if not shown:
            continue
        stage_node = branch.add(Text(stage, style="bold"))
        for h in shown:
            stage_node.add(_hop_text(h))


def _hop_text(h: Hop) -> Text:
    t = Text()
    t.append(f"L{h.line}" if h.line else "-", style="dim")
    t.append(f" {h.chain}", style="bold")
    if h.conditions:
        t.append(f"  {h.conditions}")
    t.append(f"  => {h.action}", style="cyan")
    if h.comment:
        t.append(f'  "{h.comment}"', style="dim")
    return t
