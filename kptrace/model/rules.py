"""iptables rules as data.

A rule keeps its raw text and line so every answer can point at it. Matches and
targets are kept whatever their name: a module kptrace cannot evaluate is still a
value, and the simulator says it could not evaluate it instead of failing or guessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}


@dataclass(frozen=True, slots=True)
class Option:
    """One option as written: ``! --dport 80`` is Option("--dport", ("80",), True)."""

    name: str
    args: tuple[str, ...] = ()
    negated: bool = False

    @property
    def value(self) -> str:
        return " ".join(self.args)


def find_option(options: tuple[Option, ...], names: tuple[str, ...]) -> Option | None:
    for opt in options:
        if opt.name in names:
            return opt
    return None


@dataclass(frozen=True, slots=True)
class Match:
    """``-m tcp --dport 80`` is Match("tcp", ...); built-ins (-s -d -p -i -o -f) use module ""."""

    module: str
    options: tuple[Option, ...] = ()

    def option(self, *names: str) -> Option | None:
        return find_option(self.options, names)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    options: tuple[Option, ...] = ()
    goto: bool = False

    def option(self, *names: str) -> Option | None:
        return find_option(self.options, names)


@dataclass(frozen=True, slots=True)
class Rule:
    table: str
    chain: str
    raw: str
    line: int | None
    matches: tuple[Match, ...]
    target: Target | None
    source: str = "<input>"
    counters: tuple[int, int] | None = None

    @property
    def comment(self) -> str | None:
        for m in self.matches:
            if m.module == "comment":
                opt = m.option("--comment")
                if opt is not None:
                    return opt.value
        return None

    def conditions(self, skip: tuple[str, ...] = ("comment", "nfacct")) -> str:
        """The rule's matches as iptables words, without comments, counters and -m tcp."""
        words: list[str] = []
        l4 = ("", "tcp", "udp", "sctp")
        ordered = [m for m in self.matches if m.module in l4] + [m for m in self.matches if m.module not in l4]
        for m in ordered:
            if m.module in skip:
                continue
            if m.module not in l4:
                words.append(f"-m {m.module}")
            for opt in m.options:
                words.append(("! " if opt.negated else "") + " ".join((opt.name, *opt.args)))
        return " ".join(words)

    def match(self, module: str) -> Match | None:
        for m in self.matches:
            if m.module == module:
                return m
        return None

    def builtin(self, name: str) -> Option | None:
        """A built-in match option such as ``-d`` (long spellings are normalised)."""
        for m in self.matches:
            if m.module == "":
                opt = m.option(name)
                if opt is not None:
                    return opt
        return None


RuleParser = Callable[[str, "int | None"], Rule]


class Chain:
    """A chain's rules in order. Rules are parsed when first asked for, one by one, so a
    simulator can skip the rules it can rule out from their text (see ``raw``)."""

    __slots__ = ("table", "name", "policy", "_line", "_raw", "_parsed", "_parser", "scan_cache")

    def __init__(
        self,
        table: str,
        name: str,
        policy: str | None,
        rules: list[Rule] | None = None,
        line: int | Callable[[], int | None] | None = None,
        *,
        raw: list[tuple[int | None, str]] | None = None,
        parser: RuleParser | None = None,
    ) -> None:
        self.table = table
        self.name = name
        self.policy = policy  # None for a user chain; "-" (no policy) reads as ACCEPT
        self._line = line  # or a function: finding a declaration in a large save has a cost
        self._parsed: list[Rule | None] = list(rules or ())
        self._raw: list[tuple[int | None, str]] = [(r.line, r.raw) for r in self._parsed]
        if raw:
            self._raw.extend(raw)
            self._parsed.extend([None] * len(raw))
        self._parser = parser
        self.scan_cache: Any = None  # the simulator's text index of a long chain (trace.prefilter)

    def __len__(self) -> int:
        return len(self._raw)

    @property
    def line(self) -> int | None:
        """The line of the chain's declaration, when known."""
        if callable(self._line):
            self._line = self._line()
        return self._line

    def raw(self, index: int) -> str:
        return self._raw[index][1]

    def rule(self, index: int) -> Rule:
        parsed = self._parsed[index]
        if parsed is None:
            assert self._parser is not None
            line, text = self._raw[index]
            parsed = self._parsed[index] = self._parser(text, line)
        return parsed

    @property
    def rules(self) -> list[Rule]:
        return [self.rule(i) for i in range(len(self._raw))]

    @property
    def builtin(self) -> bool:
        return self.name in BUILTIN_CHAINS.get(self.table, ())

    @property
    def effective_policy(self) -> str:
        return "ACCEPT" if self.policy in (None, "-") else self.policy


class Ruleset:
    """One family's tables, with chains looked up by name.

    Chains are produced by a loader function so that a source can parse (or fetch)
    only the chains a question reaches; results are cached. A live source may not know
    every chain name up front (listing 100,000 chains costs more than the question):
    it gives the tables and a function that lists the names when something needs them;
    until then a chain exists when the loader finds it.
    """

    def __init__(
        self,
        family: int | None,
        chain_names: dict[str, list[str]] | None,
        loader: Callable[[str, str], Chain | None],
        *,
        source: str = "<input>",
        backend: str | None = None,
        tables: list[str] | None = None,
        list_names: Callable[[], dict[str, list[str]]] | None = None,
    ) -> None:
        self.family = family  # 4, 6, or None when nothing in it says
        self._chain_names = chain_names
        self._name_sets = {t: set(n) for t, n in chain_names.items()} if chain_names is not None else None
        self._tables = list(chain_names) if chain_names is not None else list(tables or ())
        self._list_names = list_names
        self._loader = loader
        self._cache: dict[tuple[str, str], Chain | None] = {}
        self.source = source
        self.backend = backend

    @property
    def tables(self) -> list[str]:
        return list(self._tables)

    def _names(self) -> dict[str, list[str]]:
        if self._chain_names is None:
            self._chain_names = self._list_names() if self._list_names else {}
            self._name_sets = {t: set(n) for t, n in self._chain_names.items()}
        return self._chain_names

    def chain_names(self, table: str) -> list[str]:
        return list(self._names().get(table, ()))

    def has_chain(self, table: str, name: str) -> bool:
        if self._name_sets is None:
            return self.chain(table, name) is not None
        return name in self._name_sets.get(table, ())

    def chain(self, table: str, name: str) -> Chain | None:
        key = (table, name)
        if key not in self._cache:
            known = self._name_sets is None or name in self._name_sets.get(table, ())
            self._cache[key] = self._loader(table, name) if known and table in self._tables else None
        return self._cache[key]

    def iter_chains(self, table: str) -> Iterator[Chain]:
        for name in self.chain_names(table):
            chain = self.chain(table, name)
            if chain is not None:
                yield chain
