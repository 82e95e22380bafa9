"""``kptrace lab``: a Kubernetes node built from network namespaces on this machine.

The node namespace holds kube-proxy-style rules generated from a config of Services;
local endpoints are pod namespaces joined to it by veth pairs, remote endpoints live
behind one "other node" namespace, a client namespace sends traffic from outside, and a
sink namespace takes the node's default route so nothing leaves the machine.

This module only names things (so the pod servers, which import it, start fast); the
logic is in :mod:`kptrace.lab.build` and the config in :mod:`kptrace.lab.config`.
"""

from __future__ import annotations

NODE_NS = "kptrace-node"
CLIENT_NS = "kptrace-client"
SINK_NS = "kptrace-sink"
REMOTE_NS = "kptrace-remote"
POD_NS_PREFIX = "kptrace-pod-"
FIXED_NAMESPACES = (NODE_NS, CLIENT_NS, SINK_NS, REMOTE_NS)

STATE_DIR = "/run/kptrace"
STATE_FILE = f"{STATE_DIR}/lab.json"
STATE_SCHEMA = "kptrace.lab/v1"


def is_lab_namespace(name: str) -> bool:
    """Whether a namespace name belongs to the lab (not to other kptrace-* users)."""
    return name in FIXED_NAMESPACES or name.startswith(POD_NS_PREFIX)


def pod_namespace(pod: str) -> str:
    return POD_NS_PREFIX + pod
