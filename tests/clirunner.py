"""Run the kptrace CLI in-process and capture what a user would see."""

from __future__ import annotations

import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kptrace.cli.app import main

FIXTURES = Path(__file__).parent / "fixtures"
IPT = FIXTURES / "iptables"
ROOT = Path(__file__).parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        return json.loads(self.out)


def run(*args: str, columns: int = 120) -> Result:
    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return Result(code, out.getvalue(), err.getvalue())


def flow_packet(flow: dict, node: Any, origin: str | None = None, sport: int | None = 40000) -> Any:
    """The packet of a reference flow; a source that is a node address is sent by the node."""
    import ipaddress

    from kptrace.model.packet import Packet

    src = ipaddress.ip_address(flow["sourceIP"])
    return Packet(
        dst=ipaddress.ip_address(flow["destIP"]),
        dport=flow["destPort"],
        proto=flow["protocol"].lower(),
        src=src,
        sport=sport,
        origin=origin or ("local" if node.is_local(src) else "remote"),  # type: ignore[arg-type]
    )


def flow_answers(node: Any, flow: dict, origin: str | None = None) -> list[tuple]:
    """What a flow's trace ends in, in a comparable form."""
    from kptrace.trace.simulate import trace

    outcomes = trace(node, flow_packet(flow, node, origin)).outcomes
    return sorted((o.verdict, o.dnat or "", o.masquerade, round(o.probability, 9)) for o in outcomes)
