"""Build, inspect and remove the lab (see :mod:`kptrace.lab` for its shape).

Everything is done over netlink with pyroute2 from this process: the calling thread
enters a namespace just long enough to open a netlink socket, a test socket or a child
process there (each stays in that namespace afterwards), then returns.  Only the
iptables restore tools run as separate programs, started inside the node namespace.

Addresses (defaults; the client and remote node come from the config):

* node ``kptrace-node``: node IP /24 and the client's gateway on ``kptr-client``;
  198.51.100.1/30 on ``kptr-sink`` (its default route); one ``kptr-pN`` per local pod
  (no address, proxy ARP, a /32 route to the pod); a /32 route per remote endpoint via
  the remote node on ``kptr-remote``.
* client ``kptrace-client``: ``eth0`` 203.0.113.10/24, default via 203.0.113.1.
* pods ``kptrace-pod-NAME``: ``eth0`` POD-IP/32, default via 169.254.1.1 (answered by
  the node, as Calico does).
* remote ``kptrace-remote``: ``eth0`` with the remote node IP and every remote
  endpoint IP (/32), default via the node IP.
* sink ``kptrace-sink``: ``eth0`` 198.51.100.2/30 and no forwarding: what the node
  routes to the world ends there.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import EnvironmentProblem, NotFound, UsageError
from ..generate import render_jumps, render_restore
from ..sources.netns import NETNS_DIR, SCOPE_LINK, create_netns, iproute_in, link_index, remove_netns
from ..sources.netns import in_netns as _in_netns
from . import (
    CLIENT_NS,
    FIXED_NAMESPACES,
    NODE_NS,
    REMOTE_NS,
    SINK_NS,
    STATE_DIR,
    STATE_FILE,
    STATE_SCHEMA,
    is_lab_namespace,
)
from .config import NODE_PREFIX, POD_GATEWAY, SINK_IP, SINK_NODE_IP, SINK_PREFIX, LabConfig, LabEndpoint

BACKENDS = ("nft", "legacy")
ROOT_MESSAGE = "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to build the lab"
SERVER_MODULE = "kptrace.lab.podserver"
SERVER_START_TIMEOUT = 10.0
_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent.parent)
# Servers started by this process, kept so that a teardown here can reap them.
_children: dict[int, subprocess.Popen[bytes]] = {}


# -- namespaces -------------------------------------------------------------------


def require_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem(ROOT_MESSAGE)


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with the calling thread in network namespace NAME (see sources.netns)."""
    try:
        with _in_netns(name, what="lab") as entered:
            yield entered
    except EnvironmentProblem as exc:
        raise EnvironmentProblem(f"{exc.message}; {ROOT_MESSAGE}") from None


def netns_socket(name: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """An IPv4 socket living in network namespace NAME."""
    with in_netns(name):
        return socket.socket(socket.AF_INET, kind)


def ask(netns: str, ip: str, port: int, proto: str = "tcp", *, timeout: float = 2.0) -> str:
    """One TCP connection (or one UDP datagram) from inside NETNS to IP:PORT; returns
    the answer line (``NAME SOURCE-IP`` from a lab server).

    Raises ConnectionRefusedError when the node rejects it, TimeoutError when nothing
    answers in time.
    """
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with netns_socket(netns, kind) as s:
        s.settimeout(timeout)
        s.connect((ip, port))  # a connected UDP socket reports ICMP unreachables as refusals
        if proto == "tcp":
            data = b""
            while b"\n" not in data and len(data) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        else:
            s.send(b"?\n")
            data = s.recv(4096)
    return data.decode(errors="replace").strip()


def lab_namespaces() -> list[str]:
    """The lab's namespaces that exist now (other kptrace-* namespaces are not the lab's)."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if is_lab_namespace(n))


def _iproute(name: str) -> Any:
    try:
        return iproute_in(name, what="lab")
    except EnvironmentProblem as exc:
        raise EnvironmentProblem(f"{exc.message}; {ROOT_MESSAGE}") from None


def _sysctl(key: str, value: str) -> None:
    """Write a sysctl of the calling thread's current network namespace."""
    with open("/proc/sys/" + key.replace(".", "/"), "w") as fh:
        fh.write(value)


# -- state file -------------------------------------------------------------------


def read_state() -> dict[str, Any] | None:
    """The running lab's description (``/run/kptrace/lab.json``), or None."""
    try:
        with open(STATE_FILE) as fh:
            data = json.load(fh)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError):
        return None  # unreadable or torn: treated as no state; teardown still scans
    return data if isinstance(data, dict) and data.get("schema") == STATE_SCHEMA else None


def _write_state(state: dict[str, Any]) -> None:
    os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
    tmp = f"{STATE_FILE}.tmp"
    with open(tmp, "w") as fh:
        json.dump(state, fh, indent=2)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, STATE_FILE)


@contextmanager
def _locked() -> Iterator[None]:
    """One lab change at a time on this machine."""
    os.makedirs(STATE_DIR, mode=0o755, exist_ok=True)
    fd = os.open(STATE_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- processes --------------------------------------------------------------------


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks: with the pid, it names one process."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[19])


def _is_server(pid: int, start: int | None = None) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return False
    if SERVER_MODULE.encode() not in cmdline.split(b"\0"):
        return False
    now = _start_time(pid)
    return now is not None and (start is None or now == start)


def _servers_in(namespaces: list[str]) -> set[int]:
    """Pids of lab servers whose network namespace is one of NAMESPACES."""
    wanted = set()
    for name in namespaces:
        try:
            st = os.stat(os.path.join(NETNS_DIR, name))
        except OSError:
            continue
        wanted.add((st.st_dev, st.st_ino))
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted and _is_server(int(entry)):
            found.add(int(entry))
    return found


def _stop(pids: set[int]) -> None:
    """SIGTERM, a short wait (reaping our own children), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while pids and time.monotonic() < deadline:
            for pid in list(pids):
                child = _children.get(pid)
                if child is not None:
                    if child.poll() is not None:
                        _children.pop(pid)
                        pids.discard(pid)
                    continue
                if _start_time(pid) is None:  # gone, or a zombie its parent will reap
                    pids.discard(pid)
            if pids:
                time.sleep(0.01)
        if not pids:
            return


# -- up ---------------------------------------------------------------------------


def _restore_tool(backend: str) -> str:
    if backend not in BACKENDS:
        raise UsageError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    tool = f"iptables-{backend}-restore"
    if shutil.which(tool) is None:
        raise EnvironmentProblem(f"needs {tool} (Debian: apt install iptables)")
    return tool


def up(config: LabConfig, backend: str = "nft", *, rebuild: bool = False) -> dict[str, Any]:
    """Build the lab (or keep the running one when it was built from the same config
    and backend and all its servers run); returns its state, with ``reused`` and
    ``seconds`` added.  A failed build removes what it made."""
    require_root()
    tool = _restore_tool(backend)
    started = time.monotonic()
    with _locked():
        state = read_state()
        if state is not None and not rebuild and _reusable(state, config, backend):
            state.update(reused=True, seconds=round(time.monotonic() - started, 3))
            return state
        if state is not None or lab_namespaces():
            _teardown(state)
        try:
            state = _build(config, backend, tool)
        except BaseException:
            _teardown(None)
            _remove_state_dir()
            raise
        _write_state(state)
    state.update(reused=False, seconds=round(time.monotonic() - started, 3))
    return state


def _reusable(state: dict[str, Any], config: LabConfig, backend: str) -> bool:
    if state.get("digest") != config.digest or state.get("backend") != backend:
        return False
    if set(_state_namespaces(state)) - set(lab_namespaces()):
        return False
    return all(_is_server(s["pid"], s.get("start")) for s in state.get("servers", []))


def _state_namespaces(state: dict[str, Any]) -> list[str]:
    ns = state.get("namespaces", {})
    fixed = [v for k, v in ns.items() if k != "pods" and isinstance(v, str)]
    return [*fixed, *ns.get("pods", {}).values()]


def _build(config: LabConfig, backend: str, tool: str) -> dict[str, Any]:
    pods = config.pods
    names = [*FIXED_NAMESPACES, *(ep.netns for ep in pods)]
    for name in names:
        create_netns(name)
    iprs = {name: _iproute(name) for name in names}
    try:
        veths = _wire(config, iprs)
    finally:
        for ipr in iprs.values():
            ipr.close()  # a held netlink socket would keep a deleted namespace alive

    with in_netns(NODE_NS):
        _sysctl("net.ipv4.ip_forward", "1")
        _sysctl("net.ipv4.conf.all.route_localnet", "1")  # kube-proxy's localhost NodePorts
        for ifname in veths.values():
            _sysctl(f"net.ipv4.conf.{ifname}.proxy_arp", "1")
            _sysctl(f"net.ipv4.neigh.{ifname}.proxy_delay", "0")  # answer the pods' first ARP at once

    # Servers start while the rules load: their interpreters warm up in parallel.
    procs = [(ep, _spawn_server(ep)) for ep in config.endpoints]
    with in_netns(NODE_NS):
        _restore(tool, render_restore(config.spec), "rules")
        _restore(tool, render_jumps(config.spec), "jump rules")
    servers = [_await_server(ep, proc) for ep, proc in procs]
    return _describe(config, backend, veths, servers)


def _wire(config: LabConfig, iprs: dict[str, Any]) -> dict[str, str]:
    """Links, addresses and routes; returns pod name -> node-side veth."""
    node = iprs[NODE_NS]
    for ipr in iprs.values():
        ipr.link("set", index=link_index(ipr, "lo"), state="up")

    veths = {ep.name: f"kptr-p{i}" for i, ep in enumerate(config.pods)}
    peers = [("kptr-client", CLIENT_NS), ("kptr-sink", SINK_NS), ("kptr-remote", REMOTE_NS),
             *((veths[ep.name], ep.netns) for ep in config.pods)]
    for ifname, peer_ns in peers:
        # Made inside the node namespace with the peer placed directly in its own: no
        # lab interface ever appears in the root namespace.
        node.link("add", ifname=ifname, kind="veth", peer={"ifname": "eth0", "net_ns_fd": peer_ns})
        node.link("set", index=link_index(node, ifname), state="up")
        peer = iprs[peer_ns]
        peer.link("set", index=link_index(peer, "eth0"), state="up")

    # client side
    client_if = link_index(node, "kptr-client")
    node.addr("add", index=client_if, address=config.node_ip, prefixlen=NODE_PREFIX)
    node.addr("add", index=client_if, address=config.client_gateway, prefixlen=config.client_prefix)
    client = iprs[CLIENT_NS]
    client.addr("add", index=link_index(client, "eth0"), address=config.client_ip, prefixlen=config.client_prefix)
    client.route("add", dst="0.0.0.0/0", gateway=config.client_gateway)

    # sink: the node's default route
    sink_if = link_index(node, "kptr-sink")
    node.addr("add", index=sink_if, address=SINK_NODE_IP, prefixlen=SINK_PREFIX)
    sink = iprs[SINK_NS]
    sink.addr("add", index=link_index(sink, "eth0"), address=SINK_IP, prefixlen=SINK_PREFIX)
    node.route("add", dst="0.0.0.0/0", gateway=SINK_IP, oif=sink_if)

    # remote node and the endpoints behind it
    remote_if = link_index(node, "kptr-remote")
    remote = iprs[REMOTE_NS]
    remote_eth = link_index(remote, "eth0")
    remote.addr("add", index=remote_eth, address=config.remote_node_ip, prefixlen=32)
    remote.route("add", dst=f"{config.node_ip}/32", oif=remote_eth, scope=SCOPE_LINK)
    remote.route("add", dst="0.0.0.0/0", gateway=config.node_ip, oif=remote_eth)
    node.route("add", dst=f"{config.remote_node_ip}/32", oif=remote_if, scope=SCOPE_LINK, prefsrc=config.node_ip)
    for ep in config.remotes:
        remote.addr("add", index=remote_eth, address=ep.ip, prefixlen=32)
        node.route("add", dst=f"{ep.ip}/32", gateway=config.remote_node_ip, oif=remote_if, prefsrc=config.node_ip)

    # pods
    for ep in config.pods:
        pod = iprs[ep.netns]
        eth = link_index(pod, "eth0")
        pod.addr("add", index=eth, address=ep.ip, prefixlen=32)
        pod.route("add", dst=f"{POD_GATEWAY}/32", oif=eth, scope=SCOPE_LINK)
        pod.route("add", dst="0.0.0.0/0", gateway=POD_GATEWAY, oif=eth)
        node.route("add", dst=f"{ep.ip}/32", oif=link_index(node, veths[ep.name]), scope=SCOPE_LINK,
                   prefsrc=config.node_ip)
    return veths


def _restore(tool: str, payload: str, what: str) -> None:
    # -w: iptables-legacy serialises on a lock file shared by every namespace
    proc = subprocess.run([tool, "-w", "5", "--noflush"], input=payload, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise EnvironmentProblem(f"{tool} rejected the lab's {what} (missing kernel module?): "
                                 f"{proc.stderr.strip() or proc.returncode}")


def _spawn_server(ep: LabEndpoint) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", SERVER_MODULE, "--name", ep.name, "--addr", ep.ip]
    argv += [a for p in ep.tcp_ports for a in ("--tcp", str(p))]
    argv += [a for p in ep.udp_ports for a in ("--udp", str(p))]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_PARENT, env.get("PYTHONPATH")]))
    with in_netns(ep.netns):
        # A new session: the servers outlive this command and ignore its terminal's ^C.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=env, cwd="/", start_new_session=True)
    _children[proc.pid] = proc
    return proc


def _await_server(ep: LabEndpoint, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
            raise EnvironmentProblem(f"the server for {ep.name} did not start within {SERVER_START_TIMEOUT:.0f} s")
        chunk = os.read(proc.stdout.fileno(), 512)
        if not chunk:
            break
        line += chunk
    proc.stdout.close()
    text = line.decode(errors="replace").strip()
    if text != "ready":
        raise EnvironmentProblem(f"the server for {ep.name} failed: {text or f'exit status {proc.wait()}'}")
    return {
        "name": ep.name, "ip": ep.ip, "kind": ep.kind, "netns": ep.netns,
        "tcp": list(ep.tcp_ports), "udp": list(ep.udp_ports), "unserved": list(ep.unserved),
        "pid": proc.pid, "start": _start_time(proc.pid),
    }


def _describe(config: LabConfig, backend: str, veths: dict[str, str], servers: list[dict[str, Any]]) -> dict[str, Any]:
    """The state file: everything a later command needs to find and use the lab."""
    by_ip = {ep.ip: ep for ep in config.endpoints}
    services = []
    for svc in config.spec.services:
        if svc.skipped:
            continue
        for sp in svc.ports:
            eps = []
            for e in svc.endpoints:
                port = e.port_for(sp)
                if port is not None:
                    lab_ep = by_ip[e.ip]
                    eps.append({"ip": e.ip, "port": port, "name": lab_ep.name, "kind": lab_ep.kind,
                                "netns": lab_ep.netns, "ready": e.ready})
            services.append({
                "service": f"{svc.namespace}/{svc.name}", "port": sp.name, "protocol": sp.protocol,
                "type": svc.type, "clusterIPs": list(svc.cluster_ips), "servicePort": sp.port,
                "nodePort": sp.node_port or None, "externalIPs": list(svc.external_ips),
                "loadBalancerIPs": list(svc.load_balancer_ips),
                "externalTrafficPolicy": svc.external_traffic_policy, "sessionAffinity": svc.session_affinity,
                "endpoints": eps,
            })
    node_ifs: dict[str, list[str]] = {
        "lo": ["127.0.0.1/8"],
        "kptr-client": [f"{config.node_ip}/{NODE_PREFIX}", f"{config.client_gateway}/{config.client_prefix}"],
        "kptr-sink": [f"{SINK_NODE_IP}/{SINK_PREFIX}"],
        "kptr-remote": [],
        **{v: [] for v in veths.values()},
    }
    addresses = {
        NODE_NS: node_ifs,
        CLIENT_NS: {"eth0": [f"{config.client_ip}/{config.client_prefix}"]},
        SINK_NS: {"eth0": [f"{SINK_IP}/{SINK_PREFIX}"]},
        REMOTE_NS: {"eth0": [f"{config.remote_node_ip}/32", *(f"{ep.ip}/32" for ep in config.remotes)]},
        **{ep.netns: {"eth0": [f"{ep.ip}/32"]} for ep in config.pods},
    }
    return {
        "schema": STATE_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.source,
        "digest": config.digest,
        "backend": backend,
        "namespaces": {
            "node": NODE_NS, "client": CLIENT_NS, "sink": SINK_NS, "remote": REMOTE_NS,
            "pods": {ep.name: ep.netns for ep in config.pods},
        },
        "node": {"ip": config.node_ip, "localIPs": [config.node_ip, config.client_gateway, SINK_NODE_IP, "127.0.0.1"],
                 "clusterCIDR": config.spec.cluster_cidr, "podVeths": veths},
        "client": {"ip": config.client_ip, "gateway": config.client_gateway},
        "remoteNode": {"ip": config.remote_node_ip},
        "addresses": addresses,
        "services": services,
        "servers": servers,
    }


# -- down -------------------------------------------------------------------------


def down() -> dict[str, Any]:
    """Remove the lab: its servers, then its namespaces (which takes their interfaces
    and rules with them), then the state file.  Returns what was removed."""
    require_root()
    with _locked():
        removed = _teardown(read_state())
        _remove_state_dir()
    return removed


def _remove_state_dir() -> None:
    try:
        os.rmdir(STATE_DIR)  # only when nothing else lives there
    except OSError:
        pass


def _teardown(state: dict[str, Any] | None) -> dict[str, Any]:
    namespaces = sorted(set(lab_namespaces()) | set(_state_namespaces(state) if state else []))
    pids = {s["pid"] for s in (state or {}).get("servers", []) if _is_server(s["pid"], s.get("start"))}
    pids |= _servers_in(namespaces)
    _stop(set(pids))
    existing = set(lab_namespaces())
    for name in namespaces:
        if name in existing:
            remove_netns(name)
    for path in (STATE_FILE, f"{STATE_FILE}.tmp"):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return {"namespaces": [n for n in namespaces if n in existing], "processes": len(pids),
            "found": bool(existing or pids or state)}


# -- status -----------------------------------------------------------------------


def status(*, probe: bool = True, timeout: float = 1.0) -> dict[str, Any]:
    """The lab as it is now: namespaces with their live addresses, Services, and
    whether each server runs and answers (probed from the node namespace).  Without
    root only the state file is shown."""
    state = read_state()
    present = lab_namespaces()
    if state is None:
        return {"schema": "kptrace.lab-status/v1", "up": False, "namespaces": [{"name": n} for n in present]}
    root = os.geteuid() == 0
    namespaces = []
    for name in _state_namespaces(state):
        exists = name in present
        addrs = _live_addresses(name) if exists and root else state.get("addresses", {}).get(name, {})
        namespaces.append({"name": name, "exists": exists, "addresses": addrs})
    servers = []
    for s in state.get("servers", []):
        entry = {k: s[k] for k in ("name", "ip", "kind", "netns", "pid")}
        entry["running"] = _is_server(s["pid"], s.get("start"))
        answers: dict[str, bool | None] = {}
        for proto in ("tcp", "udp"):
            for port in s.get(proto, []):
                answers[f"{proto}/{port}"] = _probe(s, proto, port, timeout) if probe and root else None
        entry["answers"] = answers
        servers.append(entry)
    return {
        "schema": "kptrace.lab-status/v1",
        "up": True,
        "created": state.get("created"), "config": state.get("config"), "backend": state.get("backend"),
        "node": state.get("node"), "client": state.get("client"),
        "namespaces": namespaces,
        "services": state.get("services", []),
        "servers": servers,
        "probed": bool(probe and root),
    }


def _live_addresses(name: str) -> dict[str, list[str]]:
    ipr = _iproute(name)
    try:
        names = {int(link["index"]): link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        out: dict[str, list[str]] = {n: [] for n in names.values()}
        for a in ipr.get_addr(family=socket.AF_INET):
            ifname = names.get(int(a["index"]), str(a["index"]))
            out.setdefault(ifname, []).append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
        return out
    finally:
        ipr.close()


def _probe(server: dict[str, Any], proto: str, port: int, timeout: float) -> bool:
    try:
        answer = ask(NODE_NS, server["ip"], port, proto, timeout=timeout)
    except (OSError, NotFound):
        return False
    return answer.split(" ", 1)[0] == server["name"]
