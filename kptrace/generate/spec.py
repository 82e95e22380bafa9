"""A small description of what kube-proxy sees on one node: Services, their endpoints,
and the node's proxy settings.

The dataclasses are frozen and normalise themselves on construction (lists become
tuples, addresses are written the way Go's ``net.IP.String()`` writes them), so two
specs that kube-proxy would treat alike compare equal.  Invalid values raise
``ValueError`` naming the field; :func:`spec_from_dict` and :func:`spec_from_flows`
prefix that name with the path inside the document (``services[2].ports[0].protocol``).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from typing import Any

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
TRAFFIC_POLICIES = ("Cluster", "Local")
SESSION_AFFINITIES = ("None", "ClientIP")
DEFAULT_AFFINITY_TIMEOUT = 10800  # Kubernetes' default sessionAffinityConfig timeout
LARGE_CLUSTER_THRESHOLD = 1000  # kube-proxy's largeClusterEndpointsThreshold

_IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _parse_ip(value: object, what: str) -> _IPAddress:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected an IP address string, got {value!r}")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"{what}: not an IP address: {value!r}") from None


def _parse_cidr(value: object, what: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected a CIDR string, got {value!r}")
    try:
        # kube-proxy trims padding (the API once let it through) and, like Go's
        # net.ParseCIDR, keeps only the network part.
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{what}: not a CIDR: {value!r}") from None


def _port(value: object, what: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: expected an integer port, got {value!r}")
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ValueError(f"{what}: port {value} out of range {low}-65535")
    return value


def _choice(value: object, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what}: must be one of {', '.join(allowed)}, got {value!r}")
    return value  # type: ignore[return-value]


def _strings(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{what}: expected a list of strings, got {value!r}")
    items = tuple(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ValueError(f"{what}[{i}]: expected a string, got {item!r}")
    return items


def _bool(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: expected true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class ServicePort:
    """One port of a Service.  ``target_port`` is the endpoint port used for endpoints
    that do not name their own ports (None means the same as ``port``)."""

    name: str
    port: int
    protocol: str = "TCP"
    target_port: int | None = None
    node_port: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ValueError(f"name: expected a string, got {self.name!r}")
        _port(self.port, "port")
        _choice(self.protocol, PROTOCOLS, "protocol")
        if self.target_port is not None:
            _port(self.target_port, "target_port")
        _port(self.node_port, "node_port", allow_zero=True)

    @property
    def endpoint_port(self) -> int:
        return self.port if self.target_port is None else self.target_port


@dataclass(frozen=True)
class Endpoint:
    """One endpoint address of a Service.

    ``local`` means the endpoint runs on this node.  ``ready``/``serving``/``terminating``
    are the EndpointSlice conditions (kube-proxy falls back to serving+terminating
    endpoints when none is ready).  ``ports`` maps Service port names to this endpoint's
    port, as an EndpointSlice does; None means every Service port at its target port.
    A mapping that leaves out a port name means the endpoint does not serve that port.
    """

    ip: str
    ready: bool = True
    local: bool = False
    serving: bool = True
    terminating: bool = False
    ports: tuple[tuple[str, int], ...] | None = None

    def __post_init__(self) -> None:
        _set(self, "ip", str(_parse_ip(self.ip, "ip")))
        for flag in ("ready", "local", "serving", "terminating"):
            _bool(getattr(self, flag), flag)
        if self.ports is not None:
            items = self.ports.items() if isinstance(self.ports, Mapping) else self.ports
            pairs: list[tuple[str, int]] = []
            for item in items:
                if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str)):
                    raise ValueError(f"ports: expected name -> port pairs, got {item!r}")
                pairs.append((item[0], _port(item[1], f"ports.{item[0]}")))
            _set(self, "ports", tuple(sorted(pairs)))

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.ip).version

    def port_for(self, service_port: ServicePort) -> int | None:
        """The port this endpoint serves ``service_port`` on, or None if it does not."""
        if self.ports is None:
            return service_port.endpoint_port
        for name, port in self.ports:
            if name == service_port.name:
                return port
        return None


@dataclass(frozen=True)
class Service:
    """A Kubernetes Service as kube-proxy sees it.

    ``cluster_ips`` may hold one address per family (or ``"None"`` for a headless
    Service, which kube-proxy skips, as it skips ExternalName Services).
    ``load_balancer_ips`` are the VIP-mode ``status.loadBalancer.ingress`` IPs.
    ``health_check_node_port`` is only used, as in kube-proxy, for a LoadBalancer with
    externalTrafficPolicy Local.
    """

    namespace: str
    name: str
    type: str = "ClusterIP"
    cluster_ips: tuple[str, ...] = ()
    ports: tuple[ServicePort, ...] = ()
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    session_affinity: str = "None"
    affinity_timeout: int = DEFAULT_AFFINITY_TIMEOUT
    health_check_node_port: int = 0
    endpoints: tuple[Endpoint, ...] = ()

    def __post_init__(self) -> None:
        for attr in ("namespace", "name"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value or "/" in value or " " in value:
                raise ValueError(f"{attr}: expected a non-empty name without '/' or spaces, got {value!r}")
        _choice(self.type, SERVICE_TYPES, "type")
        ips = []
        for i, ip in enumerate(_strings(self.cluster_ips, "cluster_ips")):
            ips.append(ip if ip == "None" else str(_parse_ip(ip, f"cluster_ips[{i}]")))
        _set(self, "cluster_ips", tuple(ips))
        ports = tuple(self.ports)
        seen: set[str] = set()
        for i, sp in enumerate(ports):
            if not isinstance(sp, ServicePort):
                raise ValueError(f"ports[{i}]: expected a ServicePort, got {sp!r}")
            if sp.name in seen:
                raise ValueError(f"ports[{i}].name: duplicate port name {sp.name!r}")
            seen.add(sp.name)
            if sp.node_port and self.type not in ("NodePort", "LoadBalancer"):
                raise ValueError(f"ports[{i}].node_port: only NodePort and LoadBalancer Services have node ports")
        _set(self, "ports", ports)
        _set(self, "external_ips", tuple(
            str(_parse_ip(ip, f"external_ips[{i}]"))
            for i, ip in enumerate(_strings(self.external_ips, "external_ips"))))
        _set(self, "load_balancer_ips", tuple(
            str(_parse_ip(ip, f"load_balancer_ips[{i}]"))
            for i, ip in enumerate(_strings(self.load_balancer_ips, "load_balancer_ips"))))
        if self.load_balancer_ips and self.type != "LoadBalancer":
            raise ValueError("load_balancer_ips: only LoadBalancer Services have load-balancer IPs")
        _set(self, "load_balancer_source_ranges", tuple(
            str(_parse_cidr(c, f"load_balancer_source_ranges[{i}]"))
            for i, c in enumerate(_strings(self.load_balancer_source_ranges, "load_balancer_source_ranges"))))
        _choice(self.external_traffic_policy, TRAFFIC_POLICIES, "external_traffic_policy")
        _choice(self.internal_traffic_policy, TRAFFIC_POLICIES, "internal_traffic_policy")
        _choice(self.session_affinity, SESSION_AFFINITIES, "session_affinity")
        if isinstance(self.affinity_timeout, bool) or not isinstance(self.affinity_timeout, int) \
                or not 1 <= self.affinity_timeout <= 86400:
            raise ValueError(f"affinity_timeout: expected 1-86400 seconds, got {self.affinity_timeout!r}")
        _port(self.health_check_node_port, "health_check_node_port", allow_zero=True)
        endpoints = tuple(self.endpoints)
        for i, ep in enumerate(endpoints):
            if not isinstance(ep, Endpoint):
                raise ValueError(f"endpoints[{i}]: expected an Endpoint, got {ep!r}")
        _set(self, "endpoints", endpoints)

    @property
    def skipped(self) -> bool:
        """kube-proxy ignores headless and ExternalName Services."""
        return self.type == "ExternalName" or not self.cluster_ips or "None" in self.cluster_ips


@dataclass(frozen=True)
class ClusterSpec:
    """The Services one kube-proxy instance (one IP family) programs, and its settings.

    ``node_ips`` may mix families; the first address of ``family`` is the node IP
    kube-proxy uses (for loadBalancerSourceRanges that contain the node).
    ``cluster_cidr`` drives kube-proxy's ClusterCIDR local-traffic detector (None: no
    detector, so no ``! -s CIDR -j KUBE-MARK-MASQ`` rules).  ``nfacct`` says whether
    kube-proxy could create its nfacct counters (it then adds ``-m nfacct`` matches and
    the separate localhost NodePort rule).  ``masquerade_mark`` is written as given in
    the restore payload: kube-proxy's unit tests use ``0x4000``, a real kube-proxy
    ``0x00004000``; the kernel prints both as ``0x4000``.  ``random_fully`` adds
    ``--random-fully`` to MASQUERADE (real kube-proxy does when iptables supports it).
    ``kubelet_firewall_jumps`` adds the ``INPUT``/``OUTPUT -j KUBE-FIREWALL`` jumps that
    kube-proxy (and kubelet) install besides kube-proxy's own jump rules.
    """

    services: tuple[Service, ...] = ()
    node_ips: tuple[str, ...] = ()
    cluster_cidr: str | None = None
    family: int = 4
    masquerade_all: bool = False
    localhost_nodeports: bool = True
    nfacct: bool = False
    conntrack_tcp_be_liberal: bool = False
    masquerade_mark: str = "0x4000"
    random_fully: bool = False
    kubelet_firewall_jumps: bool = False
    large_cluster_threshold: int = LARGE_CLUSTER_THRESHOLD

    def __post_init__(self) -> None:
        if self.family not in (4, 6) or isinstance(self.family, bool):
            raise ValueError(f"family: must be 4 or 6, got {self.family!r}")
        services = tuple(self.services)
        names: set[tuple[str, str]] = set()
        for i, svc in enumerate(services):
            if not isinstance(svc, Service):
                raise ValueError(f"services[{i}]: expected a Service, got {svc!r}")
            key = (svc.namespace, svc.name)
            if key in names:
                raise ValueError(f"services[{i}]: duplicate Service {svc.namespace}/{svc.name}")
            names.add(key)
        _set(self, "services", services)
        _set(self, "node_ips", tuple(
            str(_parse_ip(ip, f"node_ips[{i}]")) for i, ip in enumerate(_strings(self.node_ips, "node_ips"))))
        if self.cluster_cidr is not None:
            net = _parse_cidr(self.cluster_cidr, "cluster_cidr")
            if net.version != self.family:
                raise ValueError(f"cluster_cidr: {self.cluster_cidr} is not an IPv{self.family} CIDR")
            _set(self, "cluster_cidr", str(net))
        for flag in ("masquerade_all", "localhost_nodeports", "nfacct", "conntrack_tcp_be_liberal",
                     "random_fully", "kubelet_firewall_jumps"):
            _bool(getattr(self, flag), flag)
        mark = self.masquerade_mark
        try:
            value = int(mark, 16) if isinstance(mark, str) and mark.lower().startswith("0x") else -1
        except ValueError:
            value = -1
        if not 0 < value < 2**32 or value & (value - 1):
            raise ValueError(f"masquerade_mark: expected a hex mark with one bit set (0x4000), got {mark!r}")
        if isinstance(self.large_cluster_threshold, bool) or not isinstance(self.large_cluster_threshold, int) \
                or self.large_cluster_threshold < 0:
            raise ValueError(f"large_cluster_threshold: expected a non-negative integer, "
                             f"got {self.large_cluster_threshold!r}")

    @property
    def node_ip(self) -> str | None:
        """The node IP of this spec's family (kube-proxy's ``nodeIP``)."""
        for ip in self.node_ips:
            if ipaddress.ip_address(ip).version == self.family:
                return ip
        return None


# --- plain dict (JSON/YAML) form -------------------------------------------------------

# dict key -> dataclass field, per level; keys follow the Kubernetes API spelling.
_SPEC_KEYS = {
    "family": "family", "nodeIPs": "node_ips", "clusterCIDR": "cluster_cidr",
    "masqueradeAll": "masquerade_all", "localhostNodePorts": "localhost_nodeports",
    "nfacct": "nfacct", "conntrackTCPBeLiberal": "conntrack_tcp_be_liberal",
    "masqueradeMark": "masquerade_mark", "randomFully": "random_fully",
    "kubeletFirewallJumps": "kubelet_firewall_jumps", "largeClusterThreshold": "large_cluster_threshold",
    "services": "services",
}
_SERVICE_KEYS = {
    "namespace": "namespace", "name": "name", "type": "type", "clusterIPs": "cluster_ips",
    "ports": "ports", "externalIPs": "external_ips", "loadBalancerIPs": "load_balancer_ips",
    "loadBalancerSourceRanges": "load_balancer_source_ranges",
    "externalTrafficPolicy": "external_traffic_policy", "internalTrafficPolicy": "internal_traffic_policy",
    "sessionAffinity": "session_affinity", "sessionAffinityTimeout": "affinity_timeout",
    "healthCheckNodePort": "health_check_node_port", "endpoints": "endpoints",
}
_PORT_KEYS = {"name": "name", "port": "port", "protocol": "protocol", "targetPort": "target_port",
              "nodePort": "node_port"}
_ENDPOINT_KEYS = {"ip": "ip", "ready": "ready", "local": "local", "serving": "serving",
                  "terminating": "terminating", "ports": "ports"}
_DICT_KEY = {attr: key for keys in (_SPEC_KEYS, _SERVICE_KEYS, _PORT_KEYS, _ENDPOINT_KEYS)
             for key, attr in keys.items()}


def _from_dict(cls: type, data: object, keys: Mapping[str, str], path: str,
           convert: Mapping[str, Any] | None = None) -> Any:
    """Construct ``cls`` from a dict, prefixing any ValueError with ``path``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{path or 'spec'}: expected an object, got {type(data).__name__}")
    prefix = f"{path}." if path else ""
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in keys:
            raise ValueError(f"{prefix}{key}: unknown field (expected one of {', '.join(keys)})")
        if convert and key in convert:
            value = convert[key](value, f"{prefix}{key}")
        kwargs[keys[key]] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        missing = [f.name for f in fields(cls) if f.name not in kwargs and f.default is MISSING]
        raise ValueError(f"{prefix}{_dict_path(missing[0] if missing else '?')}: required field missing") from exc
    except ValueError as exc:
        attr, sep, rest = str(exc).partition(":")
        raise ValueError(f"{prefix}{_dict_path(attr)}{sep}{rest}") from None


def _dict_path(path: str) -> str:
    """Rename dataclass fields in an error path (``ports[0].node_port``) to the dict
    keys the user wrote (``ports[0].nodePort``)."""
    parts = []
    for part in path.split("."):
        name, bracket, index = part.partition("[")
        parts.append(_DICT_KEY.get(name, name) + bracket + index)
    return ".".join(parts)


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"{path}: expected a list, got {type(value).__name__}")
    return list(value)


def _endpoint_from_dict(data: object, path: str) -> Endpoint:
    if isinstance(data, str):  # shorthand: just the address
        data = {"ip": data}
    return _from_dict(Endpoint, data, _ENDPOINT_KEYS, path, {"ports": _endpoint_ports})


def _endpoint_ports(value: object, path: str) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: expected an object of port name -> port, got {value!r}")
    return dict(value)


def _service_from_dict(data: object, path: str) -> Service:
    if isinstance(data, Mapping) and "clusterIP" in data:
        if "clusterIPs" in data:
            raise ValueError(f"{path}.clusterIP: give clusterIP or clusterIPs, not both")
        data = {("clusterIPs" if k == "clusterIP" else k): ([v] if k == "clusterIP" else v)
                for k, v in data.items()}
    return _from_dict(Service, data, _SERVICE_KEYS, path, {
        "ports": lambda v, p: tuple(_from_dict(ServicePort, x, _PORT_KEYS, f"{p}[{i}]")
                                    for i, x in enumerate(_list(v, p))),
        "endpoints": lambda v, p: tuple(_endpoint_from_dict(x, f"{p}[{i}]") for i, x in enumerate(_list(v, p))),
    })


def spec_from_dict(data: Mapping[str, Any]) -> ClusterSpec:
    """Build a :class:`ClusterSpec` from a JSON/YAML-style dict.

    Example::

        {"nodeIPs": ["192.168.49.2"], "clusterCIDR": "10.244.0.0/16",
         "services": [{"namespace": "default", "name": "web", "type": "NodePort",
                       "clusterIP": "10.96.0.20",
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
                       "endpoints": ["10.244.1.5", {"ip": "10.244.2.7", "local": true}]}]}

    Keys use the Kubernetes API spelling (``clusterIP``/``clusterIPs``, ``targetPort``,
    ``externalTrafficPolicy`` ...); see ``_SPEC_KEYS`` and friends for the full list.
    Unknown keys and bad values raise ValueError naming the field.
    """
    return _from_dict(ClusterSpec, data, _SPEC_KEYS, "", {
        "services": lambda v, p: tuple(_service_from_dict(x, f"{p}[{i}]") for i, x in enumerate(_list(v, p))),
    })


def spec_to_dict(spec: ClusterSpec) -> dict[str, Any]:
    """The inverse of :func:`spec_from_dict`; fields at their default are left out."""

    def plain(obj: Any, keys: Mapping[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        defaults = {f.name: f.default for f in fields(obj)}  # MISSING for required fields
        for key, attr in keys.items():
            value = getattr(obj, attr)
            if value == defaults[attr]:
                continue
            if attr == "services":
                value = [plain(s, _SERVICE_KEYS) for s in value]
            elif attr == "ports" and isinstance(obj, Service):
                value = [plain(p, _PORT_KEYS) for p in value]
            elif attr == "endpoints":
                value = [plain(e, _ENDPOINT_KEYS) for e in value]
            elif attr == "ports" and isinstance(obj, Endpoint):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    return plain(spec, _SPEC_KEYS)


# --- kube-proxy reference data (flows.json "setup") ------------------------------------

def spec_from_flows(doc: Mapping[str, Any], *, node_name: str = "test-node", nfacct: bool = True) -> ClusterSpec:
    """Build the spec kube-proxy's unit test used, from a reference ``T.flows.json``.

    ``setup`` holds Services (kube-proxy's ``makeTestService`` fields) and
    EndpointSlices; ``nodeIPs`` and ``clusterCIDR`` come from the top level.  An
    endpoint is local when its ``nodeName`` is ``node_name`` (the tests' node is
    ``test-node``).  kube-proxy's test fake has working nfacct counters, hence
    ``nfacct=True``.
    """
    if not isinstance(doc, Mapping):
        raise ValueError("flows: expected an object")
    setup = doc.get("setup")
    if not isinstance(setup, Mapping):
        raise ValueError("setup: missing (this reference file has no generated ruleset)")
    raw_services = _list(setup.get("services", []), "setup.services")
    family_name = setup.get("ipFamily")
    if family_name is not None:
        family = {"IPv4": 4, "IPv6": 6}.get(family_name)
        if family is None:
            raise ValueError(f"setup.ipFamily: must be IPv4 or IPv6, got {family_name!r}")
    else:
        first = next((s.get("clusterIP") for s in raw_services if isinstance(s, Mapping)), None)
        family = 6 if isinstance(first, str) and ":" in first else 4
    proxier = setup.get("proxier")
    localhost = proxier.get("localhostNodePorts", True) if isinstance(proxier, Mapping) else True

    slices: dict[tuple[object, object], list[tuple[str, Mapping[str, Any]]]] = {}
    for i, sl in enumerate(_list(setup.get("endpointSlices", []), "setup.endpointSlices")):
        if not isinstance(sl, Mapping):
            raise ValueError(f"setup.endpointSlices[{i}]: expected an object")
        slices.setdefault((sl.get("namespace"), sl.get("service")), []).append((f"setup.endpointSlices[{i}]", sl))

    services = []
    for i, raw in enumerate(raw_services):
        path = f"setup.services[{i}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: expected an object")
        svc_ports = []
        for j, p in enumerate(_list(raw.get("ports", []), f"{path}.ports")):
            data = dict(p) if isinstance(p, Mapping) else p
            if isinstance(data, dict) and isinstance(data.get("targetPort"), str):
                del data["targetPort"]  # a named target port is resolved by the EndpointSlice
            svc_ports.append(_from_dict(ServicePort, data, _PORT_KEYS, f"{path}.ports[{j}]"))
        eps = [ep for spath, sl in slices.get((raw.get("namespace"), raw.get("name")), [])
               for ep in _slice_endpoints(sl, spath, svc_ports, node_name)]
        data = {
            "namespace": raw.get("namespace"), "name": raw.get("name"),
            "type": raw.get("type", "ClusterIP"),
            "clusterIPs": list(raw.get("clusterIPs") or ([raw["clusterIP"]] if raw.get("clusterIP") else [])),
            "externalIPs": raw.get("externalIPs", []),
            "loadBalancerIPs": raw.get("loadBalancerIngress", []),
            "loadBalancerSourceRanges": raw.get("loadBalancerSourceRanges", []),
            "externalTrafficPolicy": raw.get("externalTrafficPolicy") or "Cluster",
            "internalTrafficPolicy": raw.get("internalTrafficPolicy") or "Cluster",
            "sessionAffinity": raw.get("sessionAffinity") or "None",
            "sessionAffinityTimeout": raw.get("sessionAffinityTimeout", DEFAULT_AFFINITY_TIMEOUT),
            "healthCheckNodePort": raw.get("healthCheckNodePort", 0),
        }
        svc = _from_dict(Service, data, _SERVICE_KEYS, path)
        services.append(replace(svc, ports=tuple(svc_ports), endpoints=tuple(eps)))

    return _from_dict(ClusterSpec, {
        "family": family,
        "nodeIPs": list(doc.get("nodeIPs", [])),
        "clusterCIDR": doc.get("clusterCIDR"),
        "localhostNodePorts": localhost,
        "nfacct": nfacct,
        "services": services,
    }, _SPEC_KEYS, "")


def _slice_endpoints(sl: Mapping[str, Any], path: str, svc_ports: list[ServicePort],
                     node_name: str) -> list[Endpoint]:
    """The endpoints of one EndpointSlice, each naming the Service ports it serves.

    kube-proxy matches slice ports to Service ports by name and protocol, and ignores
    slice ports without a port number and endpoints without addresses.
    """
    ports: list[tuple[str, int]] = []
    for j, p in enumerate(_list(sl.get("ports", []), f"{path}.ports")):
        if not isinstance(p, Mapping):
            raise ValueError(f"{path}.ports[{j}]: expected an object")
        name = p.get("name", "")
        protocol = _choice(p.get("protocol", "TCP"), PROTOCOLS, f"{path}.ports[{j}].protocol")
        if p.get("port") and any(sp.name == name and sp.protocol == protocol for sp in svc_ports):
            ports.append((name, _port(p["port"], f"{path}.ports[{j}].port")))
    out = []
    for j, ep in enumerate(_list(sl.get("endpoints", []), f"{path}.endpoints")):
        epath = f"{path}.endpoints[{j}]"
        if not isinstance(ep, Mapping):
            raise ValueError(f"{epath}: expected an object")
        addresses = _list(ep.get("addresses", []), f"{epath}.addresses")
        if not addresses:
            continue
        cond = ep.get("conditions") or {}
        try:
            out.append(Endpoint(
                ip=addresses[0],
                ready=cond.get("ready") is not False,  # unset means ready
                serving=cond.get("serving") is not False,
                terminating=cond.get("terminating") is True,
                local=ep.get("nodeName") == node_name,
                ports=tuple(ports),
            ))
        except ValueError as exc:
            raise ValueError(f"{epath}.{exc}") from None
    return out


# --- synthetic clusters (benchmarks, tests) ---------------------------------------------

def synthetic_spec(services: int, endpoints: int, *, seed: int = 1) -> ClusterSpec:
    """A deterministic node of a made-up cluster: ``services`` Services with
    ``endpoints`` endpoints each.

    Service CIDR 10.96.0.0/12, pod CIDR 10.244.0.0/16 (a /24 per node; this node,
    192.168.49.2, owns 10.244.0.0/24, so its pods are the local endpoints), node ports
    30000-32767, load-balancer IPs from 172.18.0.0/16.  The mix: ``default/kubernetes``
    and ``kube-system/kube-dns``, then about 80% ClusterIP (a tenth with two ports),
    12% NodePort, 5% LoadBalancer (some with source ranges), 3% with
    externalTrafficPolicy Local, about 2% with ClientIP affinity, 1% with an external
    IP; ``default/no-endpoints`` has none.  Pod addresses are reused once the pod
    CIDR runs out (a pod backing several Services).
    """
    if services < 0 or endpoints < 0:
        raise ValueError("services/endpoints: must be non-negative")
    rng = random.Random(seed)
    service_net = ipaddress.ip_network("10.96.0.0/12")
    nodes = 254
    next_host = [0] * nodes
    cluster_ips = iter(rng.sample(range(11, service_net.num_addresses - 1), k=max(services, 1)))
    node_ports = iter(rng.sample(range(30000, 32768), k=2768))
    lb_hosts = iter(range(2, 65534))

    def pod_ip() -> tuple[str, bool]:
        node = rng.randrange(nodes)
        host = next_host[node] % 254 + 1
        next_host[node] += 1
        return f"10.244.{node}.{host}", node == 0

    def pod_endpoints(count: int) -> tuple[Endpoint, ...]:
        seen: dict[str, bool] = {}
        while len(seen) < count:
            ip, local = pod_ip()
            seen.setdefault(ip, local)
        return tuple(Endpoint(ip, local=local) for ip, local in seen.items())

    out = [
        Service("default", "kubernetes", cluster_ips=("10.96.0.1",),
                ports=(ServicePort("https", 443, target_port=6443),),
                endpoints=(Endpoint("192.168.49.2", local=True),)),
        Service("kube-system", "kube-dns", cluster_ips=("10.96.0.10",),
                ports=(ServicePort("dns", 53, "UDP"), ServicePort("dns-tcp", 53, "TCP"),
                       ServicePort("metrics", 9153, "TCP")),
                endpoints=pod_endpoints(2)),
        Service("default", "no-endpoints", cluster_ips=("10.96.0.11",), ports=(ServicePort("http", 80),)),
    ]
    for n in range(max(services - len(out), 0)):
        roll = rng.random()
        kind = "ClusterIP" if roll < 0.80 else "NodePort" if roll < 0.92 else "LoadBalancer"
        ports = [ServicePort("http", 80, target_port=8080)]
        if rng.random() < 0.10:
            ports.append(ServicePort("https", 443, target_port=8443))
        kwargs: dict[str, Any] = {}
        try:
            if kind != "ClusterIP":
                ports = [replace(p, node_port=next(node_ports)) for p in ports]
            if kind == "LoadBalancer":
                host = next(lb_hosts)
                kwargs["load_balancer_ips"] = (f"172.18.{host // 256}.{host % 256}",)
                if rng.random() < 0.3:
                    kwargs["load_balancer_source_ranges"] = ("203.0.113.0/24", "198.51.100.0/24")
        except StopIteration:  # node ports used up: fall back to ClusterIP
            kind, ports, kwargs = "ClusterIP", [replace(p, node_port=0) for p in ports], {}
        if kind != "ClusterIP" and rng.random() < 0.25:
            kwargs["external_traffic_policy"] = "Local"
            if kind == "LoadBalancer":
                try:
                    kwargs["health_check_node_port"] = next(node_ports)
                except StopIteration:
                    pass
        if rng.random() < 0.02:
            kwargs["session_affinity"] = "ClientIP"
        if rng.random() < 0.01:
            kwargs["external_ips"] = (f"192.168.50.{rng.randrange(1, 255)}",)
        ip = service_net.network_address + next(cluster_ips)
        out.append(Service(f"ns{n % 100}", f"svc{n}", type=kind, cluster_ips=(str(ip),), ports=tuple(ports),
                           endpoints=pod_endpoints(endpoints), **kwargs))
    return ClusterSpec(services=tuple(out[:services]) if services < len(out) else tuple(out),
                       node_ips=("192.168.49.2",), cluster_cidr="10.244.0.0/16")


__all__ = [
    "ClusterSpec", "Endpoint", "Service", "ServicePort",
    "spec_from_dict", "spec_from_flows", "spec_to_dict", "synthetic_spec",
    "PROTOCOLS", "SERVICE_TYPES", "LARGE_CLUSTER_THRESHOLD",
]

