"""Switch the process into a named network namespace (as ``ip netns exec NAME``)."""

from __future__ import annotations

import errno
import os

from ..errors import EnvironmentProblem, NotFound, UsageError

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000


def enter_netns(name: str) -> None:
    """Move the calling thread, and every process it starts later, into netns NAME.

    Call it before anything opens sockets or threads: setns(2) changes only the
    calling thread, and a socket stays in the namespace it was created in. Files under
    /proc/sys/net opened afterwards show the new namespace (the kernel resolves them
    for the opener), so no remount is needed, unlike /sys for ``ip netns exec``.
    """
    if not name or "/" in name or name in (".", ".."):
        raise UsageError(f"--netns: {name!r} is not a network namespace name (ip netns list)")
    path = os.path.join(NETNS_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {name} not found (ip netns list)") from None
    except PermissionError:
        raise EnvironmentProblem(f"cannot open network namespace {name}: needs root: run with sudo") from None
    try:
        _setns(fd)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise EnvironmentProblem(
                f"entering network namespace {name} needs root (CAP_SYS_ADMIN): run with sudo"
            ) from None
        if exc.errno == errno.EINVAL:
            raise NotFound(f"{path} is not a network namespace (stale entry? ip netns list)") from None
        raise EnvironmentProblem(f"cannot enter network namespace {name}: {os.strerror(exc.errno or 0)}") from None
    finally:
        os.close(fd)


def _setns(fd: int) -> None:
    native = getattr(os, "setns", None)  # Python 3.12+
    if native is not None:
        native(fd, CLONE_NEWNET)
        return
    from pyroute2 import netns  # an int is used as is: nothing is created

    netns.setns(fd)
