"""The lab's endpoint server: every TCP connection and every UDP datagram gets one line
back, ``NAME SOURCE-IP``: who answered, and the client address it saw (which shows
whether the node masqueraded).

TCP speaks first and then half-closes, so ``nc IP PORT`` prints the line; unread input is
drained until the client closes, so ``curl --http0.9`` gets no reset.  The process is
started inside the endpoint's namespace by ``kptrace lab up``; it prints ``ready`` (or
``error: ...``) on stdout once every socket is bound, then detaches stdout.

    python3 -m kptrace.lab.podserver --name web-1 --addr 10.244.1.5 --tcp 80 --udp 53
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import sys
import time

DRAIN_SECONDS = 2.0  # how long a connection may stay open after the answer


def serve(name: str, addr: str, tcp_ports: list[int], udp_ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in tcp_ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(256)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "listen")
    for port in udp_ports:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((addr, port))
        u.setblocking(False)
        sel.register(u, selectors.EVENT_READ, "udp")
    _ready()

    draining: dict[socket.socket, float] = {}
    while True:
        now = time.monotonic()
        timeout = max(0.0, min(draining.values()) - now) if draining else None
        for key, _ in sel.select(timeout):
            sock: socket.socket = key.fileobj  # type: ignore[assignment]
            if key.data == "listen":
                _accept(sock, name, sel, draining)
            elif key.data == "udp":
                try:
                    _, peer = sock.recvfrom(4096)
                    sock.sendto(f"{name} {peer[0]}\n".encode(), peer)
                except OSError:
                    pass
            else:
                try:
                    more = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    more = b""
                if not more:
                    _close(sock, sel, draining)
        now = time.monotonic()
        for sock in [s for s, deadline in draining.items() if deadline <= now]:
            _close(sock, sel, draining)


def _accept(listener: socket.socket, name: str, sel: selectors.BaseSelector,
            draining: dict[socket.socket, float]) -> None:
    try:
        conn, peer = listener.accept()
    except OSError:
        return
    try:
        conn.setblocking(False)
        conn.send(f"{name} {peer[0]}\n".encode())  # a few bytes: fits any fresh send buffer
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        conn.close()
        return
    sel.register(conn, selectors.EVENT_READ, "conn")
    draining[conn] = time.monotonic() + DRAIN_SECONDS


def _close(sock: socket.socket, sel: selectors.BaseSelector, draining: dict[socket.socket, float]) -> None:
    sel.unregister(sock)
    draining.pop(sock, None)
    sock.close()


def _ready() -> None:
    """Tell the lab builder the sockets are bound, then let go of its pipe."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m kptrace.lab.podserver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="What to answer with (the pod's name).")
    parser.add_argument("--addr", default="0.0.0.0", help="Address to bind (default: all).")
    parser.add_argument("--tcp", type=int, action="append", default=[], metavar="PORT", help="TCP port (repeatable).")
    parser.add_argument("--udp", type=int, action="append", default=[], metavar="PORT", help="UDP port (repeatable).")
    args = parser.parse_args(argv)
    try:
        serve(args.name, args.addr, args.tcp, args.udp)
    except OSError as exc:
        sys.stdout.write(f"error: {args.name}: {exc}\n")
        sys.stdout.flush()
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
