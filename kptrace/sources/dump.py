"""``kptrace dump DIR``: save everything kptrace reads from this node into a bundle,
and read a bundle back into the same state a live read gives.

The layout is described in docs/dump-format.md. The manifest lists every file with its
kind, so files of kinds this version does not know (added by a later kptrace) are
reported and skipped instead of breaking the read.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
from typing import Any

from .. import __version__
from ..errors import ParseError, UsageError
from ..model.state import NodeState
from .collect import BACKENDS, FAMILIES, RawState, build_state, check_backend, choose_backend, collect

FORMAT = "kptrace-dump/v1"
MANIFEST = "manifest.json"


# -- writing --------------------------------------------------------------------


def write_dump(directory: str, *, backend: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Collect this node's state and write it into DIR (new or empty); returns the manifest."""
    _check_target(directory)
    time = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    raw = collect(backend=backend, timeout=timeout, versions=True)
    chosen, choice_warnings = choose_backend(raw.saves, check_backend(backend))
    os.makedirs(directory, exist_ok=True)

    files: dict[str, dict[str, Any]] = {}
    empty: list[str] = []

    def put(rel: str, text: str, **entry: Any) -> None:
        path = os.path.join(directory, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = text.encode("utf-8", "surrogateescape")
        with open(path, "wb") as fh:
            fh.write(data)
        files[rel] = {**entry, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    for (b, family), text in sorted(raw.saves.items()):
        command = raw.commands[(b, family)]
        if not any(line.startswith("*") for line in text.splitlines()):
            empty.append(command)
            continue
        put(f"iptables/{b}-v{family}.save", text, kind="iptables-save", backend=b, family=family, command=command)
    if raw.ipset is not None:
        put("ipset.save", raw.ipset, kind="ipset-save", command="ipset save")
    put("addresses.json", _json(raw.addresses or []), kind="addresses", source="netlink RTM_GETADDR")
    put("routes.json", _json({"routes": raw.routes or [], "policy_rules": raw.policy_rules}), kind="routes",
        source="netlink RTM_GETROUTE (tables main, local), RTM_GETRULE")
    put("sysctls.json", _json(raw.sysctls), kind="sysctls", source="/proc/sys")

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "host": socket.gethostname(),
        "time": time,
        "kernel": os.uname().release,
        "netns": _netns_id(),
        "tools": {"kptrace": __version__, **raw.versions},
        "backend": chosen,
        "backend_forced": backend is not None,
        "backend_warnings": choice_warnings,  # informational: a reader decides again
        "files": files,
        "empty": empty,  # commands that ran and printed no tables
        "warnings": raw.warnings,
    }
    # The manifest comes last: a bundle without one was interrupted.
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as fh:
        fh.write(_json(manifest))
    return manifest


def _check_target(directory: str) -> None:
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise UsageError(f"{directory}: exists and is not a directory")
        if os.listdir(directory):
            raise UsageError(f"{directory}: exists and is not empty (give a new or empty directory)")


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


def _netns_id() -> str | None:
    try:
        return os.readlink("/proc/self/ns/net")  # e.g. net:[4026531840]
    except OSError:
        return None


# -- reading --------------------------------------------------------------------


def is_dump(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MANIFEST))


def load_dump(directory: str, *, lenient: bool = False, backend: str | None = None) -> NodeState:
    """The state a bundle holds, as ``load_live`` gave it when the bundle was written."""
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: not a directory")
    manifest_path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(manifest_path):
        raise UsageError(f"{directory}: not a kptrace dump bundle (no {MANIFEST}; write one with 'kptrace dump DIR')")
    manifest = _parse_json(_read(manifest_path, listed=False), manifest_path, dict)
    fmt = manifest.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("kptrace-dump/"):
            raise UsageError(f"{manifest_path}: bundle format {fmt} is not one this kptrace reads ({FORMAT})")
        raise ParseError(f"not a kptrace dump manifest (\"format\" is {fmt!r}, expected {FORMAT!r})", source=manifest_path)
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ParseError('"files" is missing or not an object', source=manifest_path)

    raw = RawState(saves={}, commands={}, warnings=_strings(manifest.get("warnings", []), manifest_path))
    sources: dict[str, str] = {}
    rule_sources: dict[tuple[str, int], str] = {}
    paths = [os.path.abspath(manifest_path)]
    for rel, entry in files.items():
        if not isinstance(entry, dict) or not isinstance(rel, str):
            raise ParseError(f"files entry {rel!r} is not an object", source=manifest_path)
        if os.path.isabs(rel) or ".." in rel.split("/"):
            raise ParseError(f"file {rel!r} is outside the bundle", source=manifest_path)
        kind = entry.get("kind")
        path = os.path.join(directory, rel)
        if kind not in ("iptables-save", "ipset-save", "addresses", "routes", "sysctls"):
            raw.warnings.append(f"{path}: a {kind!r} file, which this kptrace does not read (skipped)")
            continue
        text = _read(path)
        digest = hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()
        if entry.get("sha256") not in (None, digest):
            raw.warnings.append(f"{path}: changed since the dump was written (checksum differs)")
        paths.append(os.path.abspath(path))
        if kind == "iptables-save":
            b, family = entry.get("backend"), entry.get("family")
            if b not in BACKENDS or family not in FAMILIES:
                raise ParseError(f"file {rel}: bad backend/family {b!r}/{family!r}", source=manifest_path)
            raw.saves[(b, family)] = text
            raw.commands[(b, family)] = str(entry.get("command", ""))
            rule_sources[(b, family)] = path
        elif kind == "ipset-save":
            raw.ipset, sources["ipset"] = text, path
        elif kind == "addresses":
            raw.addresses, sources["addresses"] = _parse_json(text, path, list), path
        elif kind == "routes":
            data = _parse_json(text, path, dict)
            routes, rules = data.get("routes"), data.get("policy_rules", [])
            if not isinstance(routes, list) or not isinstance(rules, list):
                raise ParseError('expected {"routes": [...], "policy_rules": [...]}', source=path)
            raw.routes, raw.policy_rules, sources["routes"] = routes, rules, path
        else:
            sysctls = _parse_json(text, path, dict)
            raw.sysctls = {str(k): str(v) for k, v in sysctls.items()}
    if backend is None and manifest.get("backend_forced"):
        backend = manifest.get("backend")
    return build_state(
        raw,
        kind="dump",
        backend=backend,
        lenient=lenient,
        sources=sources,
        rule_sources=rule_sources,
        paths=tuple(paths),
        time=manifest.get("time") if isinstance(manifest.get("time"), str) else None,
    )


def _read(path: str, *, listed: bool = True) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read()
    except FileNotFoundError:
        why = f"listed in {MANIFEST} but missing" if listed else "no such file"
        raise UsageError(f"{path}: {why} (incomplete bundle?)") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    if "\x00" in text[:65536]:
        raise ParseError("binary data, not a kptrace dump file", source=path)
    return text


def _parse_json(text: str, path: str, shape: type) -> Any:
    if not text.strip():
        raise ParseError("empty file (truncated bundle?)", source=path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        lines = text.split("\n")
        line = lines[exc.lineno - 1] if exc.lineno <= len(lines) else ""
        raise ParseError(f"not valid JSON: {exc.msg}", source=path, line=exc.lineno, text=line, column=exc.colno - 1) from None
    if not isinstance(data, shape):
        raise ParseError(f"expected a JSON {'object' if shape is dict else 'array'}", source=path)
    return data


def _strings(value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        raise ParseError('"warnings" is not a list', source=path)
    return [str(v) for v in value]
