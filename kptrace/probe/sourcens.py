"""A throwaway namespace to send a probe from, for a source on another host.

``create(src)`` creates network namespace ``kptrace-probe-PID`` joined to the current
namespace (the node) by a veth pair: ``kptrace-HEXPID`` on the node, ``eth0`` (with SRC)
inside. The probe namespace routes everything to the node through a link-local gateway
with a permanent neighbour entry (no ARP, no sysctl change on the node); the node gets a
/32 route to SRC through the veth, so answers and reverse-path checks find it. Deleting
the namespace removes the pair and the route; ``leftovers`` finds what a kill -9 left.
"""

from __future__ import annotations

import os
import socket

from ..errors import EnvironmentProblem
from ..model.packet import IPAddress
from ..sources.netns import NETNS_DIR, SCOPE_LINK, create_netns, iproute_in, link_index, remove_netns

NETNS_PREFIX = "kptrace-probe-"
LINK_PREFIX = "kptrace-"  # node side; the lab's own links are kptr-*
GATEWAY = {4: "169.254.1.1", 6: "fe80::1"}
NUD_PERMANENT = 0x80
IFA_F_NODAD = 0x02


def names(pid: int | None = None) -> tuple[str, str]:
    """(namespace, node-side link) for a process: the link name fits IFNAMSIZ (15)."""
    pid = os.getpid() if pid is None else pid
    return f"{NETNS_PREFIX}{pid}", f"{LINK_PREFIX}{pid:x}"


def remove(netns: str) -> bool:
    """Delete a probe namespace (its veth pair and the node's route go with it)."""
    return remove_netns(netns)


def create(src: IPAddress) -> tuple[str, str, list[str]]:
    """Make the namespace and link of this process (``names()``) with SRC ready to send
    from; returns (namespace, node-side link, notes). The caller removes the namespace
    (``remove``) in a ``finally`` that also covers an interrupted ``create``."""
    from pyroute2.netlink.exceptions import NetlinkError

    ns, link = names()
    try:
        remove(ns)  # a leftover of an earlier process with the same pid
        create_netns(ns)
        return ns, link, _wire(ns, link, src)
    except PermissionError:
        raise EnvironmentProblem(f"creating the probe's namespace {ns} needs root (CAP_SYS_ADMIN): run with sudo") from None
    except (NetlinkError, OSError) as exc:
        raise EnvironmentProblem(f"cannot set up the probe's namespace {ns} for source {src}: {exc}") from None


def _wire(ns: str, link: str, src: IPAddress) -> list[str]:
    from pyroute2.netlink.exceptions import NetlinkError

    fam = socket.AF_INET6 if src.version == 6 else socket.AF_INET
    bits = 128 if src.version == 6 else 32
    notes: list[str] = []
    node = iproute_in(None)
    inner = iproute_in(ns, what="probe namespace")
    try:
        # Made in the node's namespace with the peer placed directly in the probe's.
        node.link("add", ifname=link, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
        node_if = link_index(node, link)
        node.link("set", index=node_if, state="up")
        node_mac = node.get_links(node_if)[0].get_attr("IFLA_ADDRESS")
        eth = link_index(inner, "eth0")
        inner.link("set", index=link_index(inner, "lo"), state="up")
        inner.link("set", index=eth, state="up")
        extra = {"flags": IFA_F_NODAD} if src.version == 6 else {}
        inner.addr("add", index=eth, address=str(src), prefixlen=bits, family=fam, **extra)
        gw = GATEWAY[src.version]
        # A permanent neighbour for the gateway: the probe leaves at once, without ARP
        # and without proxy ARP on the node.
        inner.neigh("add", dst=gw, lladdr=node_mac, ifindex=eth, state=NUD_PERMANENT, family=fam)
        if src.version == 4:
            inner.route("add", dst=f"{gw}/32", oif=eth, scope=SCOPE_LINK)
        inner.route("add", dst="::/0" if src.version == 6 else "0.0.0.0/0", gateway=gw, oif=eth, family=fam)
        try:
            node.route("add", dst=f"{src}/{bits}", oif=node_if, scope=SCOPE_LINK, family=fam)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST
                raise
            notes.append(f"the node already has a route for {src}/{bits}: answers follow it, not the probe's link")
    finally:
        inner.close()  # a held netlink socket would keep the namespace alive
        node.close()
    return notes


def leftovers() -> list[str]:
    """Probe namespaces whose process is gone (a running probe's namespace is kept)."""
    try:
        entries = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    out = []
    for name in entries:
        if not name.startswith(NETNS_PREFIX):
            continue
        pid = name[len(NETNS_PREFIX):]
        if pid.isdigit() and int(pid) != os.getpid() and os.path.exists(f"/proc/{pid}"):
            continue  # still probing
        out.append(name)
    return sorted(out)


def stale_links() -> list[str]:
    """Node-side probe links in the current namespace whose namespace is gone or whose
    process is gone (normally removed with the namespace)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    out = []
    for name in found:
        if not name or not name.startswith(LINK_PREFIX) or name.startswith(NETNS_PREFIX):
            continue
        try:
            pid = int(name[len(LINK_PREFIX):], 16)
        except ValueError:
            continue
        if pid != os.getpid() and os.path.exists(f"/proc/{pid}"):
            continue
        out.append(name)
    return out


def remove_link(name: str) -> bool:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.link("del", ifname=name)
            return True
        except NetlinkError:
            return False
