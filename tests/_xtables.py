"""Legacy iptables tables as the kernel hands them out, for the blob decoder's tests.

``capture(family)`` runs in the network namespace that holds the rules (a child process,
see ``_kernel.call_in_netns``) and returns each table's getsockopt answer together with
what ``iptables-legacy-save`` prints for the same tables. Stored as JSON under
``tests/fixtures/xtables/`` it lets the decoder be tested without root:

    sudo python3 tests/_xtables.py   # rewrite the fixtures from their .rules files
"""

from __future__ import annotations

import base64
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures" / "xtables"
SAVE = {4: "iptables-legacy-save", 6: "ip6tables-legacy-save"}
RESTORE = {4: "iptables-legacy-restore", 6: "ip6tables-legacy-restore"}
# The counters kube-proxy's nfacct matches name must exist before a rule can use them.
NFACCT = ("localhost_nps_accepted_pkts", "ct_state_invalid_dropped_pkts")
MAX_SETS = 16  # ipset indexes looked at by capture


def capture(family: int) -> dict[str, Any]:
    """Every legacy table of ``family`` in this namespace: blob and getinfo fields, the names
    of the ipsets by index, and the save."""
    from kptrace.sources.xtables import SetNames, read_tables

    tables = read_tables(family) or {}
    names = SetNames()
    sets = {str(i): names(i) for i in range(MAX_SETS) if names(i)}
    out: dict[str, Any] = {"family": family, "kernel": platform.release(), "sets": sets, "tables": {}}
    for name, t in tables.items():
        out["tables"][name] = {
            "builtins": {chain: [start - t.base, end - t.base] for chain, (start, end) in t.builtins.items()},
            "num_entries": t.num_entries,
            "blob": base64.b64encode(bytes(t.blob[t.base :])).decode(),
        }
    save = subprocess.run([SAVE[family]], capture_output=True, text=True, check=True).stdout
    out["save"] = "".join(line + "\n" for line in save.splitlines() if not line.startswith("#"))
    return out


def table_from(data: dict[str, Any], name: str):  # -> XtTable
    """A captured table, ready to decode."""
    from kptrace.parse.xtables import HOOK_CHAINS, XtTable

    t = data["tables"][name]
    hooks = [HOOK_CHAINS.index(chain) for chain in t["builtins"]]
    entry = [0] * 5
    underflow = [0] * 5
    for chain, (start, end) in t["builtins"].items():
        entry[HOOK_CHAINS.index(chain)], underflow[HOOK_CHAINS.index(chain)] = start, end
    sets = data.get("sets", {})
    return XtTable(
        data["family"], name, base64.b64decode(t["blob"]),
        valid_hooks=sum(1 << h for h in hooks), hook_entry=tuple(entry), underflow=tuple(underflow),
        num_entries=t["num_entries"], set_name=lambda index: sets.get(str(index)),
    )


def saved_chains(save: str) -> dict[str, dict[str, tuple[str | None, list[str]]]]:
    """iptables-save text -> table -> chain -> (policy, rule lines), in the save's order."""
    out: dict[str, dict[str, tuple[str | None, list[str]]]] = {}
    table: dict[str, tuple[str | None, list[str]]] = {}
    for line in save.splitlines():
        if line.startswith("*"):
            table = out.setdefault(line[1:], {})
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            table[name] = (None if policy == "-" else policy, [])
        elif line.startswith("-A "):
            table[line.split()[1]][1].append(line)
    return out


def decoded_chains(tables: dict) -> dict[str, dict[str, tuple[str | None, list[str]]]]:
    """table -> chain -> (policy, rule lines) as the blob decoder prints them."""
    out = {}
    for name, t in tables.items():
        out[name] = {}
        for chain in t.chain_names():
            found = t.chain(chain)
            assert found is not None, (name, chain)
            out[name][chain] = found
    return out


# fixture name -> the rules it holds: every extension the decoder knows, in both families,
# and two of kube-proxy's own rulesets.
SOURCES = {
    "zoo-v4": FIXTURES / "zoo-v4.rules",
    "zoo-v6": FIXTURES / "zoo-v6.rules",
    "kube-proxy-v4": TESTS / "fixtures" / "iptables" / "TestOverallIPTablesRules.live.save",
    "kube-proxy-v6": TESTS / "fixtures" / "iptables" / "TestNodePorts_5.live.save",
}


def extensions(t) -> set[tuple[str, str, int]]:  # t: XtTable
    """(match|target, name, revision) of every entry in a table."""
    from kptrace.parse.xtables import _HEADER, _name

    found = set()
    blob, layout, pos = t.blob, t.layout, t.base
    while pos < len(blob):
        *_, target_offset, next_offset = layout.entry.unpack_from(blob, pos)
        at = pos + layout.size
        while at < pos + target_offset:
            size, name, revision = _HEADER.unpack_from(blob, at)
            found.add(("match", _name(name), revision))
            at += size
        _size, name, revision = _HEADER.unpack_from(blob, pos + target_offset)
        found.add(("target", _name(name), revision))
        pos += next_offset
    return found


def _refresh() -> None:
    """Load each source into a fresh namespace and store what the kernel holds."""
    sys.path[:0] = [str(TESTS.parent), str(TESTS)]
    from _kernel import add_nfacct, call_in_netns, netns, ns_sh

    for stem, rules in SOURCES.items():
        family = 6 if stem.endswith("-v6") else 4
        with netns("xt") as ns:
            add_nfacct(ns, *NFACCT)
            ipsets = rules.with_suffix(".ipsets")
            if ipsets.exists():
                ns_sh(ns, "ipset", "restore", input=ipsets.read_text())
            ns_sh(ns, RESTORE[family], input=rules.read_text())
            data = call_in_netns(ns, "_xtables.capture", family).value
        target = FIXTURES / f"{stem}.json"
        target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        print(f"{target.relative_to(TESTS.parent)}: {len(data['tables'])} tables", file=sys.stderr)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("needs root: it loads the rules into a network namespace")
    _refresh()
