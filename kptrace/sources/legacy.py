"""The legacy iptables backend as a Ruleset, from the kernel's table blobs.

Chains are decoded from the blobs ``sources.xtables`` read, when a question reaches them.
A table holding a rule that cannot be decoded exactly is answered from its
``iptables-legacy-save -t TABLE`` text instead, from then on; the chains already decoded
from that table are checked against the save, and a difference (the rules changed in
between) is reported.
"""

from __future__ import annotations

from typing import Callable, Mapping

from ..model.rules import Chain, Ruleset
from ..parse.detect import IPVS_CHAIN_PREFIX, IPVS_CHAINS, kube_proxy_mode
from ..parse.iptables_rule import parse_rule
from ..parse.xt_extensions import Undecodable
from ..parse.xtables import XtTable

SaveTable = Callable[[int, str], Ruleset]  # (family, table) -> that table read with the save tool


def has_kube_chains(tables: Mapping[str, XtTable]) -> bool:
    return any(t.has_any(prefixes=("KUBE-",)) for t in tables.values())


def blob_ipvs_mode(rs: Ruleset, tables: Mapping[str, XtTable]) -> bool:
    """kube-proxy's IPVS mode: the chains only it creates, looked for in every table but nat,
    and its ipset matches in nat KUBE-SERVICES (which any question decodes anyway).

    nat is not searched for chain names: one pass over a large nat blob costs as much as
    the rest of a question, and IPVS mode's KUBE-SERVICES always matches its ipsets."""
    if any(t.has_any(IPVS_CHAINS, (IPVS_CHAIN_PREFIX,)) for name, t in tables.items() if name != "nat"):
        return True
    chain = rs.chain("nat", "KUBE-SERVICES") if "nat" in tables else None
    return chain is not None and kube_proxy_mode("\n".join(chain.raw(i) for i in range(len(chain)))) == "ipvs"


def blob_ruleset(
    family: int,
    tables: dict[str, XtTable],
    *,
    save_table: SaveTable,
    lenient: bool,
    warn: Callable[[str], None],
) -> Ruleset:
    """A Ruleset whose chains are decoded from the kernel's blobs when asked for.

    A table with a rule that cannot be decoded exactly is answered from ``save_table``
    (its ``iptables-legacy-save -t TABLE`` text) from then on; ``warn`` hears when chains
    decoded before disagree with it."""
    tool = "ip6tables-legacy" if family == 6 else "iptables-legacy"
    saved: dict[str, Ruleset] = {}
    decoded: dict[tuple[str, str], tuple[str | None, list[str]]] = {}

    def read_saved(table: str) -> Ruleset:
        rs = saved[table] = save_table(family, table)
        changed = []
        for (t, name), (policy, lines) in decoded.items():
            if t != table:
                continue
            chain = rs.chain(t, name)
            if chain is None or (chain.policy, [chain.raw(i) for i in range(len(chain))]) != (policy, lines):
                changed.append(name)
        if changed:
            warn(f"{tool}: the {table} table changed while it was read (chains {', '.join(sorted(changed)[:3])}); "
                 "the answer may mix old and new rules")
        return rs

    def load(table: str, name: str) -> Chain | None:
        if table in saved:
            return saved[table].chain(table, name)
        xt = tables[table]
        try:
            found = xt.chain(name)
        except Undecodable:
            return read_saved(table).chain(table, name)
        if found is None:
            return None
        decoded[(table, name)] = found
        policy, lines = found
        source = f"{tool} (kernel table {table})"
        return Chain(
            table,
            name,
            policy,
            raw=[(None, line) for line in lines],
            parser=lambda text, line: parse_rule(text, table=table, line=line, source=source, lenient=lenient),
        )

    def names() -> dict[str, list[str]]:
        return {t: (saved[t].chain_names(t) if t in saved else xt.chain_names()) for t, xt in tables.items()}

    return Ruleset(family, None, load, source=f"{tool} (kernel)", backend="legacy", tables=list(tables), list_names=names)
