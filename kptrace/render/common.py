"""Pieces shared by the renderers."""

from __future__ import annotations

from typing import Any

from ..model.state import NodeState


def source_dict(node: NodeState) -> dict[str, Any]:
    p = node.provenance
    return {"kind": p.kind, "backend": p.backend, "paths": list(p.paths), "time": p.time}


def source_line(node: NodeState) -> str:
    p = node.provenance
    if p.kind == "dump" and p.paths:
        where = p.paths[0].rsplit("/", 1)[0] if "/" in p.paths[0] else p.paths[0]  # the bundle
    else:
        where = ", ".join(p.paths) if p.paths else "this node"
    fams = sorted({f"IPv{rs.family}" for rs in node.rulesets if rs.family})
    bits = [p.kind, where]
    if p.backend:
        bits.append(f"iptables-{p.backend}")
    if fams:
        bits.append("/".join(fams))
    if p.time:
        bits.append(p.time)
    return " · ".join(bits)


def percent(p: float) -> str:
    if p >= 0.9995 or p == 0:
        return f"{p:.0%}"
    if p < 0.001:
        return f"{p:.3%}"
    return f"{p:.1%}"
