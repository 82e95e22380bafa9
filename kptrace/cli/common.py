"""What the commands share: options, reading state, parsing addresses, exit codes."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..errors import ExitStatus, UsageError

if TYPE_CHECKING:  # not imported for --help: every millisecond of startup counts
    from ..model.packet import IPAddress
    from ..model.state import NodeState


class Output(str, Enum):
    tree = "tree"
    json = "json"


class Backend(str, Enum):
    nft = "nft"
    legacy = "legacy"


class Settings:
    """Process-wide flags set by the global callback and by each command."""

    debug = False
    output = Output.tree
    netns: str | None = None


FromOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--from",
        "-f",
        help="Read saved state instead of the live node: iptables-save output (IPv4/IPv6, "
        "nft or legacy), a kube-proxy restore payload, 'ipset save' output, or a "
        "'kptrace dump' directory. Repeatable; '-' reads stdin.",
        metavar="PATH",
    ),
]
LocalIpOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--local-ip",
        help="An address of the node itself (repeatable): for '-m addrtype LOCAL', NodePorts "
        "and whether a source is the node (OUTPUT path).",
        metavar="IP",
    ),
]
OutputOpt = Annotated[Output, typer.Option("--output", "-o", help="tree for people, json for scripts.")]
LenientOpt = Annotated[
    bool, typer.Option("--lenient", help="Accept hand-edited dumps (e.g. unquoted comments with spaces).")
]
BackendOpt = Annotated[
    Optional[Backend],
    typer.Option("--backend", help="Live only: read iptables-nft or iptables-legacy (default: the one holding KUBE-* chains)."),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")]


def parse_ip(text: str, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not an IP address") from None


def parse_hostport(text: str, what: str, *, port_required: bool = True) -> tuple[IPAddress, int | None]:
    """``10.0.0.1:80`` or ``[fd00::1]:80`` (IPv6 needs brackets when a port follows)."""
    t = text.strip()
    host, port_s = t, None
    if t.startswith("["):
        host, sep, rest = t[1:].partition("]")
        if not sep:
            raise UsageError(f"{what}: {text!r}: missing ']' (write IPv6 as [addr]:port)")
        if rest:
            if not rest.startswith(":"):
                raise UsageError(f"{what}: {text!r}: expected ':port' after ']'")
            port_s = rest[1:]
    elif t.count(":") == 1:
        host, port_s = t.split(":")
    elif t.count(":") > 1 and port_required:
        raise UsageError(f"{what}: {text!r}: write an IPv6 destination as [addr]:port")
    ip = parse_ip(host, what)
    port = None
    if port_s is not None:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise UsageError(f"{what}: {text!r}: port must be a number from 1 to 65535")
        port = int(port_s)
    if port is None and port_required:
        raise UsageError(f"{what}: {text!r}: give IP:PORT (e.g. 10.96.0.10:53 or [fd00::a]:53)")
    return ip, port


def load_state(
    from_paths: list[str] | None,
    local_ips: list[str] | None,
    *,
    lenient: bool = False,
    backend: Backend | None = None,
) -> NodeState:
    ips = frozenset(parse_ip(x, "--local-ip") for x in local_ips) if local_ips else None
    if from_paths:
        if backend is not None:
            raise UsageError("--backend applies to the live node, not to --from")
        if len(from_paths) == 1 and os.path.isdir(from_paths[0]):
            from ..sources.dump import load_dump

            state = load_dump(from_paths[0], lenient=lenient)
        else:
            from ..sources.files import load_files

            state = load_files(from_paths, local_ips=ips, lenient=lenient)
            ips = None
    else:
        from ..sources.live import load_live

        state = load_live(backend=backend.value if backend else None, lenient=lenient)
    if ips:
        state.local_ips = ips | (state.local_ips or frozenset())
    return state


def emit(data: Any) -> None:
    """A JSON document (dict) plain on stdout, or a rich renderable through rich."""
    if isinstance(data, dict):
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    from rich.console import Console

    Console(highlight=False, soft_wrap=False).print(data)


def exit_with(status: ExitStatus) -> None:
    raise typer.Exit(int(status))
