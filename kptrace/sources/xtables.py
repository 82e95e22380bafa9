"""Read the legacy iptables backend straight from the kernel, one table blob at a time.

``iptables-legacy-save`` copies each table out of the kernel (``getsockopt``) and then
formats all of its rules; on a large node the formatting costs as much as the copy. kptrace
asks the kernel for the same blob (``IPT_SO_GET_INFO`` and ``IPT_SO_GET_ENTRIES``, read-only
socket options of a raw socket) and decodes only the chains a question reaches
(``parse.xtables``). Only tables that exist are read (``/proc/net/ip_tables_names``): asking
for another would make the kernel create it. A table holding a rule kptrace cannot print
exactly (an extension it does not know) is read with ``iptables-legacy-save -t TABLE``
instead, and answered from that text (``sources.legacy``).

This module imports little: the program starts the read here before anything else.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import socket
import struct
import threading
from typing import Callable

from ..errors import ROOT_MESSAGE, EnvironmentProblem
from ..parse.xtables import XtTable

SO_GET_INFO, SO_GET_ENTRIES = 64, 65  # IPT_SO_GET_* and IP6T_SO_GET_* alike
_LEVEL = {4: socket.IPPROTO_IP, 6: socket.IPPROTO_IPV6}
_NAMES = {4: "ip_tables_names", 6: "ip6_tables_names"}
_INFO = struct.Struct("=32sI5I5III")  # struct ipt_getinfo
_GET_ENTRIES_HEAD = 40  # struct ipt_get_entries: name[32], size, padding to the entries
RETRIES = 3  # the table changed between the two calls (EAGAIN)

FAMILIES = (4, 6)
SO_IP_SET, IP_SET_OP_VERSION, IP_SET_OP_GET_BYINDEX = 83, 0x100, 7  # linux/netfilter/ipset/ip_set.h
_SET_REQUEST = struct.Struct("=II32s")  # op, protocol version, the set's name or index


def table_names(family: int) -> list[str] | None:
    """The family's legacy tables in this network namespace; None without the module."""
    for base in ("/proc/thread-self/net", "/proc/self/net"):
        try:
            with open(f"{base}/{_NAMES[family]}", encoding="ascii") as fh:
                return [line.strip() for line in fh if line.strip()]
        except FileNotFoundError:
            continue
        except PermissionError:
            raise EnvironmentProblem(ROOT_MESSAGE, detail=f"{base}/{_NAMES[family]}: permission denied") from None
    return None


@functools.cache
def _getsockopt() -> Callable[..., int]:
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.getsockopt
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    call.restype = ctypes.c_int
    return call


def _fail(family: int, table: str, err: int) -> EnvironmentProblem:
    if err in (errno.EPERM, errno.EACCES):
        return EnvironmentProblem(ROOT_MESSAGE, detail=f"getsockopt on the IPv{family} table {table}: {os.strerror(err)}")
    return EnvironmentProblem(f"cannot read the legacy IPv{family} table {table} from the kernel: {os.strerror(err)}")


def read_table(family: int, name: str, sock: socket.socket, sets: SetNames | None = None) -> XtTable | None:
    """One table as the kernel holds it, or None when it is gone."""
    call = _getsockopt()
    level = _LEVEL[family]
    for _attempt in range(RETRIES):
        info = ctypes.create_string_buffer(_INFO.size)
        info.raw = _INFO.pack(name.encode(), 0, *([0] * 5), *([0] * 5), 0, 0)
        length = ctypes.c_uint32(_INFO.size)
        if call(sock.fileno(), level, SO_GET_INFO, info, ctypes.byref(length)) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise _fail(family, name, err)
        fields = _INFO.unpack(info.raw)
        valid_hooks, hook_entry, underflow = fields[1], fields[2:7], fields[7:12]
        num_entries, size = fields[12], fields[13]
        # An anonymous mapping: zero pages until the kernel writes them (a bytearray would
        # be zeroed first, touching every page of a 100 MB table twice).
        buf = mmap.mmap(-1, _GET_ENTRIES_HEAD + size)
        struct.pack_into("=32sI", buf, 0, name.encode(), size)
        length = ctypes.c_uint32(len(buf))
        # ctypes releases the GIL for the call: other threads run while the kernel copies.
        start = ctypes.c_char.from_buffer(buf)
        failed = call(sock.fileno(), level, SO_GET_ENTRIES, ctypes.addressof(start), ctypes.byref(length)) != 0
        del start  # no pointer into the mapping may outlive the call
        if failed:
            err = ctypes.get_errno()
            buf.close()
            if err == errno.EAGAIN:  # the table changed size between the two calls
                continue
            if err == errno.ENOENT:
                return None
            raise _fail(family, name, err)
        return XtTable(family, name, buf, valid_hooks=valid_hooks, hook_entry=tuple(hook_entry),
                       underflow=tuple(underflow), num_entries=num_entries, base=_GET_ENTRIES_HEAD, set_name=sets)
    raise EnvironmentProblem(f"the legacy IPv{family} table {name} kept changing while read ({RETRIES} tries)")


class SetNames:
    """ipset names by index, asked of the kernel (``SO_IP_SET``) when a rule needs one: a
    rule refers to its set by index. Asked in the network namespace of the calling thread."""

    def __init__(self) -> None:
        self._names: dict[int, str | None] = {}
        self._version: int | None = None

    def _ask(self, sock: socket.socket, op: int, version: int, index: int = 0) -> bytes | None:
        request = _SET_REQUEST.pack(op, version, struct.pack("=H", index))
        size = 8 if op == IP_SET_OP_VERSION else _SET_REQUEST.size  # the kernel wants each size exactly
        buf = ctypes.create_string_buffer(request, _SET_REQUEST.size)
        length = ctypes.c_uint32(size)
        if _getsockopt()(sock.fileno(), socket.IPPROTO_IP, SO_IP_SET, buf, ctypes.byref(length)) != 0:
            return None  # no ip_set module, or no permission: the rule is read another way
        return buf.raw

    def __call__(self, index: int) -> str | None:
        if index not in self._names:
            self._names[index] = self._lookup(index)
        return self._names[index]

    def _lookup(self, index: int) -> str | None:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
            if self._version is None:
                answer = self._ask(sock, IP_SET_OP_VERSION, 0)
                if answer is None:
                    return None
                self._version = struct.unpack_from("=II", answer)[1]
            answer = self._ask(sock, IP_SET_OP_GET_BYINDEX, self._version, index)
        name = _SET_REQUEST.unpack(answer)[2].split(b"\0", 1)[0] if answer else b""
        return name.decode("utf-8", "surrogateescape") or None


def read_tables(family: int) -> dict[str, XtTable] | None:
    """Every legacy table of a family; None when the kernel has no legacy tables of that
    family at all."""
    wanted = table_names(family)
    if wanted is None:
        return None
    if not wanted:
        return {}
    try:
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        raise EnvironmentProblem(ROOT_MESSAGE, detail="opening a raw socket: permission denied") from None
    except OSError as exc:
        if exc.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            return None  # IPv6 disabled
        raise
    with sock:
        tables = {}
        sets = SetNames()
        for name in wanted:
            table = read_table(family, name, sock, sets)
            if table is not None:
                tables[name] = table
        return tables


def read_legacy_tables() -> dict[int, dict[str, XtTable]]:
    """The legacy backend's tables of both families, straight from the kernel."""
    found: dict[int, dict[str, XtTable]] = {}
    for family in FAMILIES:
        tables = read_tables(family)
        if tables is not None:
            found[family] = tables
    return found


class Pending:
    """``read_legacy_tables`` running in a daemon thread (a command that fails before it
    needs the result does not wait for it); ``result`` waits and returns or raises."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: dict[int, dict[str, XtTable]] | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name="read legacy tables", daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = read_legacy_tables()
        except BaseException as exc:  # handed to whoever asks for the result
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> dict[int, dict[str, XtTable]]:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


_prefetched: Pending | None = None


def prefetch() -> None:
    """Start reading the legacy tables now: the program calls it as soon as it knows the
    command will read the live node, so the kernel copies a large table while Python
    imports the rest of the command."""
    global _prefetched
    _prefetched = Pending()


def take_prefetched() -> Pending | None:
    global _prefetched
    pending, _prefetched = _prefetched, None
    return pending
