"""Render a :class:`ClusterSpec` as kube-proxy's iptables rules.

Two spellings of the same ruleset:

* :func:`render_restore` - the payload kube-proxy (iptables mode) hands to
  ``iptables-restore``: its own option order (``-m comment --comment ... -m tcp -p tcp
  -d 172.30.0.41 --dport 80``), bare addresses, ``MARK --or-mark``.
* :func:`render_save` - what ``iptables-save`` prints once that payload and kube-proxy's
  jump rules from the built-in chains are loaded: generic options first (``! -s``, ``-d``,
  ``-p``), ``/32`` or ``/128``, ``--set-xmark``, matches' default options spelled out,
  chains sorted.

Both follow kube-proxy's ``syncProxyRules`` (pkg/proxy/iptables/proxier.go).  Every rule
site below writes both spellings side by side, so a reader can check each against
the other.  Real kube-proxy walks Services in Go map order; we walk them sorted by
``namespace/name`` then port name, and by default print chains and rules grouped the
way kube-proxy's unit tests sort them (``order="sorted"``), which is what the reference
fixtures hold.  ``order="sync"`` keeps kube-proxy's write order instead: chains and
rules interleaved as one sync emits them.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from kptrace.generate.spec import ClusterSpec, Endpoint, Service, ServicePort
from kptrace.kube.naming import endpoint_chain, service_chain, service_port_name

Order = Literal["sorted", "sync"]

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"

NFACCT_INVALID = "ct_state_invalid_dropped_pkts"
NFACCT_LOCALHOST = "localhost_nps_accepted_pkts"

BUILTIN_CHAINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"),
                  "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")}

# kube-proxy's jump rules from the built-in chains (iptablesJumpChains), in its order:
# (table, built-in chain, rule arguments).  kube-proxy prepends each in turn.
_LB_FIREWALL = '-m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" ' \
    "-j KUBE-PROXY-FIREWALL"
_EXTERNAL = '-m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" ' \
    "-j KUBE-EXTERNAL-SERVICES"
_PORTALS = '-m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
_JUMP_CHAINS = (
    ("filter", "INPUT", _EXTERNAL),
    ("filter", "FORWARD", _EXTERNAL),
    ("filter", "INPUT", '-m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS'),
    ("filter", "FORWARD", _PORTALS),
    ("filter", "OUTPUT", _PORTALS),
    ("filter", "FORWARD", '-m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD'),
    ("filter", "INPUT", _LB_FIREWALL),
    ("filter", "OUTPUT", _LB_FIREWALL),
    ("filter", "FORWARD", _LB_FIREWALL),
    ("nat", "OUTPUT", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", "PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES'),
    ("nat", "POSTROUTING", '-m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'),
)
# Kubelet's firewall jumps (iptablesKubeletJumpChains), which kube-proxy ensures after its own.
_KUBELET_JUMP_CHAINS = (("filter", "INPUT", "-j KUBE-FIREWALL"), ("filter", "OUTPUT", "-j KUBE-FIREWALL"))


@dataclass
class _Table:
    """One table's chains and rules, in kube-proxy's write order."""

    chains: list[str] = field(default_factory=list)
    # A rule may be written before its chain's declaration line, as kube-proxy does.
    rules: defaultdict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    flat: list[str] | None = None  # every rule in write order, kept for order="sync"

    def chain(self, name: str) -> None:
        self.chains.append(name)


class _Family:
    """Per-family spellings."""

    def __init__(self, family: int) -> None:
        self.v6 = family == 6
        self.host = "/128" if self.v6 else "/32"
        self.reject = " --reject-with icmp6-port-unreachable" if self.v6 else " --reject-with icmp-port-unreachable"
        self.mask = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" if self.v6 else "255.255.255.255"

    def endpoint(self, ip: str, port: int) -> str:
        return f"[{ip}]:{port}" if self.v6 else f"{ip}:{port}"


def _probability(n: int) -> str:
    """kube-proxy's ``computeProbability``: Go's ``%0.10f`` of 1/n."""
    return f"{1.0 / n:0.10f}"


def _saved_probability(restore: str) -> str:
    """How iptables prints a ``--probability``: libxt_statistic stores
    ``lround(p * 2^31)`` and prints it back divided by 2^31 with ``%.11f``."""
    scaled = float(restore) * 0x80000000
    whole = int(scaled)
    if scaled - whole >= 0.5:  # lround: halves away from zero (p is positive)
        whole += 1
    return f"{whole / 0x80000000:.11f}"


@dataclass
class _PortInfo:
    """What kube-proxy's ``servicePortInfo`` holds for one Service port, plus its
    endpoints as kube-proxy's EndpointSliceCache hands them over."""

    svc: Service
    sp: ServicePort
    name: str  # ns/name:port
    protocol: str  # lower case
    cluster_ip: str
    external_ips: list[str]
    lb_ips: list[str]
    source_ranges: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    external_local: bool
    internal_local: bool
    health_check_node_port: int
    endpoints: list[tuple[str, Endpoint]]  # ("ip:port", endpoint), sorted, deduplicated

    @property
    def externally_accessible(self) -> bool:
        return bool(self.sp.node_port or self.lb_ips or self.external_ips)


def _version(ip: str) -> int:
    """IP version of an address the spec already normalised."""
    return 6 if ":" in ip else 4


def _port_infos(spec: ClusterSpec, fam: _Family) -> list[_PortInfo]:
    family = spec.family
    infos = []
    for svc in sorted(spec.services, key=lambda s: f"{s.namespace}/{s.name}"):
        if svc.skipped:
            continue
        cluster_ip = next((ip for ip in svc.cluster_ips if _version(ip) == family), None)
        if cluster_ip is None:
            continue  # single-stack Service of the other family
        external_ips = [ip for ip in svc.external_ips if _version(ip) == family]
        lb_ips = [ip for ip in svc.load_balancer_ips if _version(ip) == family]
        ranges = [ipaddress.ip_network(c) for c in svc.load_balancer_source_ranges]
        ranges = [n for n in ranges if n.version == family]
        if any(n.prefixlen == 0 for n in ranges):
            ranges = []  # a zero-masked range means "allow all", like no ranges
        externally_visible = svc.type in ("NodePort", "LoadBalancer") or (
            svc.type == "ClusterIP" and bool(svc.external_ips))
        external_local = externally_visible and svc.external_traffic_policy == "Local"
        hc_port = svc.health_check_node_port if svc.type == "LoadBalancer" and external_local else 0
        family_eps = [ep for ep in svc.endpoints if _version(ep.ip) == family]
        for sp in sorted(svc.ports, key=lambda p: (p.name, p.protocol)):
            by_key: dict[str, Endpoint] = {}
            for ep in family_eps:
                port = ep.port_for(sp)
                if port is None:
                    continue
                key = fam.endpoint(ep.ip, port)
                # A duplicate address keeps the non-terminating copy (EndpointSliceCache).
                if key not in by_key or not ep.terminating:
                    by_key[key] = ep
            infos.append(_PortInfo(
                svc=svc, sp=sp, name=service_port_name(svc.namespace, svc.name, sp.name),
                protocol=sp.protocol.lower(), cluster_ip=cluster_ip, external_ips=external_ips,
                lb_ips=lb_ips, source_ranges=ranges, external_local=external_local,
                internal_local=svc.internal_traffic_policy == "Local", health_check_node_port=hc_port,
                endpoints=sorted(by_key.items()),
            ))
    return infos


def _categorize(info: _PortInfo) -> tuple[list[tuple[str, Endpoint]] | None, list[tuple[str, Endpoint]] | None,
                                          list[tuple[str, Endpoint]], bool]:
    """kube-proxy's ``CategorizeEndpoints`` (without topology hints): cluster endpoints,
    local endpoints, all endpoints reachable from this node, and whether any endpoint
    anywhere is usable."""
    eps = info.endpoints
    if not eps:
        return None, None, [], False
    accessible = info.externally_accessible
    uses_cluster = not info.internal_local or accessible
    uses_local = info.internal_local or (info.external_local and accessible)
    cluster: list[tuple[str, Endpoint]] | None = None
    has_any = False
    if uses_cluster:
        cluster = [e for e in eps if e[1].ready]
        if not cluster:
            cluster = [e for e in eps if e[1].serving and e[1].terminating]
        has_any = bool(cluster)
    if not uses_local:
        return cluster, None, cluster or [], has_any
    local: list[tuple[str, Endpoint]] | None = None
    local_ready = local_terminating = False
    for _, ep in eps:
        if ep.ready:
            has_any = True
            local_ready = local_ready or ep.local
        elif ep.serving and ep.terminating:
            has_any = True
            local_terminating = local_terminating or ep.local
    if local_ready:
        local = [e for e in eps if e[1].local and e[1].ready]
    elif local_terminating:
        local = [e for e in eps if e[1].local and e[1].serving and e[1].terminating]
    if cluster is None:
        return None, local, local or [], has_any
    if not local_terminating or local_ready:
        return cluster, local, cluster, has_any
    merged = dict(cluster)
    merged.update(local or [])
    return cluster, local, sorted(merged.items()), has_any


def _build(spec: ClusterSpec, save: bool, keep_flat: bool = False) -> dict[str, _Table]:
    """Compute every kube-proxy rule, in the restore (``save=False``) or the
    iptables-save (``save=True``) spelling."""
    fam = _Family(spec.family)
    h = fam.host
    tables = {"filter": _Table(), "nat": _Table()}
    filt, nat = tables["filter"], tables["nat"]
    if keep_flat:
        filt.flat, nat.flat = [], []

    def rule_adder(table: _Table) -> Callable[[str, str], None]:
        rules, flat = table.rules, table.flat
        if flat is None:
            def add(chain: str, line: str) -> None:
                rules[chain].append(line)
        else:
            def add(chain: str, line: str) -> None:
                rules[chain].append(line)
                flat.append(line)
        return add

    frule, nrule = rule_adder(filt), rule_adder(nat)
    for chain in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD, KUBE_NODEPORTS, KUBE_PROXY_FIREWALL):
        filt.chain(chain)
    for chain in (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING, KUBE_MARK_MASQ):
        nat.chain(chain)

    mark = spec.masquerade_mark
    hexmark = hex(int(mark, 16))  # the kernel keeps a number: 0x00004000 prints as 0x4000
    nrule(KUBE_POSTROUTING, f"-A KUBE-POSTROUTING -m mark ! --mark {hexmark}/{hexmark} -j RETURN" if save
          else f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN")
    nrule(KUBE_POSTROUTING, f"-A KUBE-POSTROUTING -j MARK --set-xmark {hexmark}/0x0" if save
          else f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}")
    nrule(KUBE_POSTROUTING, '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
          "-j MASQUERADE" + (" --random-fully" if spec.random_fully else ""))
    nrule(KUBE_MARK_MASQ, f"-A KUBE-MARK-MASQ -j MARK --set-xmark {hexmark}/{hexmark}" if save
          else f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}")

    localhost_nodeports = spec.localhost_nodeports and not fam.v6
    if localhost_nodeports:
        # Mitigation for route_localnet (kubernetes#90259); kubelet writes the same rule.
        filt.chain(KUBE_FIREWALL)
        frule(KUBE_FIREWALL, '-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming '
              'localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP' if save
              else '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 '
              "! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")

    cidr = spec.cluster_cidr
    infos = _port_infos(spec, fam)
    total_endpoints = sum(len(i.endpoints) for i in infos)
    large = total_endpoints > spec.large_cluster_threshold
    node_ip = ipaddress.ip_address(spec.node_ip) if spec.node_ip else None
    # iptables-save prints nfacct's name after two spaces (a quirk of libxt_nfacct).
    nfacct_localhost = f" -m nfacct --nfacct-name {' ' if save else ''}{NFACCT_LOCALHOST}"
    probabilities: dict[int, str] = {}

    def probability(n: int) -> str:
        p = probabilities.get(n)
        if p is None:
            p = _probability(n)
            if save:
                p = _saved_probability(p)
            probabilities[n] = p
        return p

    for info in infos:
        name, p, port = info.name, info.protocol, info.sp.port
        cip = info.cluster_ip
        cluster_eps, local_eps, reachable, has_endpoints = _categorize(info)
        svc_chain = service_chain("KUBE-SVC-", name, p)
        svl_chain = service_chain("KUBE-SVL-", name, p)
        ext_chain = service_chain("KUBE-EXT-", name, p)
        fw_chain = service_chain("KUBE-FW-", name, p)
        uses_cluster_chain = bool(cluster_eps) and (not info.internal_local or info.externally_accessible)
        uses_local_chain = bool(local_eps) and (
            info.internal_local or (info.external_local and info.externally_accessible))

        internal_chain = svc_chain
        has_internal = has_endpoints
        if info.internal_local:
            internal_chain = svl_chain
            has_internal = has_endpoints and bool(local_eps)
        external_policy_chain = svc_chain
        has_external = has_endpoints
        if info.external_local:
            external_policy_chain = svl_chain
            has_external = has_endpoints and bool(local_eps)
        uses_ext_chain = has_endpoints and info.externally_accessible
        uses_fw_chain = has_endpoints and bool(info.lb_ips) and bool(info.source_ranges)
        lb_chain = fw_chain if uses_fw_chain else ext_chain

        internal_target = external_target = ""
        internal_comment = external_comment = ""
        if not has_endpoints:
            internal_target = external_target = "REJECT"
            internal_comment = external_comment = f'"{name} has no endpoints"'
        else:
            if not has_internal:
                internal_target, internal_comment = "DROP", f'"{name} has no local endpoints"'
            if not has_external:
                external_target, external_comment = "DROP", f'"{name} has no local endpoints"'
        int_suffix = fam.reject if save and internal_target == "REJECT" else ""
        ext_suffix = fam.reject if save and external_target == "REJECT" else ""

        def portal(chain: str, addr: object, comment: str, target: str, suffix: str = "") -> str:
            """``-d ADDR -p P --dport PORT -j TARGET`` in iptables-save's or kube-proxy's spelling."""
            if save:
                return (f"-A {chain} -d {addr}{h} -p {p} -m comment --comment {comment} -m {p} "
                        f"--dport {port} -j {target}{suffix}")
            return f"-A {chain} -m comment --comment {comment} -m {p} -p {p} -d {addr} --dport {port} -j {target}"

        # Capture the cluster IP.
        if has_internal:
            nrule(KUBE_SERVICES, portal("KUBE-SERVICES", cip, f'"{name} cluster IP"', internal_chain))
        else:
            frule(KUBE_SERVICES, portal("KUBE-SERVICES", cip, internal_comment, internal_target, int_suffix))

        # Capture external IPs.
        for eip in info.external_ips:
            if has_endpoints:
                nrule(KUBE_SERVICES, portal("KUBE-SERVICES", eip, f'"{name} external IP"', ext_chain))
            if not has_external:
                frule(KUBE_EXTERNAL_SERVICES,
                      portal("KUBE-EXTERNAL-SERVICES", eip, external_comment, external_target, ext_suffix))

        # Capture load-balancer IPs.
        for lbip in info.lb_ips:
            if has_endpoints:
                nrule(KUBE_SERVICES, portal("KUBE-SERVICES", lbip, f'"{name} loadbalancer IP"', lb_chain))
            if uses_fw_chain:
                frule(KUBE_PROXY_FIREWALL,
                      portal("KUBE-PROXY-FIREWALL", lbip, f'"{name} traffic not accepted by {fw_chain}"', "DROP"))
        if not has_external:
            for lbip in info.lb_ips:
                frule(KUBE_EXTERNAL_SERVICES,
                      portal("KUBE-EXTERNAL-SERVICES", lbip, external_comment, external_target, ext_suffix))

        # Capture node ports.
        node_port = info.sp.node_port
        if node_port:
            if has_endpoints:
                # The localhost rule exists only to count packets in an nfacct counter.
                if localhost_nodeports and spec.nfacct:
                    nrule(KUBE_NODEPORTS,
                          f'-A KUBE-NODEPORTS -d 127.0.0.0/8 -p {p} -m comment --comment "{name}" -m {p} '
                          f"--dport {node_port}{nfacct_localhost} -j {ext_chain}" if save else
                          f"-A KUBE-NODEPORTS -m comment --comment {name} -m {p} -p {p} -d 127.0.0.0/8 "
                          f"--dport {node_port}{nfacct_localhost} -j {ext_chain}")
                nrule(KUBE_NODEPORTS,
                      f'-A KUBE-NODEPORTS -p {p} -m comment --comment "{name}" -m {p} --dport {node_port} '
                      f"-j {ext_chain}" if save else
                      f"-A KUBE-NODEPORTS -m comment --comment {name} -m {p} -p {p} --dport {node_port} "
                      f"-j {ext_chain}")
            if not has_external:
                frule(KUBE_EXTERNAL_SERVICES,
                      f"-A KUBE-EXTERNAL-SERVICES -p {p} -m comment --comment {external_comment} -m addrtype "
                      f"--dst-type LOCAL -m {p} --dport {node_port} -j {external_target}{ext_suffix}" if save else
                      f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {external_comment} -m addrtype --dst-type "
                      f"LOCAL -m {p} -p {p} --dport {node_port} -j {external_target}")

        # Health-check node port: accepted whether or not there are local endpoints.
        hc = info.health_check_node_port
        if hc:
            frule(KUBE_NODEPORTS,
                  f'-A KUBE-NODEPORTS -p tcp -m comment --comment "{name} health check node port" -m tcp '
                  f"--dport {hc} -j ACCEPT" if save else
                  f'-A KUBE-NODEPORTS -m comment --comment "{name} health check node port" -m tcp -p tcp '
                  f"--dport {hc} -j ACCEPT")

        # Masquerade off-cluster traffic to the cluster IP (it may leave the node).
        if has_internal:
            if spec.masquerade_all or cidr:
                not_local = f" ! -s {cidr}" if not spec.masquerade_all else ""
                nrule(internal_chain,
                      f"-A {internal_chain}{not_local} -d {cip}{h} -p {p} -m comment --comment "
                      f'"{name} cluster IP" -m {p} --dport {port} -j KUBE-MARK-MASQ' if save else
                      f'-A {internal_chain} -m comment --comment "{name} cluster IP" -m {p} -p {p} -d {cip} '
                      f"--dport {port}{not_local} -j KUBE-MARK-MASQ")

        # External destinations (node ports, external and load-balancer IPs).
        if uses_ext_chain:
            nat.chain(ext_chain)
            if not info.external_local:
                nrule(ext_chain, f'-A {ext_chain} -m comment --comment "masquerade traffic for {name} external '
                      'destinations" -j KUBE-MARK-MASQ')
            else:
                if cidr:
                    # Pods reaching an external address short-circuit to the cluster policy.
                    nrule(ext_chain,
                          f'-A {ext_chain} -s {cidr} -m comment --comment "pod traffic for {name} external '
                          f'destinations" -j {svc_chain}' if save else
                          f'-A {ext_chain} -m comment --comment "pod traffic for {name} external destinations" '
                          f"-s {cidr} -j {svc_chain}")
                nrule(ext_chain, f'-A {ext_chain} -m comment --comment "masquerade LOCAL traffic for {name} '
                      'external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ')
                nrule(ext_chain, f'-A {ext_chain} -m comment --comment "route LOCAL traffic for {name} external '
                      f'destinations" -m addrtype --src-type LOCAL -j {svc_chain}')
            if has_external:
                nrule(ext_chain, f"-A {ext_chain} -j {external_policy_chain}")

        # loadBalancerSourceRanges.
        if uses_fw_chain:
            nat.chain(fw_chain)
            fw_comment = f'-m comment --comment "{name} loadbalancer IP"'
            allow_from_node = False
            for net in info.source_ranges:
                nrule(fw_chain, f"-A {fw_chain} -s {net} {fw_comment} -j {ext_chain}" if save
                      else f"-A {fw_chain} {fw_comment} -s {net} -j {ext_chain}")
                if node_ip is not None and node_ip in net:
                    allow_from_node = True
            if allow_from_node:
                # A VIP routed back to this node arrives with the VIP as its source.
                for lbip in info.lb_ips:
                    nrule(fw_chain, f"-A {fw_chain} -s {lbip}{h} {fw_comment} -j {ext_chain}" if save
                          else f"-A {fw_chain} {fw_comment} -s {lbip} -j {ext_chain}")
            nrule(fw_chain, f'-A {fw_chain} -m comment --comment "other traffic to {name} will be dropped by '
                  'KUBE-PROXY-FIREWALL"')

        affinity = info.svc.session_affinity == "ClientIP"
        timeout = info.svc.affinity_timeout
        sep_chains = {key: endpoint_chain(name, p, key) for key, _ in reachable}

        def service_to_endpoints(chain: str, eps: list[tuple[str, Endpoint]]) -> None:
            nat.chain(chain)
            rules = nat.rules[chain]
            flat = nat.flat
            if affinity:
                for key, _ in eps:
                    sep = sep_chains[key]
                    comment = "" if large else f' -m comment --comment "{name} -> {key}"'
                    line = (f"-A {chain}{comment} -m recent --rcheck --seconds {timeout} --reap --name {sep} "
                            f"--mask {fam.mask} --rsource -j {sep}" if save else
                            f"-A {chain}{comment} -m recent --name {sep} --rcheck --seconds {timeout} --reap "
                            f"-j {sep}")
                    rules.append(line)
                    if flat is not None:
                        flat.append(line)
            n = len(eps)
            for i, (key, _) in enumerate(eps):
                comment = "" if large else f' -m comment --comment "{name} -> {key}"'
                stat = f" -m statistic --mode random --probability {probability(n - i)}" if i < n - 1 else ""
                line = f"-A {chain}{comment}{stat} -j {sep_chains[key]}"
                rules.append(line)
                if flat is not None:
                    flat.append(line)

        if uses_cluster_chain:
            service_to_endpoints(svc_chain, cluster_eps or [])
        if uses_local_chain:
            service_to_endpoints(svl_chain, local_eps or [])

        # Per-endpoint chains.
        rules_by_chain = nat.rules
        flat = nat.flat
        chains = nat.chains
        if save:
            comment = "" if large else f' -m comment --comment "{name}"'
            recent_tail = f" --mask {fam.mask} --rsource"
        else:
            comment = "" if large else f" -m comment --comment {name}"
        for key, ep in reachable:
            sep = sep_chains[key]
            chains.append(sep)
            if save:
                recent = f" -m recent --set --name {sep}{recent_tail}" if affinity else ""
                lines = [f"-A {sep} -s {ep.ip}{h}{comment} -j KUBE-MARK-MASQ",
                         f"-A {sep} -p {p}{comment}{recent} -m {p} -j DNAT --to-destination {key}"]
            else:
                recent = f" -m recent --name {sep} --set" if affinity else ""
                lines = [f"-A {sep}{comment} -s {ep.ip} -j KUBE-MARK-MASQ",
                         f"-A {sep}{comment}{recent} -m {p} -p {p} -j DNAT --to-destination {key}"]
            rules_by_chain[sep] = lines
            if flat is not None:
                flat.extend(lines)

    # Finally, hand everything else addressed to this node to KUBE-NODEPORTS.
    not_localhost = " ! -d ::1/128" if fam.v6 else (" ! -d 127.0.0.0/8" if not localhost_nodeports else "")
    last = '-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain"'
    nrule(KUBE_SERVICES, f"-A KUBE-SERVICES{not_localhost} {last} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
          if save else f"-A KUBE-SERVICES {last} -m addrtype --dst-type LOCAL{not_localhost} -j KUBE-NODEPORTS")

    if not spec.conntrack_tcp_be_liberal:
        # INVALID packets would otherwise reach pods un-DNATed and draw resets.
        nfacct = f" -m nfacct --nfacct-name {' ' if save else ''}{NFACCT_INVALID}" if spec.nfacct else ""
        frule(KUBE_FORWARD, f"-A KUBE-FORWARD -m conntrack --ctstate INVALID{nfacct} -j DROP")
    frule(KUBE_FORWARD, '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark '
          f"{hexmark if save else mark}/{hexmark if save else mark} -j ACCEPT")
    frule(KUBE_FORWARD, '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" '
          "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    return tables


def _test_sorted_chains(chains: list[str]) -> list[str]:
    """Chain order of kube-proxy's test helper ``sortIPTablesRules``: KUBE-NODEPORTS,
    KUBE-SERVICES, then the other KUBE-* chains alphabetically."""
    rank = {KUBE_NODEPORTS: 0, KUBE_SERVICES: 1}
    return sorted(dict.fromkeys(chains), key=lambda c: (rank.get(c, 2), not c.startswith("KUBE-"), c))


def render_restore(spec: ClusterSpec, *, order: Order = "sorted") -> str:
    """kube-proxy's ``iptables-restore`` payload (``--noflush``) for ``spec``.

    It holds neither the built-in chains nor kube-proxy's jumps from them: load
    :func:`render_jumps` after it for those.
    """
    if order not in ("sorted", "sync"):
        raise ValueError(f"order: must be 'sorted' or 'sync', got {order!r}")
    tables = _build(spec, save=False, keep_flat=order == "sync")
    out: list[str] = []
    for name in ("filter", "nat"):
        table = tables[name]
        out.append(f"*{name}")
        if order == "sync":
            out.extend(f":{c} - [0:0]" for c in table.chains)
            out.extend(table.flat or ())
        else:
            chains = _test_sorted_chains(table.chains)
            out.extend(f":{c} - [0:0]" for c in chains)
            for c in chains:
                out.extend(table.rules[c])
        out.append("COMMIT")
    out.append("")
    return "\n".join(out)


def _jump_rules(spec: ClusterSpec) -> list[tuple[str, str, str]]:
    """The jump rules in their final order: each was prepended, so the last one
    ensured comes first in its chain."""
    entries = _JUMP_CHAINS + (_KUBELET_JUMP_CHAINS if spec.kubelet_firewall_jumps else ())
    return list(reversed(entries))


def render_jumps(spec: ClusterSpec) -> str:
    """kube-proxy's jump rules from the built-in chains (``PREROUTING -j KUBE-SERVICES``
    and friends), as an ``iptables-restore --noflush`` payload to load after
    :func:`render_restore` into empty built-in chains."""
    out: list[str] = []
    for table in ("filter", "nat"):
        out.append(f"*{table}")
        if table == "filter" and spec.kubelet_firewall_jumps and (spec.family == 6 or not spec.localhost_nodeports):
            out.append(f":{KUBE_FIREWALL} - [0:0]")  # kube-proxy ensures the chain even when it writes no rule
        out.extend(f"-A {chain} {args}" for t, chain, args in _jump_rules(spec) if t == table)
        out.append("COMMIT")
    out.append("")
    return "\n".join(out)


def render_save(spec: ClusterSpec) -> str:
    """What ``iptables-save`` (``ip6tables-save`` for IPv6) prints on a node where
    kube-proxy loaded :func:`render_restore` and :func:`render_jumps`, without the
    ``# Generated by`` comment lines."""
    tables = _build(spec, save=True)
    jumps = _jump_rules(spec)
    out: list[str] = []
    for name in ("filter", "nat"):
        table = tables[name]
        builtin = BUILTIN_CHAINS[name]
        user = set(table.chains)
        if name == "filter" and spec.kubelet_firewall_jumps:
            user.add(KUBE_FIREWALL)
        chains = sorted(user)
        out.append(f"*{name}")
        out.extend(f":{c} ACCEPT [0:0]" for c in builtin)
        out.extend(f":{c} - [0:0]" for c in chains)
        for chain in builtin:
            out.extend(f"-A {chain} {args}" for t, c, args in jumps if t == name and c == chain)
        for chain in chains:
            out.extend(table.rules[chain])
        out.append("COMMIT")
    out.append("")
    return "\n".join(out)


__all__ = ["render_restore", "render_save", "render_jumps", "BUILTIN_CHAINS"]
