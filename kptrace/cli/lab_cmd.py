"""``kptrace lab up|down|status``: a Kubernetes node in network namespaces, to try
kptrace's answers against real traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import ExitStatus
from .common import Backend, Output, OutputOpt, Settings, emit, exit_with

lab_app = typer.Typer(
    name="lab",
    help="A Kubernetes node built from network namespaces on this machine: kube-proxy-style "
    "rules (real iptables) in 'kptrace-node', one namespace per local pod, remote endpoints "
    "behind 'kptrace-remote', a client outside in 'kptrace-client'. Needs root; no packet "
    "leaves the machine.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _emit(data: Any, tree: Any) -> None:
    emit(data if Settings.output is Output.json else tree)


@lab_app.command(
    epilog="Examples:\n\n"
    "  sudo kptrace lab up\n\n"
    "  sudo kptrace lab up --config my-lab.json --backend legacy\n\n"
    "  sudo ip netns exec kptrace-client curl -s --http0.9 http://192.168.49.2:31380/\n\n"
    "  sudo kptrace --netns kptrace-node svc default/webapp\n\n"
    "Running it again with the same config and backend keeps the running lab; anything "
    "else rebuilds it. Exit codes: 0 up; 2 bad config; 3 not root or a tool/kernel "
    "feature missing."
)
def up(
    config: Annotated[
        Optional[Path],
        typer.Option("--config", "-c", help="Services and endpoints, JSON (YAML with PyYAML). Default: examples/lab.json.", metavar="FILE"),
    ] = None,
    backend: Annotated[Backend, typer.Option("--backend", help="Which iptables loads the rules.")] = Backend.nft,
    rebuild: Annotated[bool, typer.Option("--rebuild", help="Rebuild even when the running lab matches.")] = False,
    output: OutputOpt = Output.tree,
) -> None:
    """Build the lab (or keep the matching one) and show it."""
    Settings.output = output
    from ..lab.build import status as lab_status, up as lab_up
    from ..lab.config import load_config

    state = lab_up(load_config(config), backend.value, rebuild=rebuild)
    if output is Output.json:
        _emit(state, None)
        return
    verb = "already up (kept)" if state["reused"] else "up"
    servers = len(state["servers"])
    namespaces = len(state["namespaces"]["pods"]) + 4
    head = (f"lab {verb} in {state['seconds']:.2f} s: {namespaces} namespaces, {servers} servers, "
            f"iptables-{state['backend']} rules from {state['config']}")
    _emit(None, _status_view(lab_status(probe=False), head, hints=True))


@lab_app.command(
    epilog="Examples:\n\n  sudo kptrace lab down\n\n"
    "Exit codes: 0 removed (or there was no lab); 3 not root."
)
def down(output: OutputOpt = Output.tree) -> None:
    """Stop the lab's servers and delete its namespaces (their interfaces and rules go with them)."""
    Settings.output = output
    from ..lab.build import down as lab_down

    removed = lab_down()
    if removed["found"]:
        text = (f"lab removed: {len(removed['namespaces'])} namespaces, "
                f"{removed['processes']} server processes")
    else:
        text = "no lab to remove"
    _emit(removed, text)


@lab_app.command(
    epilog="Examples:\n\n  sudo kptrace lab status\n\n  kptrace lab status -o json\n\n"
    "Exit codes: 0 up and every server answers; 1 a namespace is missing or a server "
    "does not answer; 4 no lab. Without root the state file is shown unprobed."
)
def status(
    output: OutputOpt = Output.tree,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="Connect to every server from the node namespace.")] = True,
) -> None:
    """Show the lab: namespaces and addresses, Services and their endpoints, and whether the servers answer."""
    Settings.output = output
    from ..lab.build import status as lab_status

    data = lab_status(probe=probe)
    if not data["up"]:
        stray = ", ".join(n["name"] for n in data["namespaces"])
        _emit(data, "no lab is up (sudo kptrace lab up)" + (f"; leftover namespaces: {stray} (sudo kptrace lab down)" if stray else ""))
        exit_with(ExitStatus.NOT_FOUND)
    _emit(data, _status_view(data, f"lab up since {data['created']}: iptables-{data['backend']} rules from {data['config']}"))
    broken = any(not n["exists"] for n in data["namespaces"]) or any(
        not s["running"] or False in s["answers"].values() for s in data["servers"]
    )
    if broken:
        exit_with(ExitStatus.BLOCKED)


_WHERE = {"pod": "local pod", "remote": "remote (kptrace-remote)", "host": "host network (kptrace-node)"}


def _status_view(data: dict[str, Any], head: str, *, hints: bool = False) -> Any:
    from rich.console import Group
    from rich.text import Text
    from rich.tree import Tree

    parts: list[Any] = [Text(head, style="bold")]
    pod_of_veth = {v: k for k, v in ((data.get("node") or {}).get("podVeths") or {}).items()}

    namespaces = Tree("namespaces", guide_style="dim")
    for ns in data["namespaces"]:
        if not ns["exists"]:
            namespaces.add(Text.assemble(ns["name"], ("  missing", "red")))
            continue
        links = [(name, addrs) for name, addrs in ns["addresses"].items() if name != "lo"]
        if len(links) == 1:
            name, addrs = links[0]
            namespaces.add(f"{ns['name']}  {name} {' '.join(addrs) or '-'}")
            continue
        branch = namespaces.add(ns["name"])
        width = max((len(name) for name, _ in links), default=0)
        for name, addrs in links:
            pod = f"  (pod {pod_of_veth[name]})" if name in pod_of_veth else ""
            branch.add(f"{name:<{width}}  {' '.join(addrs) or '-'}{pod}")
    parts.append(namespaces)

    servers = {s["ip"]: s for s in data["servers"]}
    services = Tree("services", guide_style="dim")
    for svc in data["services"]:
        port, proto = svc["servicePort"], svc["protocol"]
        addrs = [f"{ip}:{port}" for ip in svc["clusterIPs"]]
        if svc["nodePort"]:
            addrs.append(f"NodePort {svc['nodePort']}")
        addrs += [f"LB {ip}:{port}" for ip in svc["loadBalancerIPs"]]
        addrs += [f"external {ip}:{port}" for ip in svc["externalIPs"]]
        external = svc["nodePort"] or svc["loadBalancerIPs"] or svc["externalIPs"]
        if svc["externalTrafficPolicy"] == "Local" and external:
            addrs.append("externalTrafficPolicy Local")
        if svc["sessionAffinity"] != "None":
            addrs.append(f"affinity {svc['sessionAffinity']}")
        branch = services.add(Text.assemble((f"{svc['service']}:{svc['port']} {proto}", "bold"), "  " + " · ".join(addrs)))
        if not svc["endpoints"]:
            branch.add(Text("no endpoints: connections are rejected", style="yellow"))
        for ep in svc["endpoints"]:
            answers = servers.get(ep["ip"], {}).get("answers", {}).get(f"{proto.lower()}/{ep['port']}")
            mark = {True: ("  answers", "green"), False: ("  NOT ANSWERING", "red"), None: ("", "")}[answers]
            where = _WHERE.get(ep["kind"], ep["kind"])
            branch.add(Text.assemble(f"{ep['ip']}:{ep['port']}  {ep['name']}  {where}", mark))
    parts.append(services)

    if data.get("probed"):
        silent = [s["name"] for s in data["servers"] if not s["running"] or False in s["answers"].values()]
        parts.append(Text(f"servers: all {len(data['servers'])} answer", style="green") if not silent else
                     Text("servers not answering: " + ", ".join(silent), style="red"))
    if hints:
        node_ip = (data.get("node") or {}).get("ip")
        parts.append(Text(
            "try:\n"
            f"  sudo ip netns exec kptrace-client curl -s --http0.9 http://{node_ip}:NODEPORT/   # from outside\n"
            "  sudo ip netns exec kptrace-pod-NAME curl -s --http0.9 http://CLUSTER-IP:PORT/  # from a pod\n"
            "  sudo kptrace --netns kptrace-node svc NAMESPACE/NAME\n"
            "  sudo kptrace lab down"))
    return Group(*parts)
