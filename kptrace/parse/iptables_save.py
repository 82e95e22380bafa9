"""Read ``iptables-save`` / ``ip6tables-save`` text and kube-proxy's restore payloads.

Reading is two steps. ``index_save`` walks the lines once, checks the file's
structure (tables, chain declarations, COMMIT) and records, per chain, which lines
hold its rules. Rules are parsed only when the simulator asks for their chain, so a
question about one Service on a node with 400,000 rules parses a few dozen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ParseError
from ..model.rules import BUILTIN_CHAINS, Chain, Rule, Ruleset
from .iptables_rule import parse_rule

POLICIES = {"ACCEPT", "DROP", "-", "QUEUE", "RETURN"}
STANDARD_JUMPS_SOURCE = "kube-proxy's standard jumps (added by kptrace)"

# The jumps kube-proxy installs outside its restore payload, in the order it installs them.
STANDARD_JUMPS: dict[str, list[tuple[str, str, str]]] = {
    "filter": [
        ("INPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\"", "KUBE-PROXY-FIREWALL"),
        ("INPUT", "-m comment --comment \"kubernetes health check service ports\"", "KUBE-NODEPORTS"),
        ("INPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\"", "KUBE-EXTERNAL-SERVICES"),
        ("FORWARD", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\"", "KUBE-PROXY-FIREWALL"),
        ("FORWARD", "-m comment --comment \"kubernetes forwarding rules\"", "KUBE-FORWARD"),
        ("FORWARD", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\"", "KUBE-SERVICES"),
        ("FORWARD", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\"", "KUBE-EXTERNAL-SERVICES"),
        ("OUTPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\"", "KUBE-PROXY-FIREWALL"),
        ("OUTPUT", "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\"", "KUBE-SERVICES"),
    ],
    "nat": [
        ("PREROUTING", "-m comment --comment \"kubernetes service portals\"", "KUBE-SERVICES"),
        ("OUTPUT", "-m comment --comment \"kubernetes service portals\"", "KUBE-SERVICES"),
        ("POSTROUTING", "-m comment --comment \"kubernetes postrouting rules\"", "KUBE-POSTROUTING"),
    ],
}

_V6_ADDR = re.compile(r" -[sd] [0-9a-fA-F]*:[0-9a-fA-F:.]*(?:/\d+)? | --to-destination \[")
_V4_ADDR = re.compile(r" -[sd] \d+\.\d+\.\d+\.\d+(?:/\d+)? | --to-destination \d+\.")


@dataclass
class _TableIndex:
    name: str
    line: int
    order: list[str] = field(default_factory=list)  # chain names, in declaration order
    decl: dict[str, tuple[str | None, int]] = field(default_factory=dict)  # chain -> (policy, line)
    rules: dict[str, list[int]] = field(default_factory=dict)  # chain -> rule line numbers (1-based)
    committed: bool = False


@dataclass
class SaveIndex:
    source: str
    lines: list[str]
    tables: dict[str, _TableIndex]
    family: int | None
    payload: bool  # no built-in chain anywhere: kube-proxy's restore payload
    lenient: bool = False


def split_documents(text: str) -> list[tuple[int, str]]:
    """Split concatenated saves (``iptables-save; ip6tables-save``) where a table repeats.

    Returns (first line number - 1, text) pairs.
    """
    starts = [0]
    seen: set[str] = set()
    for m in re.finditer(r"^\*(\S+)", text, re.M):
        name = m.group(1)
        if name in seen:
            starts.append(m.start())
            seen = set()
        seen.add(name)
    if len(starts) == 1:
        return [(0, text)]
    docs: list[tuple[int, str]] = []
    bounds = starts + [len(text)]
    for a, b in zip(bounds, bounds[1:]):
        docs.append((text.count("\n", 0, a), text[a:b]))
    return docs


def index_save(text: str, *, source: str = "<input>", first_line: int = 0, lenient: bool = False) -> SaveIndex:
    lines = text.split("\n")
    tables: dict[str, _TableIndex] = {}
    current: _TableIndex | None = None

    def fail(problem: str, idx: int, column: int | None = 0) -> ParseError:
        return ParseError(problem, source=source, line=first_line + idx + 1, text=lines[idx], column=column)

    meaningful = False
    for idx, raw in enumerate(lines):
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        meaningful = True
        c = line[0]
        if current is not None and current.committed and c != "*":
            raise fail(f"line after COMMIT of table {current.name} and before the next *table", idx)
        if c == "-" or c == "[":
            if current is None:
                raise fail("rule before any table header (*filter, *nat, ...)", idx)
            if line.startswith("[") and "] " in line:
                rest = line.split("] ", 1)[1]
            else:
                rest = line
            parts = rest.split(None, 2)
            cmd = parts[0]
            if len(parts) < 2:
                raise fail(f"'{cmd}' needs a chain name", idx, len(raw) - len(raw.lstrip()))
            chain = parts[1]
            if cmd in ("-A", "--append"):
                lst = current.rules.get(chain)
                if lst is None:
                    if chain not in current.decl and not lenient:
                        raise fail(f"rule for chain {chain}, which is not declared in table {current.name}", idx, raw.find(chain))
                    _declare(current, chain, None, idx)
                    lst = current.rules[chain]
                lst.append(idx + 1)
            elif cmd in ("-I", "--insert"):
                if chain not in current.decl:
                    _declare(current, chain, None, idx)
                pos = 0
                if len(parts) > 2 and parts[2].split(None, 1)[0].isdigit():
                    pos = int(parts[2].split(None, 1)[0]) - 1
                current.rules[chain].insert(max(pos, 0), idx + 1)
            elif cmd in ("-N", "--new-chain"):
                if chain not in current.decl:
                    _declare(current, chain, None, idx)
            elif cmd in ("-X", "--delete-chain"):
                if chain in current.decl:
                    current.order.remove(chain)
                    del current.decl[chain]
                    del current.rules[chain]
            elif cmd in ("-F", "--flush"):
                if chain in current.rules:
                    current.rules[chain] = []
            elif cmd in ("-P", "--policy"):
                pol = parts[2].split()[0] if len(parts) > 2 else ""
                if pol not in POLICIES:
                    raise fail(f"bad policy {pol!r}", idx, raw.find(pol) if pol else 0)
                if chain not in current.decl:
                    _declare(current, chain, pol, idx)
                else:
                    current.decl[chain] = (pol, current.decl[chain][1])
            else:
                raise fail(f"unsupported command {cmd!r} in a saved ruleset", idx, raw.find(cmd))
        elif c == ":":
            if current is None:
                raise fail("chain declaration before any table header", idx)
            parts = line[1:].split()
            if not parts or not parts[0]:
                raise fail("chain declaration without a name", idx)
            name = parts[0]
            policy = parts[1] if len(parts) > 1 else "-"
            if policy not in POLICIES:
                raise fail(f"bad policy {policy!r} for chain {name}", idx, raw.find(policy))
            if len(parts) > 2 and not re.fullmatch(r"\[\d+:\d+\]", parts[2]):
                raise fail(f"bad counters {parts[2]!r}", idx, raw.find(parts[2]))
            _declare(current, name, policy if name in BUILTIN_CHAINS[current.name] else None, idx)
        elif c == "*":
            name = line[1:].strip()
            if current is not None and not current.committed:
                raise fail(f"table {current.name} is not closed with COMMIT before *{name}", idx)
            if name not in BUILTIN_CHAINS:
                raise fail(f"unknown table {name!r}", idx, 1)
            if name in tables:
                raise fail(f"table {name} appears twice", idx, 1)
            current = _TableIndex(name, idx + 1)
            tables[name] = current
        elif line == "COMMIT":
            if current is None:
                raise fail("COMMIT without a table", idx)
            current.committed = True
        else:
            raise fail("not an iptables-save line (expected *table, :chain, -A rule or COMMIT)", idx)
    if not meaningful:
        raise ParseError("empty ruleset (no tables)", source=source)
    for t in tables.values():
        if not t.committed:
            raise ParseError(
                f"table {t.name} is not closed with COMMIT (truncated file?)", source=source, line=len(lines) + first_line
            )
    payload = not any(
        name in t.decl and t.decl[name][0] is not None
        for t in tables.values()
        for name in BUILTIN_CHAINS[t.name]
    )
    return SaveIndex(source, lines, tables, _family(text), payload, lenient)


def _declare(table: _TableIndex, name: str, policy: str | None, idx: int) -> None:
    if name not in table.decl:
        table.order.append(name)
        table.rules[name] = []
    table.decl[name] = (policy, idx + 1)


def _family(text: str) -> int | None:
    if _V6_ADDR.search(text):
        return 6
    if _V4_ADDR.search(text):
        return 4
    return None


def ruleset_from_index(index: SaveIndex, *, first_line: int = 0, backend: str | None = None) -> tuple[Ruleset, list[str]]:
    """Build a lazily parsed Ruleset; adds kube-proxy's standard jumps to a payload."""
    warnings: list[str] = []
    extra: dict[tuple[str, str], list[Rule]] = {}
    if index.payload:
        added = 0
        for table, jumps in STANDARD_JUMPS.items():
            t = index.tables.get(table)
            if t is None:
                continue
            for chain, matches, target in jumps:
                if target not in t.decl:
                    continue
                text = f"-A {chain} {matches} -j {target}"
                rule = parse_rule(text, table=table, line=None, source=STANDARD_JUMPS_SOURCE)
                extra.setdefault((table, chain), []).append(rule)
                added += 1
        if added:
            warnings.append(
                f"{index.source}: a kube-proxy restore payload (no built-in chains): kptrace added "
                f"kube-proxy's {added} standard jump rules (nat PREROUTING/OUTPUT -> KUBE-SERVICES, "
                "POSTROUTING -> KUBE-POSTROUTING, filter INPUT/FORWARD/OUTPUT -> KUBE-* chains)"
            )

    names: dict[str, list[str]] = {}
    for tname, t in index.tables.items():
        order = list(t.order)
        for builtin in BUILTIN_CHAINS[tname]:
            if builtin not in t.decl and (tname, builtin) in extra:
                order.insert(0, builtin)
        names[tname] = order

    lines = index.lines

    def load(table: str, name: str) -> Chain | None:
        t = index.tables.get(table)
        if t is None:
            return None
        policy, decl_line = t.decl.get(name, (None, None))
        if name in BUILTIN_CHAINS[table] and policy is None:
            policy = "-"
        chain = Chain(table, name, policy, line=(decl_line + first_line) if decl_line else None)
        chain.rules.extend(extra.get((table, name), ()))
        for line_no in t.rules.get(name, ()):
            text = lines[line_no - 1]
            chain.rules.append(
                parse_rule(text, table=table, line=line_no + first_line, source=index.source, lenient=index.lenient)
            )
        return chain

    return Ruleset(index.family, names, load, source=index.source, backend=backend), warnings


def parse_save(text: str, *, source: str = "<input>", lenient: bool = False, backend: str | None = None) -> tuple[list[Ruleset], list[str]]:
    """All rulesets in an iptables-save text (one per concatenated save), and warnings."""
    rulesets: list[Ruleset] = []
    warnings: list[str] = []
    for first_line, doc in split_documents(text):
        index = index_save(doc, source=source, first_line=first_line, lenient=lenient)
        rs, w = ruleset_from_index(index, first_line=first_line, backend=backend)
        rulesets.append(rs)
        warnings.extend(w)
    return rulesets, warnings


def parse_all_rules(ruleset: Ruleset) -> int:
    """Parse every chain now (a full check of a file); returns the number of rules."""
    count = 0
    for table in ruleset.tables:
        for chain in ruleset.iter_chains(table):
            count += len(chain.rules)
    return count
