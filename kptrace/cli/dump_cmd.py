"""``kptrace dump DIR``: save this node's state for later questions (``--from DIR``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import Backend

_KINDS = {
    "iptables-save": "rules",
    "ipset-save": "ipsets",
    "addresses": "addresses",
    "routes": "routes",
    "sysctls": "sysctls",
}


def dump_command(directory: str, backend: str | None) -> None:
    """Write the bundle and print what it holds."""
    from rich.console import Console
    from rich.table import Table

    from ..sources.dump import write_dump

    manifest = write_dump(directory, backend=backend)
    table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
    table.add_column("file")
    table.add_column("holds")
    table.add_column("bytes", justify="right")
    for rel, entry in manifest["files"].items():
        what = _KINDS.get(entry.get("kind"), str(entry.get("kind")))
        if entry.get("kind") == "iptables-save":
            what = f"{entry['command']} (IPv{entry['family']})"
        elif entry.get("kind") == "addresses":
            what = "addresses (netlink)"
        elif entry.get("kind") == "routes":
            what = "routes: main and local tables (netlink)"
        table.add_row(rel, what, str(entry.get("bytes", "")))
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    out.print(f"Wrote {os.path.abspath(directory)} ({manifest['host']}, {manifest['time']}, kernel {manifest['kernel']}):")
    out.print(table)
    if manifest["empty"]:
        out.print(f"No rules from: {', '.join(manifest['empty'])}")
    out.print(f"Answers from it use iptables-{manifest['backend']}: kptrace svc NS/NAME --from {directory}")
    for warning in [*manifest["backend_warnings"], *manifest["warnings"]]:
        err.print(f"[yellow]warning:[/] {warning}", markup=True, highlight=False)


def dump(
    directory: Annotated[Path, typer.Argument(help="A new or empty directory for the bundle.", metavar="DIR")],
    backend: Annotated[
        Optional[Backend],
        typer.Option("--backend", help="Record this backend as the one to answer with (default: the one holding KUBE-* chains)."),
    ] = None,
) -> None:
    """Save everything kptrace reads from this node (iptables rules of both backends and
    families, ipsets, addresses, routes, sysctls) into DIR, to ask questions later or on
    another machine with --from DIR. Read-only: the node is not changed.

    Examples:

      sudo kptrace dump /tmp/node1-state

      sudo kptrace --netns node1 dump ./node1 --backend legacy

      kptrace svc default/webapp --from ./node1
    """
    dump_command(str(directory), backend.value if backend is not None else None)
