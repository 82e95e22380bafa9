"""Parse the words of one ``-A CHAIN ...`` rule into matches and a target.

Options belong to the module that defines them, as in iptables itself (``-m comment
--comment x -p tcp --dport 80`` gives --dport to the implicit tcp match). Options of a
module kptrace does not know go to that module, so they are kept and reported.
"""

from __future__ import annotations

import re

from ..errors import ParseError
from ..model.rules import Match, Option, Rule, Target
from .tokens import Token, UnbalancedQuote, tokenize

BUILTIN_LONG = {
    "--source": "-s",
    "--src": "-s",
    "--destination": "-d",
    "--dst": "-d",
    "--protocol": "-p",
    "--in-interface": "-i",
    "--out-interface": "-o",
    "--fragment": "-f",
    "--jump": "-j",
    "--goto": "-g",
    "--match": "-m",
}
BUILTIN_MATCHES = {"-s", "-d", "-p", "-i", "-o", "-f"}

_PORTS = {"--sport", "--dport", "--source-port", "--destination-port"}
# Which module defines which option: used to route an option to its owner.
MODULE_OPTIONS: dict[str, set[str]] = {
    "tcp": _PORTS | {"--tcp-flags", "--syn", "--tcp-option"},
    "udp": set(_PORTS),
    "sctp": _PORTS | {"--chunk-types"},
    "icmp": {"--icmp-type"},
    "icmp6": {"--icmpv6-type"},
    "multiport": {"--sports", "--dports", "--ports", "--source-ports", "--destination-ports"},
    "comment": {"--comment"},
    "nfacct": {"--nfacct-name"},
    "mark": {"--mark"},
    "connmark": {"--mark"},
    "conntrack": {
        "--ctstate", "--ctproto", "--ctorigsrc", "--ctorigdst", "--ctreplsrc", "--ctrepldst",
        "--ctorigsrcport", "--ctorigdstport", "--ctreplsrcport", "--ctrepldstport",
        "--ctstatus", "--ctexpire", "--ctdir",
    },
    "state": {"--state"},
    "addrtype": {"--src-type", "--dst-type", "--limit-iface-in", "--limit-iface-out"},
    "statistic": {"--mode", "--probability", "--every", "--packet"},
    "recent": {
        "--name", "--set", "--rcheck", "--update", "--remove", "--seconds", "--reap",
        "--hitcount", "--rttl", "--rsource", "--rdest", "--mask",
    },
    "physdev": {
        "--physdev-in", "--physdev-out", "--physdev-is-in", "--physdev-is-out",
        "--physdev-is-bridged",
    },
    "set": {"--match-set", "--return-nomatch", "--update-counters", "--update-subcounters",
            "--packets-eq", "--packets-lt", "--packets-gt", "--bytes-eq", "--bytes-lt",
            "--bytes-gt"},
    "iprange": {"--src-range", "--dst-range"},
    "limit": {"--limit", "--limit-burst"},
    "pkttype": {"--pkt-type"},
}

# Options that take no argument, and the few that take two; every other known one takes one.
ZERO_ARG = {
    "--syn", "--set", "--rcheck", "--update", "--remove", "--reap", "--rttl", "--rsource",
    "--rdest", "--random", "--random-fully", "--persistent", "--save-mark", "--restore-mark",
    "--notrack", "--physdev-is-in", "--physdev-is-out", "--physdev-is-bridged", "--log-uid",
    "--log-tcp-sequence", "--log-tcp-options", "--log-ip-options", "--limit-iface-in",
    "--limit-iface-out", "--return-nomatch", "--update-counters", "--update-subcounters",
    "--save", "--restore", "-f",
}
TWO_ARGS = {"--match-set", "--tcp-flags"}
KNOWN_ONE_ARG = (
    set().union(*MODULE_OPTIONS.values()) | {"-s", "-d", "-p", "-i", "-o"}
) - ZERO_ARG - TWO_ARGS

_OPTION_LIKE = re.compile(r"^--?[A-Za-z]")


def _is_option(word: str) -> bool:
    return bool(_OPTION_LIKE.match(word))


class _Builder:
    def __init__(self, module: str) -> None:
        self.module = module
        self.options: list[Option] = []

    def build(self) -> Match:
        return Match(self.module, tuple(self.options))


def parse_rule(
    line_text: str,
    *,
    table: str,
    line: int | None,
    source: str,
    lenient: bool = False,
) -> Rule:
    """Parse a ``-A CHAIN ...`` (or ``[p:b] -A CHAIN ...``) line."""

    def fail(problem: str, column: int | None) -> ParseError:
        return ParseError(problem, source=source, line=line, text=line_text, column=column)

    try:
        tokens = tokenize(line_text)
    except UnbalancedQuote as exc:
        raise fail("unbalanced quote", exc.column) from None

    counters: tuple[int, int] | None = None
    pos = 0
    if tokens and tokens[0].text.startswith("[") and not tokens[0].quoted:
        counters = _parse_counters(tokens[0], fail)
        pos = 1
    if len(tokens) < pos + 2 or tokens[pos].text not in ("-A", "-I", "--append", "--insert"):
        raise fail("expected '-A CHAIN' at the start of a rule", tokens[pos].column if len(tokens) > pos else 0)
    chain = tokens[pos + 1].text
    pos += 2
    if tokens[pos - 2].text in ("-I", "--insert") and pos < len(tokens) and tokens[pos].text.isdigit():
        pos += 1

    builtin = _Builder("")
    modules: list[_Builder] = []
    target_name: str | None = None
    target_goto = False
    target_opts: list[Option] = []
    proto: str | None = None
    negate = False
    negate_col = 0
    n = len(tokens)
    i = pos
    while i < n:
        tok = tokens[i]
        word = tok.text
        if word == "!" and not tok.quoted:
            if negate:
                raise fail("'!' twice", tok.column)
            negate, negate_col = True, tok.column
            i += 1
            continue
        if tok.quoted or not _is_option(word):
            raise fail(f"unexpected argument {word!r}" + (
                "" if lenient else " (an unquoted comment with spaces? try --lenient)"
            ), tok.column)
        name = BUILTIN_LONG.get(word, word)
        if name == "-c":  # "-c PKTS BYTES" counters, as iptables-restore accepts them
            if i + 2 >= n:
                raise fail("'-c' needs packet and byte counts", tok.column)
            counters = (_int(tokens[i + 1], fail), _int(tokens[i + 2], fail))
            i += 3
            continue
        if name == "-m":
            if negate:
                raise fail("'!' cannot negate '-m'", negate_col)
            if i + 1 >= n:
                raise fail("'-m' needs a module name", tok.column)
            modules.append(_Builder(tokens[i + 1].text))
            i += 2
            continue
        if name in ("-j", "-g"):
            if negate:
                raise fail(f"'!' cannot negate '{name}'", negate_col)
            if target_name is not None:
                raise fail("a rule has one target", tok.column)
            if i + 1 >= n:
                raise fail(f"'{name}' needs a target", tok.column)
            target_name = tokens[i + 1].text
            target_goto = name == "-g"
            i += 2
            continue
        # an option with its arguments
        j = i + 1
        old_style_neg = False
        if j < n and tokens[j].text == "!" and not tokens[j].quoted and j + 1 < n and not _is_option(tokens[j + 1].text):
            old_style_neg = True  # "--dport ! 80", the old spelling
            j += 1
        args_start = j
        while j < n and (tokens[j].quoted or (not _is_option(tokens[j].text) and tokens[j].text != "!")):
            j += 1
        args = [t.text for t in tokens[args_start:j]]
        expected = 0 if name in ZERO_ARG else 2 if name in TWO_ARGS else 1 if name in KNOWN_ONE_ARG else None
        if expected is not None and len(args) != expected:
            if lenient and name == "--comment" and args:
                args = [" ".join(args)]
            elif len(args) > expected:
                extra = tokens[args_start + expected]
                hint = " (an unquoted comment with spaces? try --lenient)" if name == "--comment" and not lenient else ""
                raise fail(f"unexpected argument {extra.text!r} after {word}{hint}", extra.column)
            else:
                raise fail(f"{word} needs {expected} argument{'s' if expected != 1 else ''}", tok.column)
        option = Option(name, tuple(args), negate or old_style_neg)
        negate = False
        if target_name is not None and name not in BUILTIN_MATCHES and not _owned(name, modules):
            target_opts.append(option)
        elif name in BUILTIN_MATCHES:
            if name == "-p" and args:
                proto = args[0].lower()
            builtin.options.append(option)
        else:
            owner = _owner(name, modules, proto)
            if owner is None:
                raise fail(f"unknown option {word} (no module loaded that takes it)", tok.column)
            if owner not in modules:
                modules.append(owner)
            owner.options.append(option)
        i = j
    if negate:
        raise fail("'!' at the end of the rule", negate_col)

    matches: list[Match] = []
    if builtin.options:
        matches.append(builtin.build())
    matches.extend(m.build() for m in modules)
    target = Target(target_name, tuple(target_opts), target_goto) if target_name else None
    return Rule(
        table=table,
        chain=chain,
        raw=line_text.strip(),
        line=line,
        matches=tuple(matches),
        target=target,
        source=source,
        counters=counters,
    )


def _owner(option: str, modules: list[_Builder], proto: str | None) -> _Builder | None:
    for mod in reversed(modules):
        if option in MODULE_OPTIONS.get(mod.module, ()):
            return mod
    implicit = {"icmpv6": "icmp6", "ipv6-icmp": "icmp6"}.get(proto or "", proto)
    if implicit in MODULE_OPTIONS and option in MODULE_OPTIONS[implicit]:
        for mod in modules:
            if mod.module == implicit:
                return mod
        return _Builder(implicit)
    for mod in reversed(modules):
        if mod.module not in MODULE_OPTIONS:  # a module we do not know: keep its options
            return mod
    return None


def _owned(option: str, modules: list[_Builder]) -> bool:
    return any(option in MODULE_OPTIONS.get(mod.module, ()) for mod in modules)


def _int(tok: Token, fail) -> int:  # type: ignore[no-untyped-def]
    try:
        return int(tok.text)
    except ValueError:
        raise fail(f"expected a number, got {tok.text!r}", tok.column) from None


def _parse_counters(tok: Token, fail) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    m = re.fullmatch(r"\[(\d+):(\d+)\]", tok.text)
    if not m:
        raise fail(f"bad counters {tok.text!r} (expected [packets:bytes])", tok.column)
    return int(m.group(1)), int(m.group(2))


def parse_rule_words(text: str, *, table: str, source: str) -> Rule:
    """Parse a rule written by kptrace itself (the standard jumps it adds)."""
    return parse_rule(text, table=table, line=None, source=source)
