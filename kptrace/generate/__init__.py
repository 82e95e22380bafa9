"""Generate kube-proxy (iptables mode) rulesets from a small cluster description."""

from kptrace.generate.iptables import render_jumps, render_restore, render_save
from kptrace.generate.spec import (
    ClusterSpec,
    Endpoint,
    Service,
    ServicePort,
    spec_from_dict,
    spec_from_flows,
    spec_to_dict,
    synthetic_spec,
)

__all__ = [
    "ClusterSpec",
    "Endpoint",
    "Service",
    "ServicePort",
    "render_jumps",
    "render_restore",
    "render_save",
    "spec_from_dict",
    "spec_from_flows",
    "spec_to_dict",
    "synthetic_spec",
]
