"""The kernel's order of netfilter hooks and tables, as data.

Within a hook, tables run by priority: raw (-300), mangle (-150), nat for DNAT (-100),
filter (0), security (50), nat for SNAT (100). nat is consulted only for the first
packet of a connection and only once per direction: a locally generated packet that
loops back through ``lo`` meets raw/mangle PREROUTING and mangle/filter INPUT again,
but not nat.
"""

from __future__ import annotations

Stage = tuple[tuple[str, str], ...]  # (table, chain) in the order the kernel runs them

PREROUTING: Stage = (("raw", "PREROUTING"), ("mangle", "PREROUTING"), ("nat", "PREROUTING"))
INPUT: Stage = (("mangle", "INPUT"), ("filter", "INPUT"), ("security", "INPUT"), ("nat", "INPUT"))
FORWARD: Stage = (("mangle", "FORWARD"), ("filter", "FORWARD"), ("security", "FORWARD"))
# Locally generated: the routing decision happens at the socket before raw OUTPUT and
# again (reroute) after nat OUTPUT when the destination changed.
OUTPUT_PRE_ROUTE: Stage = (("raw", "OUTPUT"), ("mangle", "OUTPUT"), ("nat", "OUTPUT"))
OUTPUT_POST_ROUTE: Stage = (("filter", "OUTPUT"), ("security", "OUTPUT"))
POSTROUTING: Stage = (("mangle", "POSTROUTING"), ("nat", "POSTROUTING"))
# The loop back through lo of a local packet to a local address: NAT is already decided.
LOOPBACK_PREROUTING: Stage = (("raw", "PREROUTING"), ("mangle", "PREROUTING"))
LOOPBACK_INPUT: Stage = (("mangle", "INPUT"), ("filter", "INPUT"), ("security", "INPUT"))
