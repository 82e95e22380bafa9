"""Real test packets: send a probe through the node's netfilter hooks and read what the
kernel did with it (rule counters, conntrack), to set beside kptrace's prediction.

Everything the probe creates is named here, so ``cleanup`` can find leftovers.
"""

from __future__ import annotations

PROBE_TABLE = "kptrace_probe"  # nft table, family inet: the probe's guard chains
PROBE_COMMENT = "kptrace-probe"  # comment on every rule the probe adds
