"""Service reports as JSON (schema kptrace.svc/v1) and as rich trees."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from rich.tree import Tree

from ..kube.describe import ServiceReport
from ..kube.walk import Endpoint, Node
from ..model.state import NodeState
from .common import percent, source_dict, source_line

SCHEMA = "kptrace.svc/v1"


def _port_number(report: ServiceReport) -> int | None:
    for e in report.port.entries:
        if not e.kind.startswith("node-port"):
            tail = e.address.rsplit(":", 1)[-1]
            if tail.isdigit():
                return int(tail)
    return None


def _ips(addresses: list[str]) -> list[str]:
    """``10.0.0.1:80`` -> ``10.0.0.1``; ``[fd00::1]:80`` -> ``fd00::1``."""
    out = []
    for a in addresses:
        ip = a[1:].split("]", 1)[0] if a.startswith("[") else a.rsplit(":", 1)[0]
        if ip not in out:
            out.append(ip)
    return out


def _eps(eps: list[Endpoint]) -> list[dict[str, Any]]:
    return [{"address": e.address, "probability": round(e.probability, 12), "chain": e.chain} for e in eps]


def svc_dict(reports: list[ServiceReport], node: NodeState, warnings: list[str]) -> dict[str, Any]:
    services = []
    for r in reports:
        sp = r.port
        services.append({
            "service": sp.namespace_name,
            "port": sp.port_name or _port_number(r),
            "portNumber": _port_number(r),
            "protocol": (sp.protocol or "tcp").upper(),
            "clusterIPs": _ips(sp.addresses("cluster-ip")),
            "nodePort": sp.node_port,
            "externalIPs": _ips(sp.addresses("external-ip") + sp.addresses("external")),
            "loadBalancerIPs": _ips(sp.addresses("load-balancer")),
            "endpoints": _eps(r.endpoints),
            "externalEndpoints": _eps(r.external_endpoints) if r.external_endpoints is not None else None,
            "noEndpoints": r.no_endpoints,
            "externalNoEndpoints": r.external_no_endpoints,
            "healthCheckNodePort": r.health_check_node_port,
            "uncertain": r.uncertain,
        })
    return {"schema": SCHEMA, "source": source_dict(node), "warnings": warnings, "services": services}


_KIND_STYLE = {
    "endpoint": "cyan",
    "masquerade": "magenta",
    "affinity": "blue",
    "verdict": "red",
    "fallthrough": "yellow",
    "note": "dim",
}


def svc_tree(reports: list[ServiceReport], node: NodeState, warnings: list[str]) -> Group:
    parts: list[Any] = [Text(f"source: {source_line(node)}", style="dim")]
    for r in reports:
        parts.append(_one(r))
    if warnings:
        w = Tree(Text("warnings", style="bold yellow"))
        for item in warnings:
            w.add(Text(item, style="yellow"))
        parts.append(w)
    return Group(*parts)


def _one(r: ServiceReport) -> Tree:
    sp = r.port
    title = Text()
    title.append(sp.name or f"(unnamed Service, chains KUBE-*-{sp.key})", style="bold")
    title.append(f"  {(sp.protocol or 'tcp').upper()}")
    root = Tree(title)
    facts = []
    for label, kind in (("ClusterIP", "cluster-ip"), ("external IP", "external-ip"), ("LoadBalancer IP", "load-balancer"), ("external/LB IP", "external")):
        addrs = sp.addresses(kind)
        if addrs:
            facts.append(f"{label} {', '.join(addrs)}")
    if sp.node_port:
        facts.append(f"NodePort {sp.node_port}")
    if r.health_check_node_port:
        facts.append(f"health check NodePort {r.health_check_node_port}")
    if facts:
        root.add(Text("  ·  ".join(facts)))
    root.add(_endpoint_line("endpoints", r.endpoints, r.no_endpoints))
    if r.external_endpoints is not None:
        root.add(_endpoint_line("external traffic", r.external_endpoints, r.external_no_endpoints, local=True))
    for n in r.tree:
        _add(root, n)
    for note in r.notes:
        root.add(Text(note, style="yellow"))
    for u in r.uncertain:
        root.add(Text(f"uncertain: {u}", style="bold yellow"))
    return root


def _endpoint_line(label: str, eps: list[Endpoint], none_verdict: str | None, local: bool = False) -> Text:
    t = Text(f"{label}: ", style="bold")
    if eps:
        t.append(", ".join(f"{e.address} ({percent(e.probability)})" for e in eps), style="cyan")
        if local:
            t.append("  (node-local endpoints only: externalTrafficPolicy Local)", style="dim")
    else:
        what = {
            "reject": "none: clients get 'connection refused' (REJECT)",
            "drop": "none: packets are dropped, clients time out (DROP)",
        }.get(none_verdict or "", "none")
        if local and none_verdict == "drop":
            what = "no local endpoints on this node: packets are dropped (externalTrafficPolicy Local)"
        t.append(what, style="bold red")
    return t


def _add(parent: Tree, n: Node) -> None:
    t = Text()
    if n.probability is not None:
        t.append(f"{percent(n.probability):>6}  ", style="bold")
    t.append(n.text, style=_KIND_STYLE.get(n.kind, ""))
    if n.rule is not None and n.rule.line:
        t.append(f"  L{n.rule.line}", style="dim")
    child = parent.add(t)
    for c in n.children:
        _add(child, c)
