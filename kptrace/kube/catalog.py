"""The Services a kube-proxy ruleset implements, recovered from its chains.

kube-proxy names a Service port's chains with one hash (KUBE-SVC-H, KUBE-EXT-H,
KUBE-FW-H, KUBE-SVL-H), so the catalog keys ports by that hash. Names come from rule
comments where kube-proxy wrote them, or from recomputing the hash for a name the user
asks about (kube-proxy drops some comments above 1,000 endpoints).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..model.packet import IPAddress, format_endpoint, split_endpoint
from typing import Callable, Iterator

from ..model.rules import Chain, Rule, Ruleset
from . import naming
from .comments import service_in_comment

_COMMENT = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')
_HASHED = re.compile(r"^KUBE-(SVC|EXT|FW|SVL|XLB)-([A-Z2-7]{16})$")


@dataclass
class Entry:
    """How traffic reaches a Service port: a rule in KUBE-SERVICES or KUBE-NODEPORTS."""

    kind: str  # cluster-ip | external-ip | load-balancer | node-port
    address: str  # "10.96.0.1:443", or ":31380" for a NodePort on every node address
    rule: Rule


@dataclass
class ServicePort:
    key: str  # the chain hash
    name: str | None = None  # ns/name:port (None when no comment names it)
    protocol: str | None = None
    entries: list[Entry] = field(default_factory=list)
    filter_rules: list[Rule] = field(default_factory=list)  # REJECT/DROP/ACCEPT naming it

    @property
    def namespace_name(self) -> str | None:
        return self.name.split(":", 1)[0] if self.name else None

    @property
    def port_name(self) -> str | None:
        if self.name is None:
            return None
        return self.name.split(":", 1)[1] if ":" in self.name else ""

    def addresses(self, kind: str) -> list[str]:
        seen: list[str] = []
        for e in self.entries:
            if e.kind == kind and e.address not in seen:
                seen.append(e.address)
        return seen

    @property
    def node_port(self) -> int | None:
        for e in self.entries:
            if e.kind == "node-port":
                return int(e.address.rsplit(":", 1)[1])
        return None

    def chain(self, prefix: str) -> str:
        return f"KUBE-{prefix}-{self.key}"


class Catalog:
    def __init__(self, ruleset: Ruleset, text_filter: Callable[[str], bool] | None = None) -> None:
        """``text_filter`` picks, from its raw text, which rules to parse (see ``for_target``)."""
        self.ruleset = ruleset
        self._wanted = text_filter
        self.ports: dict[str, ServicePort] = {}
        self._by_name: dict[str, str] = {}  # ns/name:port -> key
        self._build()

    @classmethod
    def for_target(cls, ruleset: Ruleset, target: str) -> Catalog:
        """A catalog that parses only the rules whose text can concern ``target``."""
        ip, port = split_endpoint(target)
        if ip is not None:
            # First the Service ports at that address (or NodePort), then all their rules.
            addr = (f" {ip}/", f" {ip} ")
            node_port = f"--dport {port} " if port else None

            def at_address(raw: str) -> bool:
                if any(a in raw for a in addr):
                    return True
                return node_port is not None and node_port in raw and raw.startswith("-A KUBE-NODEPORTS ")

            first = cls(ruleset, at_address)
            found = first.find(target)
            names = [sp.name for sp in found if sp.name]
            keys = [sp.key for sp in found]
            needles = [f"{n} " for n in names] + [f'{n}"' for n in names] + keys
            if not needles:
                return first
            return cls(ruleset, lambda raw: at_address(raw) or any(n in raw for n in needles))
        if "/" not in target:
            return cls(ruleset, lambda _raw: False)
        ns_name, _, port_sel = target.partition(":")
        ns, _, name = ns_name.partition("/")
        needles = [ns_name]
        for spn in {naming.service_port_name(ns, name), naming.service_port_name(ns, name, port_sel)}:
            for proto in ("tcp", "udp", "sctp"):
                needles.append(naming.service_chain("", spn, proto))
        return cls(ruleset, lambda raw: any(n in raw for n in needles))

    def _rules(self, chain: Chain) -> Iterator[Rule]:
        for i in range(len(chain)):
            if self._wanted is None or self._wanted(chain.raw(i)):
                yield chain.rule(i)

    def _port(self, key: str) -> ServicePort:
        sp = self.ports.get(key)
        if sp is None:
            sp = self.ports[key] = ServicePort(key)
        return sp

    def _name(self, sp: ServicePort, rule: Rule) -> None:
        if sp.name is None:
            name = service_in_comment(rule.comment)
            if name:
                sp.name = name
                self._by_name[name] = sp.key
        if sp.protocol is None:
            p = rule.builtin("-p")
            if p is not None and not p.negated:
                sp.protocol = p.value.lower()

    def _build(self) -> None:
        rs = self.ruleset
        for chain_name, kind_of in (("KUBE-SERVICES", _entry_kind), ("KUBE-NODEPORTS", lambda _r, _t: "node-port")):
            chain = rs.chain("nat", chain_name)
            if chain is None:
                continue
            for rule in self._rules(chain):
                target = rule.target.name if rule.target else ""
                m = _HASHED.match(target)
                if m is None:
                    continue
                sp = self._port(m.group(2))
                self._name(sp, rule)
                kind = kind_of(rule, m.group(1))
                d = rule.builtin("-d")
                dport = _dport(rule)
                if kind == "node-port":
                    if d is not None and d.value.startswith(("127.", "::1")):
                        kind = "node-port-localhost"
                    addr = f":{dport}"
                else:
                    addr = format_endpoint(d.value.split("/")[0], dport) if d is not None else f"?:{dport}"
                sp.entries.append(Entry(kind, addr, rule))
        # filter rules name the Service in their comment: attach them by name/hash.
        for chain_name in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-PROXY-FIREWALL"):
            chain = rs.chain("filter", chain_name)
            if chain is None:
                continue
            for rule in self._rules(chain):
                name = service_in_comment(rule.comment)
                key = self._key_for_filter_rule(rule, name)
                if key is None:
                    continue
                sp = self._port(key)
                if sp.name is None and name:
                    sp.name = name
                    self._by_name[name] = key
                self._name(sp, rule)
                sp.filter_rules.append(rule)
                self._entry_from_filter(sp, chain_name, rule)

    def _entry_from_filter(self, sp: ServicePort, chain_name: str, rule: Rule) -> None:
        """A Service without endpoints has no nat rules: its addresses are in filter rules."""
        if chain_name not in ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES") or rule.target is None:
            return
        if rule.target.name not in ("REJECT", "DROP"):
            return
        d = rule.builtin("-d")
        dport = _dport(rule)
        addrtype = rule.match("addrtype")
        if d is None and addrtype is not None:
            kind, addr = "node-port", f":{dport}"
        elif d is not None:
            kind = "cluster-ip" if chain_name == "KUBE-SERVICES" else "external"
            addr = format_endpoint(d.value.split("/")[0], dport)
        else:
            return
        if all(e.address != addr for e in sp.entries):
            sp.entries.append(Entry(kind, addr, rule))

    def _key_for_filter_rule(self, rule: Rule, name: str | None) -> str | None:
        comment = rule.comment or ""
        m = re.search(r"KUBE-(?:FW|SVC|EXT)-([A-Z2-7]{16})", comment)
        if m:
            return m.group(1)
        if name is None:
            return None
        if name in self._by_name:
            return self._by_name[name]
        p = rule.builtin("-p")
        proto = p.value.lower() if p is not None else "tcp"
        return naming.service_chain("KUBE-SVC-", name, proto)[len("KUBE-SVC-"):]

    # -- lookups -----------------------------------------------------------
    def find(self, target: str) -> list[ServicePort]:
        """Ports for ``ns/name``, ``ns/name:port`` (name or number) or ``IP:PORT``."""
        ip, port = split_endpoint(target)
        if ip is not None:
            return self._find_address(ip, port)
        ns_name, _, port_sel = target.partition(":")
        if "/" not in ns_name:
            return []
        found = [sp for sp in self.ports.values() if sp.namespace_name == ns_name]
        if not found:
            found = self._recompute(ns_name, port_sel)
        if port_sel:
            found = [sp for sp in found if sp.port_name == port_sel or _has_port(sp, port_sel)]
        return sorted(found, key=lambda sp: (sp.name or "", sp.protocol or ""))

    def _recompute(self, ns_name: str, port_name: str) -> list[ServicePort]:
        """Find a Service whose rules carry no comments, by recomputing its chain names."""
        ns, _, name = ns_name.partition("/")
        candidates = {naming.service_port_name(ns, name, port_name)} if port_name else set()
        candidates.add(naming.service_port_name(ns, name))
        found = []
        for spn in candidates:
            for proto in ("tcp", "udp", "sctp"):
                key = naming.service_chain("KUBE-SVC-", spn, proto)[len("KUBE-SVC-"):]
                if key in self.ports or any(
                    self.ruleset.has_chain("nat", f"KUBE-{p}-{key}") for p in ("SVC", "EXT", "FW")
                ):
                    sp = self._port(key)
                    sp.name = sp.name or spn
                    sp.protocol = sp.protocol or proto
                    found.append(sp)
        return found

    def _find_address(self, ip: IPAddress, port: int | None) -> list[ServicePort]:
        out = []
        for sp in self.ports.values():
            for e in sp.entries:
                if e.kind.startswith("node-port"):
                    continue
                eip, eport = split_endpoint(e.address)
                if eip == ip and (port is None or eport == port):
                    out.append(sp)
                    break
        if not out and port is not None:
            out = [sp for sp in self.ports.values() if sp.node_port == port]
        return out

    def names(self) -> list[str]:
        return sorted({sp.name for sp in self.ports.values() if sp.name})


def service_names(ruleset: Ruleset) -> list[str]:
    """Every Service port named in kube-proxy's comments, read from the text alone."""
    names: set[str] = set()
    for table, chain_name in (("nat", "KUBE-SERVICES"), ("nat", "KUBE-NODEPORTS"), ("filter", "KUBE-SERVICES"), ("filter", "KUBE-EXTERNAL-SERVICES")):
        chain = ruleset.chain(table, chain_name)
        if chain is None:
            continue
        for i in range(len(chain)):
            m = _COMMENT.search(chain.raw(i))
            if m:
                name = service_in_comment(m.group(1) if m.group(1) is not None else m.group(2))
                if name:
                    names.add(name)
    return sorted(names)


def _entry_kind(rule: Rule, prefix: str) -> str:
    comment = rule.comment or ""
    if "external IP" in comment:
        return "external-ip"
    if "loadbalancer IP" in comment or prefix == "FW":
        return "load-balancer"
    if "cluster IP" in comment or prefix == "SVC":
        return "cluster-ip"
    return "external-ip" if prefix == "EXT" else "cluster-ip"


def _dport(rule: Rule) -> int | None:
    for m in rule.matches:
        if m.module in ("tcp", "udp", "sctp"):
            opt = m.option("--dport", "--destination-port")
            if opt is not None and opt.value.isdigit():
                return int(opt.value)
    return None


def _has_port(sp: ServicePort, sel: str) -> bool:
    if not sel.isdigit():
        return False
    n = int(sel)
    return any(
        split_endpoint(e.address)[1] == n for e in sp.entries if not e.kind.startswith("node-port")
    ) or sp.node_port == n
