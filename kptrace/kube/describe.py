"""One Service port as an SRE wants to see it: addresses, endpoints, paths, failures."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.rules import Ruleset
from .catalog import ServicePort
from .walk import Endpoint, Node, conditions, endpoints, walk

_ENTRY_LABEL = {
    "cluster-ip": "ClusterIP",
    "external-ip": "external IP",
    "load-balancer": "LoadBalancer IP",
    "external": "external/LoadBalancer IP",
    "node-port": "NodePort",
    "node-port-localhost": "NodePort",
}


@dataclass
class ServiceReport:
    port: ServicePort
    endpoints: list[Endpoint]
    external_endpoints: list[Endpoint] | None  # None: the same as endpoints
    no_endpoints: str | None  # what a ClusterIP client gets with no endpoints: reject | drop
    external_no_endpoints: str | None  # same for external traffic (no local endpoints)
    tree: list[Node]
    health_check_node_port: int | None
    notes: list[str] = field(default_factory=list)
    uncertain: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> bool:
        return not self.endpoints or self.no_endpoints is not None


def describe(ruleset: Ruleset, sp: ServicePort) -> ServiceReport:
    svc_chain = sp.chain("SVC")
    eps: list[Endpoint] = []
    uncertain: list[str] = []
    notes: list[str] = []
    if ruleset.has_chain("nat", svc_chain):
        eps, left = endpoints(ruleset, svc_chain)
        if left > 1e-9 and eps:
            uncertain.append(f"{left:.1%} of traffic falls through {svc_chain} without DNAT")
    ext_eps = _external_endpoints(ruleset, sp, eps)

    no_eps = None
    ext_no_eps = None
    hc = None
    for rule in sp.filter_rules:
        comment = rule.comment or ""
        t = rule.target.name if rule.target else ""
        if "has no endpoints" in comment and rule.chain == "KUBE-SERVICES":
            no_eps = t.lower()
        elif "has no endpoints" in comment and rule.chain == "KUBE-EXTERNAL-SERVICES":
            ext_no_eps = t.lower()
            no_eps = no_eps or t.lower()
        elif "has no local endpoints" in comment:
            ext_no_eps = t.lower()
        elif "health check node port" in comment and t == "ACCEPT":
            from .catalog import _dport

            hc = _dport(rule)
    if ext_no_eps and ext_eps is None:
        ext_eps = []

    tree: list[Node] = []
    expanded: set[str] = set()
    for entry in sorted(sp.entries, key=lambda e: list(_ENTRY_LABEL).index(e.kind) if e.kind in _ENTRY_LABEL else 99):
        if entry.rule.table != "nat":
            continue  # a filter rule (no endpoints): listed with the filter rules below
        label = _ENTRY_LABEL.get(entry.kind, entry.kind)
        address = {
            "node-port": f"{entry.address.lstrip(':')} on the node's addresses",
            "node-port-localhost": f"{entry.address.lstrip(':')} on 127.0.0.0/8",
        }.get(entry.kind, entry.address)
        rule = entry.rule
        target = rule.target.name if rule.target else ""
        cond = conditions(rule)
        text = f"{label} {address}   {rule.table} {rule.chain} [{cond}] -> {target}"
        node = Node(text, "entry", rule)
        if target.startswith("KUBE-") and rule.table == "nat":
            if target in expanded:
                node.children = [Node(f"{target}: shown above", "note")]
            else:
                node.children = walk(ruleset, target, expanded)
        tree.append(node)
    for rule in sp.filter_rules:
        t = rule.target.name if rule.target else ""
        comment = rule.comment or ""
        what = {
            "REJECT": "clients get 'connection refused' (ICMP port unreachable)",
            "DROP": "packets are dropped: clients time out",
            "ACCEPT": "accepted",
        }.get(t, t)
        tree.append(Node(f"filter {rule.chain} [{conditions(rule)}] -> {t}: {what}   ({comment})", "verdict", rule))
    if not sp.entries and not sp.filter_rules:
        notes.append("no kube-proxy rule leads to this Service port")
    return ServiceReport(sp, eps, ext_eps, no_eps, ext_no_eps, tree, hc, notes, uncertain)


def _external_endpoints(ruleset: Ruleset, sp: ServicePort, eps: list[Endpoint]) -> list[Endpoint] | None:
    """Endpoints external traffic (not from a pod or the node) reaches via KUBE-EXT."""
    ext = ruleset.chain("nat", sp.chain("EXT"))
    if ext is None:
        return None
    for rule in ext.rules:
        target = rule.target.name if rule.target else ""
        if not target.startswith(("KUBE-SVC-", "KUBE-SVL-")):
            continue
        if rule.builtin("-s") is not None or rule.match("addrtype") is not None:
            continue  # pod or node-local traffic: not what an external client gets
        if target == sp.chain("SVC"):
            return None
        found, _ = endpoints(ruleset, target)
        return found
    return []  # no unconditional path: external traffic gets no endpoint here
