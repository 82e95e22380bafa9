"""Read ``ipset save`` output."""

from __future__ import annotations

from ..errors import ParseError
from ..model.state import IpSet


def parse_ipset_save(text: str, *, source: str = "<input>") -> dict[str, IpSet]:
    types: dict[str, str] = {}
    families: dict[str, int | None] = {}
    members: dict[str, set[str]] = {}
    for idx, raw in enumerate(text.split("\n")):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        if words[0] == "create" and len(words) >= 3:
            name = words[1]
            types[name] = words[2]
            members.setdefault(name, set())
            families[name] = 6 if "inet6" in words[3:] else 4
        elif words[0] == "add" and len(words) >= 3:
            name = words[1]
            if name not in types:
                raise ParseError(f"member of set {name}, which is not created first", source=source, line=idx + 1, text=raw, column=raw.find(name))
            members[name].add(_canonical(words[2], types[name]))
        else:
            raise ParseError("not an 'ipset save' line (expected create or add)", source=source, line=idx + 1, text=raw, column=0)
    return {n: IpSet(n, t, frozenset(members[n]), families[n]) for n, t in types.items()}


def _canonical(member: str, type_: str) -> str:
    # "10.0.0.1,tcp:80" as saved; a bare port in a port dimension means tcp.
    dims = type_.partition(":")[2].split(",")
    fields = member.split(",")
    out = []
    for dim, field in zip(dims, fields):
        if dim == "port" and ":" not in field:
            field = "tcp:" + field
        out.append(field)
    return ",".join(out + fields[len(dims):])
