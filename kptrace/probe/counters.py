"""Per-rule packet counters from ``iptables-save -c``, and what changed between two reads."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import EnvironmentProblem
from ..sources.collect import find_binary, missing_binary, run_command

_RULE = re.compile(r"^\[(\d+):\d+\] (-A (\S+) .*)$")
_POLICY = re.compile(r"^:(\S+) (\S+) \[(\d+):\d+\]$")


@dataclass(frozen=True, slots=True)
class RuleKey:
    table: str
    chain: str
    rule: str  # the rule as iptables-save prints it ("-A CHAIN ..."), or ":CHAIN POLICY"


def save_command(backend: str, family: int) -> str:
    name = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}-save"
    path = find_binary(name)
    if path is None:
        raise missing_binary(name)
    return path


def read_counters(command: str) -> dict[RuleKey, int]:
    """Packets per rule; identical rules in one chain share a key (their counts add)."""
    proc = run_command([command, "-c"], 30.0)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"{command} -c failed: {proc.stderr.strip() or proc.returncode}")
    out: dict[RuleKey, int] = {}
    table = ""
    for line in proc.stdout.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif m := _RULE.match(line):
            key = RuleKey(table, m.group(3), m.group(2))
            out[key] = out.get(key, 0) + int(m.group(1))
        elif m := _POLICY.match(line):
            if m.group(2) != "-":  # built-in chains: the policy's own count
                out[RuleKey(table, m.group(1), f":{m.group(1)} {m.group(2)}")] = int(m.group(3))
    return out


def deltas(before: dict[RuleKey, int], after: dict[RuleKey, int]) -> dict[RuleKey, int]:
    """Rules whose counter grew (a rule added in between counts from zero)."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


def target_of(rule: str) -> tuple[str | None, str | None]:
    """(target, its --to-destination/--to-source) of a saved rule text."""
    m = re.search(r" -[jg] (\S+)(.*)$", rule)
    if not m:
        return None, None
    to = re.search(r"--to-(?:destination|source) (\S+)", m.group(2))
    return m.group(1), to.group(1) if to else None
