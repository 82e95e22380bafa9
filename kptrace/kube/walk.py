"""Walk a Service's chains as a tree: what each rule does and with what share.

This reads the rules kube-proxy wrote (KUBE-SVC/EXT/FW/SVL/SEP); it describes them,
while ``trace.simulate`` answers for one concrete packet.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.rules import Rule, Ruleset



@dataclass
class Endpoint:
    address: str
    probability: float
    chain: str
    hairpin_masquerade: bool = False


@dataclass
class Node:
    text: str
    kind: str  # jump | endpoint | masquerade | affinity | verdict | note | fallthrough
    rule: Rule | None = None
    probability: float | None = None
    children: list[Node] = field(default_factory=list)


def conditions(rule: Rule) -> str:
    """Conditions without the random choice, which the tree shows as a share."""
    return rule.conditions(skip=("comment", "nfacct", "statistic"))


def statistic_probability(rule: Rule) -> float | None:
    m = rule.match("statistic")
    if m is None:
        return None
    opt = m.option("--probability")
    if opt is None:
        every = m.option("--every")
        return 1.0 / int(every.value) if every and every.value.isdigit() else None
    try:
        return float(opt.value)
    except ValueError:
        return None


def is_affinity_check(rule: Rule) -> bool:
    m = rule.match("recent")
    return m is not None and m.option("--rcheck", "--update") is not None


def dnat_of(ruleset: Ruleset, sep_chain: str) -> tuple[str | None, bool]:
    """(DNAT destination, whether the endpoint masquerades traffic from itself)."""
    chain = ruleset.chain("nat", sep_chain)
    if chain is None:
        return None, False
    to = None
    hairpin = False
    for rule in chain.rules:
        if rule.target is None:
            continue
        if rule.target.name == "DNAT":
            opt = rule.target.option("--to-destination", "--to")
            to = opt.value if opt else None
        elif rule.target.name == "KUBE-MARK-MASQ" and rule.builtin("-s") is not None:
            hairpin = True
    return to, hairpin


def endpoints(ruleset: Ruleset, chain_name: str) -> tuple[list[Endpoint], float]:
    """Endpoints a first packet reaches from a KUBE-SVC/SVL chain, and the share left over."""
    chain = ruleset.chain("nat", chain_name)
    if chain is None:
        return [], 1.0
    remaining = 1.0
    out: list[Endpoint] = []
    for rule in chain.rules:
        target = rule.target.name if rule.target else ""
        if not target.startswith("KUBE-SEP-") or is_affinity_check(rule):
            continue
        p = statistic_probability(rule)
        share = remaining * (1.0 if p is None else p)
        remaining -= share
        to, hairpin = dnat_of(ruleset, target)
        out.append(Endpoint(to or f"? ({target} has no DNAT rule)", share, target, hairpin))
    return out, max(remaining, 0.0)


def walk(ruleset: Ruleset, chain_name: str, expanded: set[str], table: str = "nat") -> list[Node]:
    """The rules of a chain as tree nodes; chains already shown are referred to, not repeated."""
    chain = ruleset.chain(table, chain_name)
    if chain is None:
        return [Node(f"chain {chain_name} is missing from table {table}", "note")]
    expanded.add(chain_name)
    nodes: list[Node] = []
    remaining = 1.0
    for rule in chain.rules:
        cond = conditions(rule)
        target = rule.target.name if rule.target else ""
        if target == "KUBE-MARK-MASQ":
            nodes.append(Node(f"masquerade (KUBE-MARK-MASQ) {'if ' + cond if cond else 'always'}", "masquerade", rule))
            continue
        if target.startswith("KUBE-SEP-"):
            to, hairpin = dnat_of(ruleset, target)
            if is_affinity_check(rule):
                m = rule.match("recent")
                secs = m.option("--seconds") if m else None
                nodes.append(Node(
                    f"session affinity: a client seen in the last {secs.value if secs else '?'}s goes back to {to} ({target})",
                    "affinity", rule))
                continue
            p = statistic_probability(rule)
            share = remaining * (1.0 if p is None else p)
            remaining -= share
            text = f"{target} -> DNAT {to}" + ("   (hairpin: masquerade when the endpoint calls itself)" if hairpin else "")
            nodes.append(Node(text, "endpoint", rule, share))
            continue
        if target in ("DROP", "REJECT", "ACCEPT", "RETURN"):
            nodes.append(Node(f"{target}{' if ' + cond if cond else ''}", "verdict", rule))
            continue
        if target.startswith("KUBE-"):
            if target in expanded:
                nodes.append(Node(f"{'if ' + cond + ': ' if cond else ''}-> {target} (shown above)", "jump", rule))
            else:
                node = Node(f"{'if ' + cond + ': ' if cond else ''}-> {target}", "jump", rule)
                node.children = walk(ruleset, target, expanded, table)
                nodes.append(node)
            continue
        if not target:
            nodes.append(Node(f"(no action{': ' + (rule.comment or '') if rule.comment else ''})", "note", rule))
            continue
        nodes.append(Node(f"{target}{' if ' + cond if cond else ''}", "note", rule))
    if chain_name.startswith(("KUBE-SVC-", "KUBE-SVL-")) and remaining > 1e-9 and any(n.kind == "endpoint" for n in nodes):
        nodes.append(Node(f"{remaining:.1%} fall through without DNAT", "fallthrough", None, remaining))
    if chain_name.startswith("KUBE-FW-"):
        nodes.append(Node("sources not listed: no DNAT here; KUBE-PROXY-FIREWALL drops them", "fallthrough"))
    return nodes
