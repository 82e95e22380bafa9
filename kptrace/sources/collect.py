"""Collect the node's raw state once; turn raw state into a NodeState.

The live path (``load_live``) collects and parses; the dump path (``write_dump``)
collects and writes the raw texts, and ``load_dump`` reads them back into the same
``RawState`` and parses them with the same code. Nothing here changes the node: only
``*-save`` commands, netlink dumps and reads of /proc/sys.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

from ..errors import ROOT_MESSAGE, EnvironmentProblem, ParseError, UnsupportedMode, UsageError
from ..model.rules import BUILTIN_CHAINS, Ruleset
from ..model.state import NodeState, Provenance, Route, SourceKind
from ..parse.detect import kube_proxy_mode, parse_iptables_mode_save
from ..parse.ipset import parse_ipset_save
from .chains import kube_services, per_chain_ruleset, skeleton_save
from .legacy import blob_ipvs_mode, blob_ruleset, has_kube_chains
from .xtables import Pending, take_prefetched

if TYPE_CHECKING:
    from ..parse.xtables import XtTable

BACKENDS = ("nft", "legacy")
FAMILIES = (4, 6)
SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.conf.all.route_localnet", "net.ipv6.conf.all.forwarding")
# Debian packages, for the message when a binary is missing.
PACKAGES = {
    "iptables": "iptables",
    "ip6tables": "iptables",
    "ipset": "ipset",
    "ip": "iproute2",
    "nft": "nftables",
    "conntrack": "conntrack",
}
# root's PATH has these; a sudo or cron PATH may not.
SBIN_DIRS: tuple[str, ...] = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# A save that jumps to an undeclared chain was read while the rules changed.
CONSISTENCY_RETRIES = 3


_RTN_KINDS = {
    1: "unicast", 2: "local", 3: "broadcast", 4: "anycast", 5: "multicast",
    6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw", 10: "nat",
}
_TABLES = {253: "default", 254: "main", 255: "local"}
_DENIED = re.compile(r"permission denied|operation not permitted|you must be root", re.I)
_NO_LEGACY = re.compile(r"_tables_names: No such file or directory")

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]


@dataclass
class RawState:
    """What kptrace reads from a node, as text and plain data (JSON-ready)."""

    saves: dict[tuple[str, int], str]  # (backend, family) -> iptables-save text, "" when empty
    commands: dict[tuple[str, int], str]  # (backend, family) -> the command that printed it
    ipset: str | None = None  # ``ipset save`` output; None when ipset is missing or failed
    # None: not read (a bundle without that file); the state then says "unknown".
    addresses: list[dict] | None = None  # {ifname, family, address, prefixlen}
    routes: list[dict] | None = None  # {table, family, dst, kind, dev, gateway}
    policy_rules: list[dict] = field(default_factory=list)  # {family, priority, table}
    sysctls: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)  # command -> its --version line
    warnings: list[str] = field(default_factory=list)
    # Live only: the nft backend's chain names, when its chains are fetched one by one.
    nft_chains: dict[int, list[str]] | None = None  # family -> tables
    nft_kube_services: dict[int, str] = field(default_factory=dict)  # family -> its -S output
    # Live only: the legacy backend's tables as the kernel holds them (read instead of its saves).
    legacy_tables: dict[int, dict[str, XtTable]] | None = None  # family -> table -> blob
    timeout: float = 30.0
    runner: Runner | None = None


# -- running commands -------------------------------------------------------


def find_binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def missing_binary(name: str) -> EnvironmentProblem:
    package = PACKAGES.get(name.split("-", 1)[0], name)
    return EnvironmentProblem(f"{name} not found: install the Debian package {package!r} (apt-get install {package})")


def run_command(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a read-only command; C locale so its messages can be recognised.

    Read as bytes and decoded once: text mode's newline translation costs a second pass
    over a save of 40 MB, and these tools print plain newlines."""
    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            timeout=timeout,
            env={**os.environ, "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
        )
        return subprocess.CompletedProcess(
            proc.args,
            proc.returncode,
            proc.stdout.decode("utf-8", "surrogateescape"),
            proc.stderr.decode("utf-8", "surrogateescape"),
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentProblem(f"{argv[0]} did not finish within {timeout:g}s (rules locked or very large?)") from None
    except FileNotFoundError:
        raise missing_binary(os.path.basename(argv[0])) from None
    except PermissionError:
        raise EnvironmentProblem(f"{argv[0]}: permission denied: {ROOT_MESSAGE}") from None


def _first_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else ""


# -- iptables rules -----------------------------------------------------------


def save_commands() -> dict[tuple[str, int], str]:
    """The save binary per (backend, family) on this machine."""
    found: dict[tuple[str, int], str] = {}
    for family in FAMILIES:
        prefix = "ip6tables" if family == 6 else "iptables"
        for backend in BACKENDS:
            path = find_binary(f"{prefix}-{backend}-save")
            if path:
                found[(backend, family)] = path
    if not found:
        # iptables before 1.8 ships one save binary; its --version names the backend.
        for family in FAMILIES:
            prefix = "ip6tables" if family == 6 else "iptables"
            path = find_binary(f"{prefix}-save")
            if path:
                version = run_command([path, "--version"], 10.0).stdout
                found[("nft" if "nf_tables" in version else "legacy", family)] = path
    return found


# A rule's jump: the last -j/-g of its line (a comment before it may quote " -j ...").
_JUMP_TARGET = re.compile(r" -[jg] ([^\s\"]+)(?:(?! -[jg] )[^\n])*(?=\n|$)")
_TABLE_HEAD = re.compile(r"\*(\S+)")
_TABLE_HEAD_NL = re.compile(r"\n\*(\S+)")  # a literal first: scanned at C speed
_DECLARED = re.compile(r"\n:(\S+)")


def undeclared_jumps(text: str) -> list[str]:
    """``table chain -> target`` for each jump to a chain the save does not declare.

    The scans are regular expressions over each table's text (a large save has 400,000
    rules); only a target found missing is traced back to its rule."""
    bad: list[str] = []
    first = _TABLE_HEAD.match(text)
    heads = ([first] if first else []) + list(_TABLE_HEAD_NL.finditer(text))
    for m in heads:
        table, start = m.group(1), m.end()
        end = text.find("\nCOMMIT", start)
        if end < 0:
            continue  # a truncated table: the parser reports it
        declared = set(_DECLARED.findall(text, start, end))
        for target in set(_JUMP_TARGET.findall(text, start, end)) - declared:
            # Extension targets are upper case without dashes (DNAT, MARK, ...).
            if "-" not in target and target.isupper():
                continue
            for line in re.finditer(rf"\n(?:\[\d+:\d+\] )?-A (\S+)[^\n]* -[jg] {re.escape(target)}(?=\s|$)", text[start - 1:end]):
                bad.append(f"{table} {line.group(1)} -> {target}")
    return sorted(bad)


def read_save(
    command: str, *, timeout: float, runner: Runner = run_command, atomic: bool = False, args: Sequence[str] = ()
) -> tuple[str, list[str]]:
    """One consistent iptables-save text (retried while it is not) and its warnings.

    ``atomic``: the backend reads each table in one snapshot (legacy: one getsockopt per
    table), so the text needs no consistency check. ``args``: e.g. ``-t nat``."""
    name = " ".join([os.path.basename(command), *args])
    problems: list[str] = []
    for _attempt in range(1 + CONSISTENCY_RETRIES):
        proc = runner([command, *args], timeout)
        if proc.returncode != 0:
            err = proc.stderr.strip()
            if _NO_LEGACY.search(err):
                return "", []  # the legacy modules are not loaded: no legacy rules
            if _DENIED.search(err):
                raise EnvironmentProblem(ROOT_MESSAGE, detail=f"{name}: {_first_line(err)}")
            raise EnvironmentProblem(f"{name} failed (exit {proc.returncode}): {_first_line(err) or 'no message'}")
        problems = [] if atomic else undeclared_jumps(proc.stdout)
        if not problems:
            return proc.stdout, []
    shown = ", ".join(problems[:3]) + (" ..." if len(problems) > 3 else "")
    return proc.stdout, [
        f"{name}: the rules kept changing while read ({1 + CONSISTENCY_RETRIES} tries): jumps to "
        f"undeclared chains ({shown}); the answer may mix old and new rules"
    ]


def read_saves(
    *, forced: str | None = None, timeout: float, runner: Runner = run_command, skip: tuple[str, ...] = ()
) -> tuple[dict[tuple[str, int], str], dict[tuple[str, int], str], list[str]]:
    """Both backends, both families: split brain shows only when both are read."""
    commands = save_commands()
    wanted = forced or "nft"
    if forced in skip:
        pass  # read another way
    elif not commands or (forced and not any(b == forced for b, _f in commands)):
        raise missing_binary(f"iptables-{wanted}-save")
    saves: dict[tuple[str, int], str] = {}
    warnings: list[str] = []
    wanted = [(key, command) for key, command in commands.items() if key[0] not in skip]
    # The saves run side by side: the time is the slowest one's, not the sum.
    with ThreadPoolExecutor(max_workers=max(len(wanted), 1)) as pool:
        futures = [
            pool.submit(read_save, command, timeout=timeout, runner=runner, atomic=key[0] == "legacy")
            for key, command in wanted
        ]
        for (key, _command), future in zip(wanted, futures):
            text, w = future.result()
            saves[key] = text
            warnings.extend(w)
    return saves, {k: os.path.basename(v) for k, v in commands.items()}, warnings


def read_ipset(*, timeout: float, runner: Runner = run_command) -> str | None:
    path = find_binary("ipset")
    if path is None:
        return None
    try:
        proc = runner([path, "save"], timeout)
    except EnvironmentProblem:
        return None
    return proc.stdout if proc.returncode == 0 else None


# -- addresses, routes, sysctls ------------------------------------------------


def read_network() -> tuple[list[dict], list[dict], list[dict]]:
    """Addresses, main+local routes and policy rules through netlink (pyroute2)."""
    try:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
    except ImportError:
        raise EnvironmentProblem("pyroute2 is not installed (pip install pyroute2)") from None
    try:
        with IPRoute() as ipr:
            names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
            addresses = [
                {
                    "ifname": names.get(msg["index"]),
                    "family": 6 if msg["family"] == 10 else 4,
                    "address": msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS"),
                    "prefixlen": msg["prefixlen"],
                }
                for msg in ipr.get_addr()
            ]
            routes = [_route_entry(msg, names) for table in (254, 255) for msg in ipr.get_routes(table=table)]
            rules = [
                {"family": 6 if msg["family"] == 10 else 4, "priority": msg.get("FRA_PRIORITY", 0),
                 "table": _table_name(msg.get("FRA_TABLE") or msg["table"])}
                for family in (2, 10)
                for msg in ipr.get_rules(family=family)
            ]
    except NetlinkError as exc:
        raise EnvironmentProblem(f"cannot read addresses and routes over netlink: {exc}") from None
    return addresses, routes, rules


def _table_name(number: int) -> str:
    return _TABLES.get(number, str(number))


def _route_entry(msg: Mapping, names: Mapping[int, str | None]) -> dict:
    family = 6 if msg["family"] == 10 else 4
    dst = msg.get("RTA_DST") or ("::" if family == 6 else "0.0.0.0")
    oif, gateway = msg.get("RTA_OIF"), msg.get("RTA_GATEWAY")
    hops = msg.get("RTA_MULTIPATH") or []
    if oif is None and hops:  # ECMP: the first next hop stands for the route
        oif, gateway = hops[0].get("oif"), hops[0].get("RTA_GATEWAY")
    return {
        "table": _table_name(msg.get("RTA_TABLE") or msg["table"]),
        "family": family,
        "dst": f"{dst}/{msg['dst_len']}",
        "kind": _RTN_KINDS.get(msg["type"], str(msg["type"])),
        "dev": names.get(oif) if oif is not None else None,
        "gateway": gateway,
    }


def read_sysctls() -> dict[str, str]:
    """Opened now, so they are the values of the current network namespace."""
    values: dict[str, str] = {}
    for key in SYSCTLS:
        try:
            with open("/proc/sys/" + key.replace(".", "/"), encoding="ascii") as fh:
                values[key] = fh.read().strip()
        except OSError:
            pass  # IPv6 disabled, or /proc/sys not mounted
    return values


# -- the whole collection ------------------------------------------------------


def collect(
    *,
    backend: str | None = None,
    timeout: float = 30.0,
    versions: bool = False,
    runner: Runner = run_command,
    per_chain: bool = False,
) -> RawState:
    """Read everything once: rules (both backends, both families), ipsets, network.

    ``per_chain``: rules are read as questions reach them (the nft backend chain by chain,
    the legacy backend from its kernel tables) instead of with the save commands."""
    forced = check_backend(backend)
    # The legacy tables first: the kernel's copy of a large one is the longest single read
    # (the program may have started it already).
    legacy = (take_prefetched() or Pending()) if per_chain else None
    # Netlink and ipset are read while the rules are: on a large node the saves take seconds.
    # A thread started here is in the same network namespace as this one.
    side = ThreadPoolExecutor(max_workers=2)
    network = side.submit(read_network)
    ipset = side.submit(read_ipset, timeout=timeout, runner=runner)
    try:
        raw = _collect_rules(forced, timeout=timeout, runner=runner, per_chain=per_chain, legacy=legacy)
        raw.ipset = ipset.result()
        raw.addresses, raw.routes, raw.policy_rules = network.result()
    finally:
        side.shutdown(wait=True, cancel_futures=True)
    raw.sysctls = read_sysctls()
    if versions:
        for key, command in save_commands().items():
            if key in raw.saves:
                raw.versions[os.path.basename(command)] = _first_line(runner([command, "--version"], timeout).stdout)
        ipset_path = find_binary("ipset")
        if ipset_path and raw.ipset is not None:
            raw.versions["ipset"] = _first_line(runner([ipset_path, "version"], timeout).stdout)
    return raw


def _collect_rules(
    forced: str | None, *, timeout: float, runner: Runner, per_chain: bool, legacy: Pending | None = None
) -> RawState:
    nft_chains: dict[int, list[str]] | None = None
    kube_services_text: dict[int, str] = {}
    probed = _nft_per_chain(timeout=timeout, runner=runner) if per_chain and forced in (None, "nft") else None
    if probed is not None:
        nft_chains, kube_services_text = probed
    skip = ("nft",) if nft_chains is not None else ()
    if legacy is not None:
        skip += ("legacy",)
    saves, commands, warnings = read_saves(forced=forced, timeout=timeout, runner=runner, skip=skip)
    if nft_chains is not None:
        for family in FAMILIES:
            # Declarations only, so that the backend choice sees kube-proxy's chains.
            saves[("nft", family)] = skeleton_save({"nat": [("KUBE-SERVICES", None)]}) if family in nft_chains else ""
            commands[("nft", family)] = f"{'ip6tables' if family == 6 else 'iptables'}-nft"
    legacy_tables = legacy.result() if legacy is not None else None
    if legacy_tables is not None:
        for family in FAMILIES:
            saves.pop(("legacy", family), None)
            commands[("legacy", family)] = f"{'ip6tables' if family == 6 else 'iptables'}-legacy"
    return RawState(saves=saves, commands=commands, warnings=warnings, nft_chains=nft_chains, timeout=timeout, runner=runner,
        nft_kube_services=kube_services_text, legacy_tables=legacy_tables,
    )


def check_backend(backend: str | None) -> str | None:
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    return str(backend) if backend is not None else None


# -- raw state -> NodeState ----------------------------------------------------


_RULE_LINE = re.compile(r"\n(?:\[\d+:\d+\] )?-A ")


def _has_kube_chains(text: str) -> bool:
    return text.startswith(":KUBE-") or "\n:KUBE-" in text


def choose_backend(
    saves: Mapping[tuple[str, int], str],
    forced: str | None,
    tables: Mapping[int, Mapping[str, XtTable]] | None = None,
) -> tuple[str, list[str]]:
    """The backend holding kube-proxy's chains (nft when both do), and warnings.

    ``tables``: the legacy backend's tables read from the kernel instead of its saves."""
    tables = tables or {}
    kube = [
        b for b in BACKENDS
        if any(_has_kube_chains(t) for (b2, _f), t in saves.items() if b2 == b)
        or (b == "legacy" and any(has_kube_chains(ts) for ts in tables.values()))
    ]
    warnings: list[str] = []
    if forced:
        chosen = forced
    elif kube:
        chosen = kube[0]
    else:
        has_rules = [
            b for b in BACKENDS
            if any(t.strip() for (b2, _f), t in saves.items() if b2 == b) or (b == "legacy" and any(tables.values()))
        ]
        chosen = has_rules[0] if has_rules else "nft"
    if not kube:
        warnings.append(
            "no kube-proxy chains (KUBE-*) in iptables-nft or iptables-legacy: kube-proxy is not "
            "running in iptables mode here (nftables or IPVS mode, or another network namespace?)"
        )
    if len(kube) == 2:
        why = "as asked" if forced else "nft is preferred"
        warnings.append(
            "SPLIT BRAIN: kube-proxy's chains (KUBE-*) are in both iptables-nft and iptables-legacy: "
            "kube-proxy and another component disagree on the iptables backend, and the kernel runs "
            f"both rule sets; this answer uses only iptables-{chosen} ({why})"
        )
    elif forced and kube and forced not in kube:
        warnings.append(f"kube-proxy's chains (KUBE-*) are in iptables-{kube[0]}, but iptables-{forced} was asked for")
    if len(kube) < 2:
        counts = {key: (lambda text=text: len(_RULE_LINE.findall("\n" + text))) for key, text in saves.items()}
        for family, ts in tables.items():
            counts[("legacy", family)] = lambda ts=ts: sum(t.rule_count() for t in ts.values())
        for (b, family), count in sorted(counts.items()):
            if b == chosen:
                continue  # not counted: the chosen save can hold 400,000 rules
            rules = count()
            if rules:
                warnings.append(
                    f"iptables-{b} also holds {rules} IPv{family} rules: the kernel applies them too, "
                    "but this answer does not include them"
                )
    return chosen, warnings


@contextmanager
def reading(source: str) -> Iterator[None]:
    """Malformed JSON-shaped data becomes a ParseError naming its file."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ParseError(f"malformed entry: {type(exc).__name__}: {exc}", source=source) from None


def rulesets_from_saves(
    saves: Mapping[tuple[str, int], str], backend: str, *, sources: Mapping[tuple[str, int], str], lenient: bool
) -> tuple[list[Ruleset], list[str]]:
    """Parse the chosen backend's saves.

    This is the one place rules enter a live or dumped state; a reader that fetches
    single chains on demand (``iptables -w -t TABLE -S CHAIN``) would replace it with a
    Ruleset whose loader runs that command.
    """
    rulesets: list[Ruleset] = []
    warnings: list[str] = []
    for family in FAMILIES:
        text = saves.get((backend, family), "")
        if not re.search(r"^\*", text, re.M):
            continue  # no tables in this family
        source = sources.get((backend, family), f"{backend}-v{family}")
        found, w = parse_iptables_mode_save(text, source=source, lenient=lenient, backend=backend)
        for rs in found:
            rs.family = family  # the command says which family; the text may not
        rulesets.extend(found)
        warnings.extend(w)
    return rulesets, warnings


def _nft_per_chain(*, timeout: float, runner: Runner) -> tuple[dict[int, list[str]], dict[int, str]] | None:
    """The nft backend's tables per family holding kube-proxy's chains, or None when the
    backend is to be read whole (no nft tools, or no kube-proxy chains there)."""
    found: dict[int, list[str]] = {}
    texts: dict[int, str] = {}
    for family in FAMILIES:
        command = find_binary("ip6tables-nft" if family == 6 else "iptables-nft")
        if command is None:
            continue
        services = kube_services(command, timeout=timeout, runner=runner)
        if services is not None:
            if kube_proxy_mode(services) == "ipvs":
                raise UnsupportedMode(f"iptables-nft IPv{family}: kube-proxy's IPVS mode detected: not supported yet")
            # Listing the tables costs as much as the whole ruleset on a big node; a table
            # that does not exist reads as empty built-in chains with policy ACCEPT, which is
            # what the kernel does without it.
            found[family] = list(BUILTIN_CHAINS)
            texts[family] = services
    return (found, texts) if found else None


def _per_chain_rulesets(raw: RawState, *, lenient: bool) -> tuple[list[Ruleset], list[str]]:
    assert raw.nft_chains is not None
    nft = find_binary("nft") or "nft"
    rulesets = []
    for family, tables in sorted(raw.nft_chains.items()):
        command = find_binary("ip6tables-nft" if family == 6 else "iptables-nft") or "iptables-nft"
        rulesets.append(
            per_chain_ruleset(
                family,
                tables,
                command=command,
                nft=nft,
                timeout=raw.timeout,
                runner=raw.runner or run_command,
                lenient=lenient,
                fetched={("nat", "KUBE-SERVICES"): raw.nft_kube_services[family]} if family in raw.nft_kube_services else None,
            )
        )
    return rulesets, []


def _blob_rulesets(
    raw: RawState, found: Mapping[int, Mapping[str, XtTable]], *, lenient: bool, warn: Callable[[str], None]
) -> list[Ruleset]:
    """The legacy backend from its kernel tables; a table with a rule kptrace cannot decode
    is read with ``iptables-legacy-save -t TABLE`` instead."""
    runner = raw.runner or run_command

    def save_table(family: int, table: str) -> Ruleset:
        name = f"{'ip6tables' if family == 6 else 'iptables'}-legacy-save"
        command = find_binary(name)
        if command is None:
            raise missing_binary(name)
        text, _ = read_save(command, timeout=raw.timeout, runner=runner, atomic=True, args=("-t", table))
        source = f"{name} -t {table}"
        found_rs, _warnings = parse_iptables_mode_save(text, source=source, lenient=lenient, backend="legacy")
        for rs in found_rs:
            if table in rs.tables:
                return rs
        return Ruleset(family, {table: []}, _no_chain, source=source, backend="legacy")

    rulesets = []
    for family, tables in sorted(found.items()):
        if not tables:
            continue
        rs = blob_ruleset(family, dict(tables), save_table=save_table, lenient=lenient, warn=warn)
        if blob_ipvs_mode(rs, tables):
            raise UnsupportedMode(f"iptables-legacy IPv{family}: kube-proxy's IPVS mode detected: not supported yet")
        rulesets.append(rs)
    return rulesets


def _no_chain(_table: str, _chain: str) -> None:
    return None


def build_state(
    raw: RawState,
    *,
    kind: SourceKind,
    backend: str | None,
    lenient: bool,
    sources: Mapping[str, str],
    rule_sources: Mapping[tuple[str, int], str],
    paths: tuple[str, ...] = (),
    time: str | None = None,
) -> NodeState:
    """``sources`` names where each part came from (addresses, routes, ipset), for errors."""
    chosen, warnings = choose_backend(raw.saves, check_backend(backend), raw.legacy_tables)
    later: list[str] = []  # the state's warnings: some are found while chains are read on demand
    if chosen == "nft" and raw.nft_chains is not None:
        rulesets, parse_warnings = _per_chain_rulesets(raw, lenient=lenient)
    elif chosen == "legacy" and raw.legacy_tables is not None:
        parse_warnings = []
        rulesets = _blob_rulesets(raw, raw.legacy_tables, lenient=lenient, warn=later.append)
    else:
        rulesets, parse_warnings = rulesets_from_saves(raw.saves, chosen, sources=rule_sources, lenient=lenient)
    # A family without tables on the node accepts everything: still traceable.
    for family in sorted(set(FAMILIES) - {rs.family for rs in rulesets}):
        rulesets.append(Ruleset(family, {}, _no_chain, source=f"iptables-{chosen} IPv{family} (no rules)", backend=chosen))
    ipsets = None
    if raw.ipset is not None:
        ipsets = parse_ipset_save(raw.ipset, source=sources.get("ipset", "ipset save"))
    local_ips = routes = None
    if raw.addresses is not None:
        with reading(sources.get("addresses", "addresses")):
            local_ips = frozenset(ipaddress.ip_address(a["address"]) for a in raw.addresses if a.get("address"))
    with reading(sources.get("routes", "routes")):
        if raw.routes is not None:
            routes = tuple(
                Route(
                    dst=ipaddress.ip_network(r["dst"], strict=False),
                    kind=str(r.get("kind", "unicast")),
                    dev=r.get("dev"),
                    gateway=ipaddress.ip_address(r["gateway"]) if r.get("gateway") else None,
                    table=str(r.get("table", "main")),
                )
                for r in raw.routes
            )
        other_tables = sorted({str(r["table"]) for r in raw.policy_rules} - {"local", "main", "default"})
    if other_tables:
        warnings.append(
            f"policy routing sends some packets to routing tables {', '.join(other_tables)}: "
            "kptrace routes with the main table only"
        )
    later[:0] = [*raw.warnings, *warnings, *parse_warnings]
    return NodeState(
        rulesets=rulesets,
        provenance=Provenance(kind=kind, backend=chosen, paths=paths, time=time),
        local_ips=local_ips,
        routes=routes,
        ipsets=ipsets,
        sysctls=dict(raw.sysctls),
        warnings=later,
    )
