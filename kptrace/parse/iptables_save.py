"""Read ``iptables-save`` / ``ip6tables-save`` text and kube-proxy's restore payloads.

Reading is two steps. Indexing checks the file's structure (tables, chain declarations,
COMMIT) and records where each chain's rules are, as offsets into the text; rules are
parsed only when a question reaches their chain, and then one by one. A question about
one Service on a node with 400,000 rules parses a few dozen.

iptables-save prints each chain's rules as one block, so the fast indexer finds whole
blocks with one regular expression (the work stays in C). Input it does not expect
(``-I``/``-N``/``-X`` commands, counters, stray lines) goes to the line-by-line indexer,
which also produces the precise error messages.
"""

from __future__ import annotations

import bisect
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

# The first address in a save tells its family. The pattern starts with a literal so the
# search skips ahead at C speed.
_ADDR = re.compile(
    r" -(?:[sd] (?:(?P<v4>\d+\.\d+\.\d+\.\d+)|(?P<v6>[0-9a-fA-F]*:[0-9a-fA-F:.]*))(?:/\d+)? "
    r"|-to-destination (?:(?P<v4nat>\d+\.)|(?P<v6nat>\[)))"
)

_TABLE_HEAD = re.compile(r"\n\*([a-z]+)")
_FIRST_TABLE = re.compile(r"\*[ \t]*(\S*)")
Span = tuple[int, int]  # [start, end) offsets of one or more whole rule lines


@dataclass
class TableIndex:
    name: str
    order: list[str] = field(default_factory=list)  # chain names, in declaration order
    policy: dict[str, str | None] = field(default_factory=dict)  # chain -> policy (None: user chain)
    decl_at: dict[str, int] = field(default_factory=dict)  # chain -> offset of its ":" line
    spans: dict[str, list[Span]] = field(default_factory=dict)  # chain -> where its rules are
    start: int = 0  # offset of the *table line
    blocks: dict[str, re.Match[str]] = field(default_factory=dict)  # chain -> its one run of rules
    decls_end: int | None = None  # where the declarations end (fast index), else unknown

    def spans_of(self, chain: str) -> list[Span]:
        m = self.blocks.get(chain)
        return [m.span(1)] if m is not None else self.spans.get(chain, [])


class LineCounter:
    """Line numbers for offsets, counted from the nearest offset already asked about."""

    def __init__(self, text: str, first_line: int) -> None:
        self.text = text
        self._offsets = [0]
        self._lines = [first_line + 1]

    def line_at(self, offset: int) -> int:
        i = bisect.bisect_right(self._offsets, offset) - 1
        line = self._lines[i] + self.text.count("\n", self._offsets[i], offset)
        self._offsets.insert(i + 1, offset)
        self._lines.insert(i + 1, line)
        return line


@dataclass
class SaveIndex:
    source: str
    text: str
    tables: dict[str, TableIndex]
    family: int | None
    payload: bool  # no built-in chain anywhere: kube-proxy's restore payload
    lines: LineCounter
    lenient: bool = False


def split_documents(text: str) -> list[tuple[int, str]]:
    """Split concatenated saves (``iptables-save; ip6tables-save``) where a table repeats.

    Returns (number of lines before the document, text) pairs.
    """
    heads: list[tuple[int, str]] = []
    pos = text.find("\n*")
    while pos >= 0:  # str.find is far faster than a regex scan over a large save
        m = _TABLE_HEAD.match(text, pos)
        if m:
            heads.append((pos + 1, m.group(1)))
        pos = text.find("\n*", pos + 2)
    if text.startswith("*"):
        first = _FIRST_TABLE.match(text)  # not text[1:].split(): that copies the whole text
        heads.insert(0, (0, first.group(1) if first else ""))
    starts = [0]
    seen: set[str] = set()
    for pos, name in heads:
        if name in seen:
            starts.append(pos)
            seen = set()
        seen.add(name)
    if len(starts) == 1:
        return [(0, text)]
    bounds = starts + [len(text)]
    return [(text.count("\n", 0, a), text[a:b]) for a, b in zip(bounds, bounds[1:])]


# --- the fast indexer --------------------------------------------------------------
# Patterns start with a literal newline so the regex engine can skip ahead at C speed;
# the first line of the text is checked on its own. Each part of a table is checked for
# lines of the one kind it may hold: declarations first, then rules (iptables-save's and
# kube-proxy's layout); anything else goes to the line-by-line indexer.
_TABLE_OR_COMMIT = re.compile(r"\n(?:\*(\S+)|(COMMIT))[ \t]*(?=\n|$)")
# ":name", ":name policy" or ":name policy [packets:bytes]"; other forms go to the line indexer.
_NOT_DECL_LINE = re.compile(
    r"\n(?!:[^ \t\n]+(?:[ \t]+[^ \t\n]+(?:[ \t]+\[\d+:\d+\])?)?[ \t]*(?:\n|$)|#|[ \t]*(?:\n|$))"
)
_NOT_RULE_LINE = re.compile(r"\n(?!-A \S|#|[ \t]*(?:\n|$))")
_NOT_BLANK_LINE = re.compile(r"\n(?!#|[ \t]*(?:\n|$))")
_DECL_NAME = re.compile(r"\n:(\S+)")
# One chain's run of rules; group 1 is the run without its leading newline, group 2 the chain.
_BLOCK = re.compile(r"\n(-A (\S+)(?=[ \t\n]|$)[^\n]*(?:\n-A \2(?=[ \t\n]|$)[^\n]*)*)")


def _index_fast(text: str, lenient: bool) -> dict[str, TableIndex] | None:
    """Index a well-formed save; None sends the text to the line-by-line indexer."""
    nl = text.find("\n")
    first_line = text if nl < 0 else text[:nl]
    first = first_line.strip()
    if first and not first.startswith(("#", "*")):
        return None
    if "\r" in text:  # CRLF: the patterns below expect plain newlines
        return None
    marks: list[tuple[int, int, str | None]] = []  # (start, end, table name or None for COMMIT)
    if first.startswith("*"):
        marks.append((0, len(first_line), first[1:]))
    marks.extend((m.start() + 1, m.end(), m.group(1)) for m in _TABLE_OR_COMMIT.finditer(text))
    if not marks or len(marks) % 2:
        return None
    tables: dict[str, TableIndex] = {}
    previous_end = 0
    for (h_start, h_end, name), (c_start, c_end, commit) in zip(marks[::2], marks[1::2]):
        if name is None or commit is not None or name not in BUILTIN_CHAINS or name in tables:
            return None
        if _NOT_BLANK_LINE.search(text, previous_end, h_start):  # a line between tables
            return None
        start, end = h_end, c_start - 1  # the newline before COMMIT ends the last rule
        rules_at = text.find("\n-A ", start, end)
        rules_at = end if rules_at < 0 else rules_at
        if _NOT_DECL_LINE.search(text, start, rules_at) or _NOT_RULE_LINE.search(text, rules_at, end):
            return None
        policy: dict[str, str | None] = dict.fromkeys(_DECL_NAME.findall(text, start, rules_at))
        for chain in BUILTIN_CHAINS[name]:
            if chain in policy:
                # The last declaration wins, as in iptables-restore.
                found = re.compile(rf"\n:{chain}(?=[ \t\n]|$)[ \t]*([^ \t\n]*)").findall(text, start, rules_at)
                pol = (found[-1] if found else "") or "-"
                if pol not in POLICIES:
                    return None
                policy[chain] = pol
        # The work stays in C: one match per run of rules, kept as is (its offsets are
        # read when the chain is), one dict entry per chain.
        runs = list(_BLOCK.finditer(text, rules_at, end))
        blocks = {m[2]: m for m in runs}
        spans: dict[str, list[Span]] = {}
        if len(blocks) != len(runs):  # a chain's rules in several runs (hand-edited)
            blocks = {}
            for m in runs:
                spans.setdefault(m[2], []).append(m.span(1))
        undeclared = (blocks.keys() or spans.keys()) - policy.keys()
        if undeclared and not lenient:
            return None
        order = list(policy)

        def first_run(chain: str) -> int:
            m = blocks.get(chain)
            return m.start() if m is not None else spans[chain][0][0]

        for chain in sorted(undeclared, key=first_run):  # in order of appearance, as declared by use
            order.append(chain)
            policy[chain] = None
        tables[name] = TableIndex(name, order, policy, {}, spans, h_start, blocks, rules_at)
        previous_end = c_end
    if _NOT_BLANK_LINE.search(text, previous_end):
        return None
    return tables


# --- the line-by-line indexer --------------------------------------------------------
def _index_lines(text: str, source: str, first_line: int, lenient: bool) -> dict[str, TableIndex]:
    tables: dict[str, TableIndex] = {}
    current: TableIndex | None = None
    committed = False
    offset = 0
    lines = text.split("\n")

    def fail(problem: str, idx: int, column: int | None = 0) -> ParseError:
        return ParseError(problem, source=source, line=first_line + idx + 1, text=lines[idx], column=column)

    meaningful = False
    for idx, raw in enumerate(lines):
        line_start = offset
        offset += len(raw) + 1
        line = raw.strip()
        if not line or line[0] == "#":
            continue
        meaningful = True
        c = line[0]
        if current is not None and committed and c != "*":
            raise fail(f"line after COMMIT of table {current.name} and before the next *table", idx)
        if c == "-" or c == "[":
            if current is None:
                raise fail("rule before any table header (*filter, *nat, ...)", idx)
            rest = line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line
            parts = rest.split(None, 2)
            cmd = parts[0]
            if len(parts) < 2:
                raise fail(f"'{cmd}' needs a chain name", idx, len(raw) - len(raw.lstrip()))
            chain = parts[1]
            span = (line_start, line_start + len(raw))
            if cmd in ("-A", "--append"):
                if chain not in current.policy:
                    if not lenient:
                        raise fail(
                            f"rule for chain {chain}, which is not declared in table {current.name}", idx, raw.find(chain)
                        )
                    _declare(current, chain, None, line_start)
                current.spans[chain].append(span)
            elif cmd in ("-I", "--insert"):
                if chain not in current.policy:
                    _declare(current, chain, None, line_start)
                words = parts[2].split(None, 1) if len(parts) > 2 else []
                pos = int(words[0]) - 1 if words and words[0].isdigit() else 0
                current.spans[chain].insert(max(pos, 0), span)
            elif cmd in ("-N", "--new-chain"):
                if chain not in current.policy:
                    _declare(current, chain, None, line_start)
            elif cmd in ("-X", "--delete-chain"):
                if chain in current.policy:
                    current.order.remove(chain)
                    del current.policy[chain]
                    del current.spans[chain]
            elif cmd in ("-F", "--flush"):
                if chain in current.spans:
                    current.spans[chain] = []
            elif cmd in ("-P", "--policy"):
                pol = parts[2].split()[0] if len(parts) > 2 else ""
                if pol not in POLICIES:
                    raise fail(f"bad policy {pol!r}", idx, raw.find(pol) if pol else 0)
                if chain not in current.policy:
                    _declare(current, chain, pol, line_start)
                current.policy[chain] = pol
            else:
                raise fail(f"unsupported command {cmd!r} in a saved ruleset", idx, raw.find(cmd))
        elif c == ":":
            if current is None:
                raise fail("chain declaration before any table header", idx)
            parts = line[1:].split()
            if not parts:
                raise fail("chain declaration without a name", idx)
            name = parts[0]
            policy = parts[1] if len(parts) > 1 else "-"
            builtin = name in BUILTIN_CHAINS[current.name]
            if builtin and policy not in POLICIES:
                raise fail(f"bad policy {policy!r} for chain {name}", idx, raw.find(policy))
            if len(parts) > 2 and not re.fullmatch(r"\[\d+:\d+\]", parts[2]):
                raise fail(f"bad counters {parts[2]!r}", idx, raw.find(parts[2]))
            _declare(current, name, policy if builtin else None, line_start)
        elif c == "*":
            name = line[1:].strip()
            if current is not None and not committed:
                raise fail(f"table {current.name} is not closed with COMMIT before *{name}", idx)
            if name not in BUILTIN_CHAINS:
                raise fail(f"unknown table {name!r}", idx, 1)
            if name in tables:
                raise fail(f"table {name} appears twice", idx, 1)
            current = tables[name] = TableIndex(name, start=line_start)
            committed = False
        elif line == "COMMIT":
            if current is None:
                raise fail("COMMIT without a table", idx)
            committed = True
        else:
            raise fail("not an iptables-save line (expected *table, :chain, -A rule or COMMIT)", idx)
    if not meaningful:
        raise ParseError("empty ruleset (no tables)", source=source)
    if current is not None and not committed:
        raise ParseError(
            f"table {current.name} is not closed with COMMIT (truncated file?)", source=source, line=first_line + len(lines)
        )
    return tables


def _declare(table: TableIndex, name: str, policy: str | None, offset: int) -> None:
    if name not in table.policy:
        table.order.append(name)
        table.spans[name] = []
    table.spans.setdefault(name, [])
    table.policy[name] = policy
    table.decl_at[name] = offset


def index_save(text: str, *, source: str = "<input>", first_line: int = 0, lenient: bool = False, fast: bool = True) -> SaveIndex:
    tables = _index_fast(text, lenient) if fast else None
    if tables is None:
        tables = _index_lines(text, source, first_line, lenient)
    payload = not any(t.policy.get(name) is not None for t in tables.values() for name in BUILTIN_CHAINS[t.name])
    return SaveIndex(source, text, tables, _family(text), payload, LineCounter(text, first_line), lenient)


def _family(text: str) -> int | None:
    # One save holds one family, so the first address decides; searching for the other
    # family's addresses would scan the whole text for nothing.
    m = _ADDR.search(text)
    while m is not None:
        line_start = text.rfind("\n", 0, m.start()) + 1
        if text.count('"', line_start, m.start()) % 2 == 0:  # not inside a quoted comment
            return 6 if m.group("v6") is not None or m.group("v6nat") is not None else 4
        m = _ADDR.search(text, m.end())
    return None


def ruleset_from_index(index: SaveIndex, *, backend: str | None = None) -> tuple[Ruleset, list[str]]:
    """A lazily parsed Ruleset; adds kube-proxy's standard jumps to a restore payload."""
    warnings: list[str] = []
    extra: dict[tuple[str, str], list[Rule]] = {}
    if index.payload:
        added = 0
        for table, jumps in STANDARD_JUMPS.items():
            t = index.tables.get(table)
            if t is None:
                continue
            for chain, matches, target in jumps:
                if target not in t.policy:
                    continue
                text = f"-A {chain} {matches} -j {target}"
                extra.setdefault((table, chain), []).append(
                    parse_rule(text, table=table, line=None, source=STANDARD_JUMPS_SOURCE)
                )
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
            if builtin not in t.policy and (tname, builtin) in extra:
                order.insert(0, builtin)
        names[tname] = order

    text = index.text

    def load(table: str, name: str) -> Chain | None:
        t = index.tables.get(table)
        if t is None:
            return None
        policy = t.policy.get(name)
        if name in BUILTIN_CHAINS[table] and policy is None:
            policy = "-"
        raw: list[tuple[int | None, str]] = []
        for start, end in t.spans_of(name):
            line = index.lines.line_at(start)
            for k, rule_text in enumerate(text[start:end].split("\n")):
                raw.append((line + k, rule_text))
        def decl_line() -> int | None:
            decl = t.decl_at.get(name)
            if decl is None and name in t.policy and t.decls_end is not None:
                # The fast index keeps no offsets per declaration: find it (the last one
                # wins, as in iptables-restore) among this table's declarations.
                last = None
                for last in re.compile(rf"\n:{re.escape(name)}(?=[ \t\n]|$)").finditer(text, t.start, t.decls_end + 1):
                    pass
                decl = last.start() + 1 if last is not None else None
                if decl is None and t.spans_of(name):  # lenient: declared by its first rule
                    decl = t.spans_of(name)[0][0]
            return index.lines.line_at(decl) if decl is not None else None

        return Chain(
            table,
            name,
            policy,
            extra.get((table, name)),
            line=decl_line,
            raw=raw,
            parser=lambda rule_text, line: parse_rule(
                rule_text, table=table, line=line, source=index.source, lenient=index.lenient
            ),
        )

    return Ruleset(index.family, names, load, source=index.source, backend=backend), warnings


def parse_save(
    text: str, *, source: str = "<input>", lenient: bool = False, backend: str | None = None, fast: bool = True
) -> tuple[list[Ruleset], list[str]]:
    """All rulesets in an iptables-save text (one per concatenated save), and warnings."""
    rulesets: list[Ruleset] = []
    warnings: list[str] = []
    for first_line, doc in split_documents(text):
        index = index_save(doc, source=source, first_line=first_line, lenient=lenient, fast=fast)
        rs, w = ruleset_from_index(index, backend=backend)
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
