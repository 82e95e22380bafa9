"""The kptrace command line: parse flags, run one use case, render, map errors to exit codes."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import ExitStatus, KptraceError, NotFound, UsageError
from .common import (
    BackendOpt,
    DebugOpt,
    FromOpt,
    LenientOpt,
    LocalIpOpt,
    Output,
    OutputOpt,
    Settings,
    emit,
    exit_with,
    load_state,
    parse_hostport,
    parse_ip,
)

EXIT_CODES = """\
Exit codes: 0 every outcome accepted; 1 some outcome dropped/rejected or a Service has
no endpoints; 2 bad usage or malformed input; 3 something missing (binary, permission,
kernel feature, unsupported mode); 4 Service or address not found; 5 the answer depends
on something kptrace could not evaluate.
"""

app = typer.Typer(
    name="kptrace",
    help="Where does traffic to a Kubernetes Service go on this node? kptrace reads "
    "kube-proxy's rules (live, or saved with --from) and follows a packet through them.\n\n"
    + EXIT_CODES,
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"kptrace {__version__}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = None,
    debug: DebugOpt = False,
    netns: Annotated[
        Optional[str],
        typer.Option("--netns", help="Read the live state inside this network namespace (as 'ip netns exec NAME').", metavar="NAME"),
    ] = None,
) -> None:
    Settings.debug = Settings.debug or debug
    Settings.netns = netns
    if netns:
        from ..sources.netns import enter_netns

        enter_netns(netns)


@app.command(
    epilog="Examples:\n\n"
    "  kptrace svc default/webapp --from examples/webapp.save\n\n"
    "  kptrace svc default/webapp:http -o json\n\n"
    "  kptrace svc 10.103.46.104:80\n\n"
    "  kptrace --netns node1 svc kube-system/kube-dns\n\n" + EXIT_CODES
)
def svc(
    target: Annotated[str, typer.Argument(help="ns/name, ns/name:port (name or number) or IP:PORT.", metavar="TARGET")],
    from_: FromOpt = None,
    local_ip: LocalIpOpt = None,
    output: OutputOpt = Output.tree,
    lenient: LenientOpt = False,
    backend: BackendOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Show how kube-proxy implements a Service: addresses, endpoints with their shares,
    masquerading, NodePort/LoadBalancer/external paths, and what happens without endpoints."""
    Settings.output, Settings.debug = output, Settings.debug or debug
    from ..kube.catalog import Catalog, service_names
    from ..kube.describe import describe
    from ..render.svc import svc_dict, svc_tree

    state = load_state(from_, local_ip, lenient=lenient, backend=backend)
    family = _target_family(target)
    reports = []
    candidates: list[str] = []
    for rs in state.rulesets:
        if family is not None and rs.family not in (family, None):
            continue
        catalog = Catalog.for_target(rs, target)
        reports.extend(describe(rs, sp) for sp in catalog.find(target))
    if not reports:
        candidates = [n for rs in state.rulesets for n in service_names(rs)]
        raise NotFound(f"Service {target!r} not found in the rules read{_suggest(target, candidates)}")
    warnings = list(state.warnings)  # after the rules were read: reading may add some
    emit(svc_tree(reports, state, warnings) if output is Output.tree else svc_dict(reports, state, warnings))
    if any(r.uncertain for r in reports):
        exit_with(ExitStatus.UNCERTAIN)
    if any(r.blocked for r in reports):
        exit_with(ExitStatus.BLOCKED)


def _target_family(target: str) -> int | None:
    if "/" in target and not target.startswith("["):
        return None
    try:
        ip, _ = parse_hostport(target, "TARGET", port_required=False)
    except KptraceError:
        return None
    return ip.version


def _suggest(target: str, names: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(target, names, n=3, cutoff=0.5)
    if not close:
        ns = target.split("/", 1)[0]
        close = [n for n in names if n.startswith(ns + "/")][:3]
    return f"; did you mean {', '.join(close)}?" if close else ""


@app.command(
    epilog="Examples:\n\n"
    "  kptrace packet --dst 10.103.46.104:80 --src 10.244.1.7 --from examples/webapp.save\n\n"
    "  kptrace packet --dst 192.168.49.2:31380 --src 203.0.113.9 --local-ip 192.168.49.2 --from examples/webapp.save\n\n"
    "  kptrace packet --dst [fd00:10:96::a]:53 --proto udp --src fd00:10:244::5 -o json\n\n"
    "  sudo kptrace --netns kptrace-node packet --dst 192.168.49.2:31380 --inject --src-netns kptrace-client\n\n"
    + EXIT_CODES + " 6 (--inject) the kernel disagrees with the prediction."
)
def packet(
    dst: Annotated[str, typer.Option("--dst", help="Destination IP:PORT ([addr]:port for IPv6).", metavar="IP:PORT")],
    src: Annotated[Optional[str], typer.Option("--src", help="Source IP (or IP:PORT). Unset: rules testing the source are uncertain.", metavar="IP")] = None,
    proto: Annotated[str, typer.Option("--proto", "-p", help="tcp, udp or sctp.")] = "tcp",
    sport: Annotated[Optional[int], typer.Option("--sport", help="Source port.", min=1, max=65535)] = None,
    iif: Annotated[Optional[str], typer.Option("--iif", help="Input interface of a packet from another host.", metavar="NAME")] = None,
    mark: Annotated[Optional[str], typer.Option("--mark", help="The packet's firewall mark (e.g. 0x4000).", metavar="MARK")] = None,
    origin: Annotated[Optional[str], typer.Option("--origin", help="local (sent by the node: OUTPUT path) or remote (PREROUTING path). Default: local when --src is a node address.")] = None,
    inject: Annotated[bool, typer.Option("--inject", help="Also send a real probe (root) and compare the kernel's path with the prediction; exit 6 when they disagree.")] = False,
    src_netns: Annotated[Optional[str], typer.Option("--src-netns", help="With --inject: send the probe from this network namespace (PREROUTING path).", metavar="NAME")] = None,
    count: Annotated[int, typer.Option("--count", help="With --inject: how many probes (distinct source ports); the split is checked against the predicted shares.", min=1, max=10000)] = 1,
    deliver: Annotated[bool, typer.Option("--deliver", help="With --inject: let the probe reach its destination (default: dropped after the kernel's last decision).")] = False,
    from_: FromOpt = None,
    local_ip: LocalIpOpt = None,
    output: OutputOpt = Output.tree,
    lenient: LenientOpt = False,
    backend: BackendOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Simulate one packet (the first of a new connection) through every netfilter hook and
    table the kernel would run, and show every outcome with its probability, rule by rule."""
    Settings.output, Settings.debug = output, Settings.debug or debug
    from ..model.packet import Packet
    from ..render.packet import packet_dict, packet_tree
    from ..trace.simulate import trace

    proto_l = proto.lower()
    if proto_l not in ("tcp", "udp", "sctp"):
        raise UsageError(f"--proto: {proto!r} is not one of tcp, udp, sctp")
    dst_ip, dport = parse_hostport(dst, "--dst")
    assert dport is not None
    src_ip = None
    if src:
        if src.startswith("[") or src.count(":") == 1:
            src_ip, src_port = parse_hostport(src, "--src", port_required=False)
            if src_port is not None:
                if sport is not None and sport != src_port:
                    raise UsageError("--src gives a port and --sport another")
                sport = src_port
        else:
            src_ip = parse_ip(src, "--src")
        if src_ip.version != dst_ip.version:
            raise UsageError("--src and --dst are of different IP families")
    mark_v = 0
    if mark:
        try:
            mark_v = int(mark, 0)
        except ValueError:
            raise UsageError(f"--mark: {mark!r} is not a number (e.g. 0x4000)") from None
    if origin not in (None, "local", "remote"):
        raise UsageError(f"--origin: {origin!r} is not local or remote")

    state = load_state(from_, local_ip, lenient=lenient, backend=backend)
    if origin is None:
        origin = "local" if src_ip is not None and state.is_local(src_ip) else "remote"
    if state.ruleset_for(dst_ip.version) is None:
        raise UsageError(f"no IPv{dst_ip.version} rules were read (give ip{'6' if dst_ip.version == 6 else ''}tables-save output)")
    pk = Packet(dst=dst_ip, dport=dport, proto=proto_l, src=src_ip, sport=sport, iif=iif, mark=mark_v, origin=origin)  # type: ignore[arg-type]
    result = trace(state, pk)
    if inject:
        if from_:
            raise UsageError("--inject probes the live node: it does not go with --from")
        from .inject import run_inject

        exit_with(ExitStatus(run_inject(state, pk, result, src_netns=src_netns, count=count, deliver=deliver, output=output)))
    elif src_netns or deliver or count != 1:
        raise UsageError("--src-netns, --count and --deliver go with --inject")
    warnings = list(state.warnings)
    if src_ip is None:
        result.assumptions.insert(0, "no --src: a packet from another host whose address kptrace does not know")
    emit(packet_tree(result, state, warnings) if output is Output.tree else packet_dict(result, state, warnings))
    if result.uncertain:
        exit_with(ExitStatus.UNCERTAIN)
    if any(o.verdict != "accept" for o in result.outcomes):
        exit_with(ExitStatus.BLOCKED)


@app.command(epilog="Examples:\n\n  sudo kptrace cleanup\n\n  sudo kptrace --netns kptrace-node cleanup")
def cleanup() -> None:
    """Remove what an interrupted 'packet --inject' left in the kernel: its nft table
    'inet kptrace_probe', rules commented 'kptrace-probe', and the temporary source
    namespaces (kptrace-probe-PID) and links of probes whose process is gone. kube-proxy's
    rules are untouched."""
    from ..probe.cleanup import cleanup as remove_leftovers

    removed = remove_leftovers()
    for line in removed:
        print(f"removed {line}")
    if not removed:
        print("nothing to remove")


def _register_optional() -> None:
    """Commands that live in their own modules."""
    try:
        from .dump_cmd import dump
    except ImportError:  # pragma: no cover - the module ships with kptrace
        return
    app.command(name="dump")(dump)
    from .lab_cmd import lab_app

    app.add_typer(lab_app, name="lab")


_register_optional()


def main(argv: list[str] | None = None) -> int:
    """Entry point: one place turns exceptions into messages and exit codes."""
    args = sys.argv[1:] if argv is None else argv
    Settings.debug = "--debug" in args
    Settings.output = Output.json if _wants_json(args) else Output.tree
    try:
        rv = app(args=args, prog_name="kptrace", standalone_mode=False)
        return int(rv or 0)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return _fail("aborted", ExitStatus.USAGE, code=130)
    except KptraceError as exc:
        if Settings.debug:
            raise
        return _fail(exc.message, exc.exit_status, detail=exc.detail)
    except KeyboardInterrupt:
        return _fail("interrupted", ExitStatus.USAGE, code=130)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if hasattr(exc, "format_message"):  # click's usage errors (typer vendors click)
            return _fail(exc.format_message(), ExitStatus.USAGE, hint="run 'kptrace --help' for usage")
        if Settings.debug:
            raise
        return _fail(
            f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", ExitStatus.USAGE, code=70
        )


def _wants_json(args: list[str]) -> bool:
    for i, a in enumerate(args):
        if a in ("-o", "--output") and i + 1 < len(args) and args[i + 1] == "json":
            return True
        if a in ("-ojson", "--output=json"):
            return True
    return False


def _fail(message: str, status: ExitStatus, *, detail: str | None = None, hint: str | None = None, code: int | None = None) -> int:
    exit_code = int(status) if code is None else code
    sys.stderr.write(f"kptrace: error: {message}\n")
    if detail:
        sys.stderr.write(detail + "\n")
    if hint:
        sys.stderr.write(f"kptrace: {hint}\n")
    if Settings.output is Output.json:
        sys.stdout.write(json.dumps({"schema": "kptrace.error/v1", "error": message, "exit": exit_code}) + "\n")
    return exit_code


def run() -> None:
    sys.exit(main())
