"""The lab's config: a generator spec (``kptrace.generate.spec_from_dict`` format) plus
what only the lab needs, validated into a :class:`LabConfig`.

Lab-only keys, removed before the spec is built:

* ``lab.clientIP``: the client's address and prefix (default ``203.0.113.10/24``); the
  node takes the first host of that network as the client's gateway.
* ``lab.remoteNodeIP``: the "other node" that remote endpoints sit behind
  (default ``192.168.49.3``).
* ``pod`` on an endpoint: the name its server answers with (default ``<service>-<n>``).

An endpoint with ``local: true`` gets its own pod namespace; an endpoint on the node IP
is served in the node namespace (a host-network pod); any other lives in the remote
namespace.  The lab is IPv4 only and never uses nfacct (it creates no nfacct objects).
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import UsageError
from ..generate.spec import ClusterSpec, spec_from_dict
from . import REMOTE_NS, NODE_NS, pod_namespace

EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent.parent / "examples" / "lab.json"
POD_GATEWAY = "169.254.1.1"  # what pods route through; the node answers for it by proxy ARP
SINK_NODE_IP = "198.51.100.1"
SINK_IP = "198.51.100.2"
SINK_PREFIX = 30
NODE_PREFIX = 24
MAX_LOCAL_PODS = 200
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")

Kind = Literal["pod", "host", "remote"]


@dataclass(frozen=True)
class LabEndpoint:
    """One endpoint address and the server that answers on it."""

    name: str
    ip: str
    kind: Kind
    tcp_ports: tuple[int, ...]
    udp_ports: tuple[int, ...]
    unserved: tuple[str, ...] = ()  # e.g. "SCTP/9000": in the rules, but no server

    @property
    def netns(self) -> str:
        if self.kind == "pod":
            return pod_namespace(self.name)
        return NODE_NS if self.kind == "host" else REMOTE_NS


@dataclass(frozen=True)
class LabConfig:
    spec: ClusterSpec
    endpoints: tuple[LabEndpoint, ...]
    node_ip: str
    client_ip: str
    client_prefix: int
    client_gateway: str
    remote_node_ip: str
    source: str
    digest: str  # of the normalised document: an unchanged lab can be reused

    @property
    def pods(self) -> tuple[LabEndpoint, ...]:
        return tuple(e for e in self.endpoints if e.kind == "pod")

    @property
    def remotes(self) -> tuple[LabEndpoint, ...]:
        return tuple(e for e in self.endpoints if e.kind == "remote")


def load_config(path: str | Path | None = None) -> LabConfig:
    """Read a JSON (or, when PyYAML is installed, YAML) config; None means the default."""
    if path is None:
        if EXAMPLE_CONFIG.is_file():
            path = EXAMPLE_CONFIG
        else:  # an installed package ships without examples/
            return config_from_dict(copy.deepcopy(DEFAULT_LAB), "built-in default lab")
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise UsageError(f"--config: cannot read {p}: {exc.strerror or exc}") from None
    source = str(p.resolve())
    return config_from_dict(_parse(text, source), source)


def _parse(text: str, source: str) -> Any:
    if source.endswith((".yaml", ".yml")):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise UsageError(f"{source}: YAML needs PyYAML (pip install pyyaml); or write the config as JSON") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{source}: not valid YAML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{source}:{exc.lineno}: not valid JSON: {exc.msg}") from None


def config_from_dict(data: Any, source: str = "<config>") -> LabConfig:
    """Validate a config document; every problem is a UsageError naming the field."""
    if not isinstance(data, Mapping):
        raise UsageError(f"{source}: expected a JSON object at the top level")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    doc = copy.deepcopy(dict(data))
    lab = doc.pop("lab", {}) or {}
    if not isinstance(lab, Mapping):
        raise UsageError(f"{source}: lab: expected an object")
    unknown = set(lab) - {"clientIP", "remoteNodeIP"}
    if unknown:
        raise UsageError(f"{source}: lab.{sorted(unknown)[0]}: unknown field (expected clientIP, remoteNodeIP)")
    if doc.get("family", 4) != 4:
        raise UsageError(f"{source}: family: the lab builds IPv4 nodes only")
    names = _pop_pod_names(doc, source)
    try:
        spec = spec_from_dict(doc)
    except ValueError as exc:
        raise UsageError(f"{source}: {exc}") from None
    node_ip = spec.node_ip
    if node_ip is None:
        raise UsageError(f"{source}: nodeIPs: give the node's IPv4 address")
    spec = replace(spec, nfacct=False)

    client = _interface(lab.get("clientIP", "203.0.113.10/24"), "lab.clientIP", source)
    gateway = next(client.network.hosts())
    if client.ip == gateway:
        raise UsageError(f"{source}: lab.clientIP: {client.ip} is the network's first host, which the node takes")
    remote = _address(lab.get("remoteNodeIP", "192.168.49.3"), "lab.remoteNodeIP", source)

    endpoints = _endpoints(spec, names, node_ip, source)
    infra = {
        str(client.ip): "lab.clientIP", str(gateway): "the client's gateway", str(remote): "lab.remoteNodeIP",
        POD_GATEWAY: "the pods' gateway", SINK_NODE_IP: "the sink link", SINK_IP: "the sink link",
    }
    if node_ip in infra:
        raise UsageError(f"{source}: nodeIPs: {node_ip} is also {infra[node_ip]}")
    for ep in endpoints:
        if ep.ip in infra:
            raise UsageError(f"{source}: endpoint {ep.ip} ({ep.name}) is also {infra[ep.ip]}")
    if len([e for e in endpoints if e.kind == "pod"]) > MAX_LOCAL_PODS:
        raise UsageError(f"{source}: at most {MAX_LOCAL_PODS} local endpoints")
    return LabConfig(
        spec=spec, endpoints=endpoints, node_ip=node_ip, client_ip=str(client.ip),
        client_prefix=client.network.prefixlen, client_gateway=str(gateway),
        remote_node_ip=str(remote), source=source, digest=digest,
    )


def _interface(value: object, what: str, source: str) -> ipaddress.IPv4Interface:
    try:
        iface = ipaddress.ip_interface(value) if isinstance(value, str) else None
    except ValueError:
        iface = None
    if not isinstance(iface, ipaddress.IPv4Interface) or iface.network.prefixlen > 30:
        raise UsageError(f"{source}: {what}: expected an IPv4 address with a prefix of /30 or shorter, got {value!r}")
    return iface


def _address(value: object, what: str, source: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        ip = None
    if not isinstance(ip, ipaddress.IPv4Address):
        raise UsageError(f"{source}: {what}: expected an IPv4 address, got {value!r}")
    return ip


def _pop_pod_names(doc: dict[str, Any], source: str) -> dict[tuple[int, int], str]:
    """Remove the lab-only ``pod`` keys; (service index, endpoint index) -> name."""
    names: dict[tuple[int, int], str] = {}
    services = doc.get("services")
    if not isinstance(services, list):
        return names
    for i, svc in enumerate(services):
        eps = svc.get("endpoints") if isinstance(svc, dict) else None
        if not isinstance(eps, list):
            continue
        for j, ep in enumerate(eps):
            if isinstance(ep, dict) and "pod" in ep:
                name = ep.pop("pod")
                if not isinstance(name, str) or not _NAME.match(name):
                    raise UsageError(f"{source}: services[{i}].endpoints[{j}].pod: expected a lower-case "
                                     f"DNS-style name of at most 63 characters, got {name!r}")
                names[(i, j)] = name
    return names


def _endpoints(spec: ClusterSpec, names: dict[tuple[int, int], str], node_ip: str,
               source: str) -> tuple[LabEndpoint, ...]:
    """One server per endpoint address, serving every port any Service sends it."""
    order: list[str] = []
    name_of: dict[str, str] = {}
    local_of: dict[str, bool] = {}
    ports: dict[str, set[tuple[str, int]]] = {}
    for i, svc in enumerate(spec.services):
        for j, ep in enumerate(svc.endpoints):
            where = f"services[{i}].endpoints[{j}]"
            if ep.ip not in name_of:
                order.append(ep.ip)
                name_of[ep.ip] = names.get((i, j), f"{svc.name}-{j + 1}")
                local_of[ep.ip] = ep.local
                ports[ep.ip] = set()
            elif (i, j) in names and names[(i, j)] != name_of[ep.ip]:
                raise UsageError(f"{source}: {where}.pod: {ep.ip} is already named {name_of[ep.ip]!r}")
            elif ep.local != local_of[ep.ip] and ep.ip != node_ip:
                raise UsageError(f"{source}: {where}.local: {ep.ip} is local in one Service and remote in another")
            if svc.skipped:
                continue
            for sp in svc.ports:
                port = ep.port_for(sp)
                if port is not None:
                    ports[ep.ip].add((sp.protocol, port))
    seen: dict[str, str] = {}
    out = []
    for ip in order:
        name = name_of[ip]
        if name in seen:
            raise UsageError(f"{source}: endpoints {seen[name]} and {ip} are both named {name!r}")
        seen[name] = ip
        kind: Kind = "host" if ip == node_ip else "pod" if local_of[ip] else "remote"
        out.append(LabEndpoint(
            name=name, ip=ip, kind=kind,
            tcp_ports=tuple(sorted(p for proto, p in ports[ip] if proto == "TCP")),
            udp_ports=tuple(sorted(p for proto, p in ports[ip] if proto == "UDP")),
            unserved=tuple(sorted(f"{proto}/{p}" for proto, p in ports[ip] if proto == "SCTP")),
        ))
    return tuple(out)


# The default lab, identical to examples/lab.json (a test keeps them in step).
DEFAULT_LAB: dict[str, Any] = {
    "family": 4,
    "nodeIPs": ["192.168.49.2"],
    "clusterCIDR": "10.244.0.0/16",
    "masqueradeMark": "0x00004000",
    "randomFully": True,
    "kubeletFirewallJumps": True,
    "lab": {"clientIP": "203.0.113.10/24", "remoteNodeIP": "192.168.49.3"},
    "services": [
        {
            "namespace": "default", "name": "webapp", "type": "NodePort", "clusterIP": "10.103.46.104",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80, "nodePort": 31380}],
            "endpoints": [
                {"ip": "10.244.120.102", "local": True, "pod": "webapp-7c9f8d6b5-4xkqz"},
                {"ip": "10.244.120.103", "local": True, "pod": "webapp-7c9f8d6b5-9hvtm"},
            ],
        },
        {
            "namespace": "default", "name": "orders", "clusterIP": "10.108.31.7",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
        {
            "namespace": "shop", "name": "storefront", "type": "LoadBalancer", "clusterIP": "10.100.77.12",
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 31977, "loadBalancerIPs": ["192.168.49.200"],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30876}],
            "endpoints": [
                {"ip": "10.244.120.110", "local": True, "pod": "storefront-5d8b7c-pq2lw"},
                {"ip": "10.244.205.14", "pod": "storefront-5d8b7c-m7zrt"},
            ],
        },
        {
            "namespace": "default", "name": "cart", "clusterIP": "10.99.142.23",
            "sessionAffinity": "ClientIP", "sessionAffinityTimeout": 10800,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
            "endpoints": [
                {"ip": "10.244.120.120", "local": True, "pod": "cart-6f7d9-jx5tn"},
                {"ip": "10.244.205.21", "pod": "cart-6f7d9-b2wvk"},
                {"ip": "10.244.205.22", "pod": "cart-6f7d9-r8cgh"},
            ],
        },
        {
            "namespace": "kube-system", "name": "kube-dns", "clusterIP": "10.96.0.10",
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            ],
            "endpoints": [
                {"ip": "10.244.120.65", "local": True, "pod": "coredns-7db6d8ff4d-8mx2k"},
                {"ip": "10.244.205.2", "pod": "coredns-7db6d8ff4d-w5lz9"},
            ],
        },
    ],
}
