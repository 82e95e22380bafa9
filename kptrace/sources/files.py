"""Read saved state from files (or stdin) into a NodeState."""

from __future__ import annotations

import datetime as _dt
import os
import sys

from ..errors import ParseError, UnsupportedMode, UsageError
from ..model.packet import IPAddress
from ..model.state import NodeState, Provenance
from ..parse.detect import detect_format, parse_iptables_mode_save
from ..parse.ipset import parse_ipset_save


def read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory (a kptrace dump bundle needs manifest.json)") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None


def load_files(
    paths: list[str],
    *,
    local_ips: frozenset[IPAddress] | None = None,
    lenient: bool = False,
) -> NodeState:
    rulesets = []
    warnings: list[str] = []
    ipsets = None
    for path in paths:
        name = "<stdin>" if path == "-" else path
        text = read_text(path)
        if "\x00" in text[:65536]:
            raise ParseError("binary data, not a ruleset", source=name)
        fmt = detect_format(text)
        if fmt == "iptables-save":
            found, w = parse_iptables_mode_save(text, source=name, lenient=lenient)
            rulesets.extend(found)
            warnings.extend(w)
        elif fmt == "ipset-save":
            ipsets = {**(ipsets or {}), **parse_ipset_save(text, source=name)}
        elif fmt in ("nft-json", "nft-text"):
            if "kube-proxy" in text:
                raise UnsupportedMode(f"{name}: kube-proxy's nftables mode detected: not supported yet")
            raise UnsupportedMode(f"{name}: an nftables ruleset: not supported yet")
        elif fmt == "ipvsadm":
            raise UnsupportedMode(f"{name}: ipvsadm output (kube-proxy's IPVS mode): not supported yet")
        else:
            if not text.strip():
                raise ParseError("empty file", source=name)
            first = text.lstrip().split("\n", 1)[0]
            raise ParseError(
                "not a ruleset kptrace reads (expected iptables-save output or an ipset save)",
                source=name,
                line=text[: text.find(first)].count("\n") + 1,
                text=first,
                column=0,
            )
    if not rulesets:
        raise UsageError("no iptables ruleset among the files given with --from")
    prov = Provenance(
        kind="file",
        backend=None,
        paths=tuple("<stdin>" if p == "-" else p for p in paths),
        time=_mtime(paths),
    )
    return NodeState(rulesets=rulesets, provenance=prov, local_ips=local_ips, ipsets=ipsets, warnings=warnings)


def _mtime(paths: list[str]) -> str | None:
    try:
        newest = max(os.path.getmtime(p) for p in paths if p != "-")
    except ValueError:
        return None
    return _dt.datetime.fromtimestamp(newest, _dt.timezone.utc).isoformat(timespec="seconds")
