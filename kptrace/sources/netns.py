"""Enter a named network namespace (as ``ip netns exec NAME``), for good or for a block."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import EnvironmentProblem, NotFound, UsageError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
SCOPE_LINK = 253  # rtnetlink route scope, for the /32 routes of veth wiring


def _open(name: str, what: str) -> int:
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"{what}: {name!r} is not a network namespace name (ip netns list)")
    try:
        return os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {name} not found (ip netns list)") from None
    except PermissionError:
        raise EnvironmentProblem(f"cannot open network namespace {name}: needs root: run with sudo") from None


def _setns(fd: int) -> None:
    native = getattr(os, "setns", None)  # Python 3.12+
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    # libc directly: importing pyroute2 just for this costs a quarter of a second.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _enter(fd: int, name: str) -> None:
    try:
        _setns(fd)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise EnvironmentProblem(
                f"entering network namespace {name} needs root (CAP_SYS_ADMIN): run with sudo"
            ) from None
        if exc.errno == errno.EINVAL:
            raise NotFound(f"{NETNS_DIR}/{name} is not a network namespace (stale entry? ip netns list)") from None
        raise EnvironmentProblem(f"cannot enter network namespace {name}: {os.strerror(exc.errno or 0)}") from None


def enter_netns(name: str, *, what: str = "--netns") -> None:
    """Move the calling thread, and every process it starts later, into netns NAME.

    Call it before anything opens sockets or threads: setns(2) changes only the
    calling thread, and a socket stays in the namespace it was created in. Files under
    /proc/sys/net opened afterwards show the new namespace (the kernel resolves them
    for the opener), so no remount is needed, unlike /sys for ``ip netns exec``.
    """
    fd = _open(name, what)
    try:
        _enter(fd, name)
    finally:
        os.close(fd)


@contextmanager
def in_netns(name: str | None, *, what: str = "--netns") -> Iterator[None]:
    """Run the block with the calling thread in netns NAME (None: stay where it is).

    Sockets and processes created inside stay in NAME; the thread always returns.
    """
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_netns(name, what=what)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


# -- wiring namespaces with pyroute2 (the lab, the probe's source namespace) --------------


def iproute_in(name: str | None, *, what: str = "--netns") -> Any:
    """A pyroute2 IPRoute whose netlink socket lives in netns NAME (None: this one)."""
    from pyroute2 import IPRoute

    with in_netns(name, what=what):
        return IPRoute()


def link_index(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise EnvironmentProblem(f"interface {ifname} did not appear")
    return int(found[0])


def create_netns(name: str) -> None:
    from pyroute2 import netns

    netns.create(name)


def remove_netns(name: str) -> bool:
    """Delete a named namespace (its veth ends go with it); False if it was not there."""
    from pyroute2 import netns

    try:
        netns.remove(name)
        return True
    except FileNotFoundError:
        return False
