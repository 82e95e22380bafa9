"""Membership of a packet in an ipset, for ``-m set --match-set NAME FLAGS``."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from ..model.state import IpSet
from .matches import Result, Unknown

if TYPE_CHECKING:
    from .simulate import PathState


def set_contains(ipsets: dict[str, IpSet] | None, name: str, flags: list[str], st: PathState) -> Result:
    if ipsets is None:
        return Unknown(f"ipset {name} is not known (give its 'ipset save' output with --from)")
    s = ipsets.get(name)
    if s is None:
        return Unknown(f"ipset {name} is not in the ipset data given")
    kind, _, dims = s.type.partition(":")
    parts = dims.split(",")
    values: list[str] = []
    for dim, flag in zip(parts, flags):
        addr = st.src if flag == "src" else st.dst
        port = st.sport if flag == "src" else st.dport
        if dim in ("ip", "net"):
            if addr is None:
                return Unknown(f"ipset {name}: the source address is not known (give --src)")
            values.append(str(addr))
        elif dim == "port":
            if port is None:
                return Unknown(f"ipset {name}: the source port is not known (give --sport)")
            values.append(f"{st.proto}:{port}")
        else:
            return Unknown(f"ipset {name}: type {s.type} is not evaluated")
    if len(values) != len(parts):
        return Unknown(f"ipset {name}: {len(flags)} direction flags for type {s.type}")
    if "net" not in parts and kind != "bitmap":
        return ",".join(values) in s.members
    return any(_member_matches(m, parts, values) for m in s.members)


def _member_matches(member: str, dims: list[str], values: list[str]) -> bool:
    fields = member.split(",")
    if len(fields) != len(dims):
        return False
    for dim, field, value in zip(dims, fields, values):
        if dim == "net":
            try:
                if ipaddress.ip_address(value) not in ipaddress.ip_network(field, strict=False):
                    return False
            except ValueError:
                return False
        elif field != value:
            return False
    return True
