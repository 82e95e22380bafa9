"""Read single chains from the iptables-nft backend, on demand.

A full ``iptables-nft-save`` of a node with 10,000 Services takes minutes (it formats
every rule), while ``iptables-nft -t nat -S CHAIN`` takes milliseconds: the nf_tables
backend fetches just that chain. So on the nft backend kptrace fetches a chain's rules
only when a question reaches it; even the list of chain names (``nft list chains``: a
second on such a node; ``nft list tables`` is slower still) is read only when something
needs every name. The legacy backend fetches a whole table for any listing, so there a full
save is as cheap and is what kptrace reads.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from concurrent.futures import Future
from typing import Callable, Sequence

from ..model.rules import BUILTIN_CHAINS, Chain, Ruleset
from ..parse.iptables_rule import parse_rule

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[str]"]
READ_AHEAD_MAX = 64  # jump targets of one chain read ahead, at most
READ_AHEAD_WORKERS = 4
_JUMP = re.compile(r" -[jg] (\S+)")
ChainList = dict[str, list[tuple[str, str | None]]]  # table -> [(chain, policy of a built-in)]

_TABLE = re.compile(r"^table (\S+) (\S+) \{")
_CHAIN = re.compile(r"^\s+chain (\S+) \{")
_POLICY = re.compile(r"policy (\w+);")


def parse_chain_list(text: str) -> dict[int, ChainList]:
    """``nft list chains`` -> family -> table -> chains (iptables-nft's tables only)."""
    out: dict[int, ChainList] = {}
    table: list[tuple[str, str | None]] | None = None
    builtins: tuple[str, ...] = ()
    current: str | None = None
    for line in text.splitlines():
        m = _TABLE.match(line)
        if m:
            family = {"ip": 4, "ip6": 6}.get(m.group(1))
            name = m.group(2)
            # iptables-nft keeps its tables in families ip/ip6 under the classic names
            table = out.setdefault(family, {}).setdefault(name, []) if family and name in BUILTIN_CHAINS else None
            builtins = BUILTIN_CHAINS.get(name, ())
            continue
        if table is None:
            continue
        c = _CHAIN.match(line)
        if c:
            current = c.group(1).strip('"')
            table.append((current, "ACCEPT" if current in builtins else None))
            continue
        p = _POLICY.search(line)
        if p and current in builtins and table:
            table[-1] = (current, p.group(1).upper())
    return out


def kube_services(command: str, *, timeout: float, runner: Runner) -> str | None:
    """nat KUBE-SERVICES as ``-S`` prints it, or None when kube-proxy's chain is not there."""
    proc = runner([command, "-w", "5", "-t", "nat", "-S", "KUBE-SERVICES"], timeout)
    return proc.stdout if proc.returncode == 0 else None


def skeleton_save(tables: ChainList) -> str:
    """An iptables-save text with the chain declarations only (for backend detection)."""
    parts = []
    for table, chains in tables.items():
        decl = "".join(f":{name} {policy or '-'} [0:0]\n" for name, policy in chains)
        parts.append(f"*{table}\n{decl}COMMIT\n")
    return "".join(parts)


def per_chain_ruleset(
    family: int,
    tables: list[str],
    *,
    command: str,
    nft: str,
    timeout: float,
    runner: Runner,
    lenient: bool,
    fetched: dict[tuple[str, str], str] | None = None,
) -> Ruleset:
    """A Ruleset whose chains are fetched with ``iptables-nft -t TABLE -S CHAIN`` when asked for.

    ``fetched`` holds ``-S`` outputs already read (kube-proxy's KUBE-SERVICES, read to find
    the backend), so they are not fetched twice."""
    tool = os.path.basename(command)
    fetched = dict(fetched or {})
    # Chains a loaded chain jumps to are read ahead, a few at a time: a question that
    # reaches a Service's chain goes on to its endpoints' chains, and one -S call at a
    # time leaves the other core idle.
    # Daemon threads: a read no question needed in the end must not hold up the exit.
    ahead: dict[tuple[str, str], Future[subprocess.CompletedProcess[str]]] = {}
    loaded: set[tuple[str, str]] = set()
    slots = threading.BoundedSemaphore(READ_AHEAD_WORKERS)

    def read(table: str, name: str) -> subprocess.CompletedProcess[str]:
        return runner([command, "-w", "5", "-t", table, "-S", name], timeout)

    def in_background(table: str, name: str) -> Future[subprocess.CompletedProcess[str]]:
        future: Future[subprocess.CompletedProcess[str]] = Future()

        def work() -> None:
            with slots:
                if not future.set_running_or_notify_cancel():
                    return
                try:
                    future.set_result(read(table, name))
                except BaseException as exc:  # handed to whoever asks for the chain
                    future.set_exception(exc)

        threading.Thread(target=work, name=f"read-ahead {name}", daemon=True).start()
        return future

    def read_ahead(table: str, lines: list[str]) -> None:
        targets = {m.group(1) for line in lines for m in [_JUMP.search(line)] if m}
        targets = {
            t for t in targets
            if ("-" in t or not t.isupper()) and (table, t) not in ahead and (table, t) not in loaded
            and (table, t) not in fetched
        }
        if not targets or len(targets) > READ_AHEAD_MAX:
            return  # KUBE-SERVICES jumps to every Service: not worth reading them all
        for target in sorted(targets):
            ahead[(table, target)] = in_background(table, target)

    def names() -> dict[str, list[str]]:
        proc = runner([nft, "list", "chains"], timeout)
        listed = parse_chain_list(proc.stdout).get(family, {}) if proc.returncode == 0 else {}
        return {table: [name for name, _ in listed.get(table, [])] for table in tables}

    def load(table: str, name: str) -> Chain | None:
        text = fetched.pop((table, name), None)
        if text is None:
            future = ahead.get((table, name))
            proc = future.result() if future is not None else read(table, name)
            if proc.returncode != 0:
                return None  # no such chain (or gone since): the simulator reports a missing chain
            text = proc.stdout
        source = f"{tool} -t {table} -S {name}"
        lines = text.splitlines()
        loaded.add((table, name))
        read_ahead(table, lines)
        policy = None
        for line in lines:
            if line.startswith("-P "):
                policy = line.split()[2]
        return Chain(
            table,
            name,
            policy,
            raw=[(None, line) for line in lines if line.startswith("-A ")],
            parser=lambda text, line: parse_rule(text, table=table, line=line, source=source, lenient=lenient),
        )

    return Ruleset(family, None, load, source=f"{tool} (per chain)", backend="nft", tables=tables, list_names=names)
