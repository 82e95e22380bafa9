"""kube-proxy's chain names, recomputed.

kube-proxy names its per-Service chains ``KUBE-SVC-``/``KUBE-EXT-``/``KUBE-SVL-``/``KUBE-FW-``
plus the first 16 characters of base32(sha256(servicePortName + protocol)), and its
per-endpoint chains ``KUBE-SEP-`` plus the same hash of servicePortName + protocol +
endpoint.  servicePortName is ``ns/name:portname``, or ``ns/name`` for an unnamed port.
Recomputing them lets kptrace find a Service when kube-proxy left out rule comments
(it does above 1,000 endpoints).
"""

from __future__ import annotations

import base64
import hashlib

SERVICE_CHAIN_PREFIXES = ("KUBE-SVC-", "KUBE-EXT-", "KUBE-SVL-", "KUBE-FW-")


def service_port_name(namespace: str, name: str, port_name: str = "") -> str:
    base = f"{namespace}/{name}"
    return f"{base}:{port_name}" if port_name else base


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest[:10]).decode()  # 10 bytes are exactly 16 base32 characters


def service_chain(prefix: str, svc_port_name: str, protocol: str) -> str:
    """``service_chain("KUBE-SVC-", "ns1/svc1:p80", "tcp")`` -> ``KUBE-SVC-XPGD46QRK7WJZT7O``."""
    return prefix + _hash(svc_port_name + protocol.lower())


def endpoint_chain(svc_port_name: str, protocol: str, endpoint: str) -> str:
    """``endpoint`` is ``ip:port`` (``[v6]:port`` for IPv6), as in the DNAT target."""
    return "KUBE-SEP-" + _hash(svc_port_name + protocol.lower() + endpoint)
