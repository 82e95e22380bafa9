"""Build probe packets with scapy and send them through a raw socket.

A raw socket with IP_HDRINCL goes through the kernel's LOCAL_OUT hooks, so a probe sent
in the node's namespace takes the OUTPUT path; sent in another namespace it crosses a
veth into the node and takes the PREROUTING path. scapy's own L3 socket on Linux writes
frames to a packet socket after routing in userspace, which would skip netfilter: it is
only used here to build the bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from ..sources.netns import in_netns as _in_netns

from ..errors import EnvironmentProblem, UsageError
from ..model.packet import IPAddress



@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block with this thread in netns NAME (None: stay); sockets made inside
    stay there after the thread returns."""
    with _in_netns(name, what="--src-netns"):
        yield


def source_for(dst: IPAddress, dport: int, netns: str | None) -> IPAddress:
    """The source address the kernel of NETNS picks for DST (a route lookup: connect()
    on a UDP socket sends nothing)."""
    fam = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
    with in_netns(netns):
        s = socket.socket(fam, socket.SOCK_DGRAM)
    with s:
        try:
            s.connect((str(dst), dport))
        except OSError as exc:
            where = f"network namespace {netns}" if netns else "the node"
            raise UsageError(f"{where} has no route to {dst}: {exc.strerror}") from None
        return ipaddress.ip_address(s.getsockname()[0])


def build(src: IPAddress, dst: IPAddress, proto: str, sport: int, dport: int) -> bytes:
    """The first packet of a new connection: a TCP SYN, or a one-line UDP datagram."""
    if dst.version == 6:
        from scapy.layers.inet6 import IPv6 as L3

        ip = L3(src=str(src), dst=str(dst), hlim=64)
    else:
        from scapy.layers.inet import IP

        ip = IP(src=str(src), dst=str(dst), ttl=64, id=sport & 0xFFFF)
    if proto == "tcp":
        from scapy.layers.inet import TCP

        l4 = TCP(sport=sport, dport=dport, flags="S", seq=sport * 7919 & 0xFFFFFFFF, window=64240)
    elif proto == "udp":
        from scapy.layers.inet import UDP

        l4 = UDP(sport=sport, dport=dport) / b"kptrace probe\n"
    else:
        raise UsageError(f"--inject sends tcp or udp probes, not {proto}")
    return bytes(ip / l4)


class RawSender:
    """A raw IP socket in a namespace; the caller gives complete IP headers."""

    def __init__(self, family: int, netns: str | None) -> None:
        fam = socket.AF_INET6 if family == 6 else socket.AF_INET
        try:
            with in_netns(netns):
                self.sock = socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except PermissionError:
            raise EnvironmentProblem("sending a probe needs root (CAP_NET_RAW)") from None
        if family == 4:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)

    def send(self, data: bytes, dst: IPAddress) -> None:
        try:
            self.sock.sendto(data, (str(dst), 0))
        except OSError as exc:
            # EPERM: an OUTPUT rule dropped it; ECONNREFUSED/EHOSTUNREACH: rejected or no
            # route. The rule counters tell which, so the send itself is not an error.
            if exc.errno not in (errno.EPERM, errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                raise EnvironmentProblem(f"sending the probe failed: {exc.strerror}") from None

    def close(self) -> None:
        self.sock.close()
