"""Remove what a killed probe left in the current network namespace."""

from __future__ import annotations

import shlex

from ..sources.collect import find_binary, run_command
from . import PROBE_COMMENT, PROBE_TABLE, guard, sourcens


def cleanup() -> list[str]:
    """The guard table, any iptables rule commented ``kptrace-probe`` (either backend,
    either family), temporary source namespaces (``kptrace-probe-PID``) whose process is
    gone and their node-side links (``kptrace-HEXPID``); returns one line per thing
    removed. kube-proxy's rules are untouched: only rules carrying the probe's comment are
    deleted, and only namespaces and links named by the probe."""
    removed: list[str] = []
    for ns in sourcens.leftovers():
        if sourcens.remove(ns):
            removed.append(f"network namespace {ns}")
    for link in sourcens.stale_links():
        if sourcens.remove_link(link):
            removed.append(f"link {link}")
    if guard.remove():
        removed.append(f"nft table inet {PROBE_TABLE}")
    for prefix in ("iptables", "ip6tables"):
        for backend in ("nft", "legacy"):
            save, tool = find_binary(f"{prefix}-{backend}-save"), find_binary(f"{prefix}-{backend}")
            if not save or not tool:
                continue
            proc = run_command([save], 30.0)
            if proc.returncode != 0:
                continue
            table = ""
            for line in proc.stdout.splitlines():
                if line.startswith("*"):
                    table = line[1:].strip()
                elif line.startswith("-A ") and PROBE_COMMENT in line:
                    spec = shlex.split(line)[1:]  # the rule without -A: what -D takes
                    if run_command([tool, "-w", "-t", table, "-D", *spec], 30.0).returncode == 0:
                        removed.append(f"{prefix}-{backend} -t {table} {line}")
    return removed
