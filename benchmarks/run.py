"""Scale benchmark: kptrace against iptables-save on a generated kube-proxy node.

    sudo python3 benchmarks/run.py                       # 1,000 and 10,000 Services, 5 runs
    sudo python3 benchmarks/run.py --sizes 1000,10000,50000
    python3 benchmarks/run.py --quick --no-kernel        # smoke run: files only, no root

For each size the node is :func:`kptrace.generate.synthetic_spec` (N Services x 10
endpoints), rendered with :func:`kptrace.generate.render_save` into
``benchmarks/out/node-N.save``.  Measured, each as the median of ``--runs`` runs:

- ``kptrace svc NS/NAME --from FILE`` and ``kptrace packet --dst IP:PORT --src POD
  --from FILE`` (a Service from the middle of the ruleset, a pod of another one as source);
- with root, in a fresh network namespace per backend (``kptrace-bench-*``, deleted
  afterwards) loaded the way kube-proxy loads it (``render_restore(order="sync")``, then
  ``render_jumps``): ``ip netns exec NS iptables-{nft,legacy}-save`` and
  ``kptrace --netns NS svc NS/NAME``; the same for nft once more with the iptables-save
  file restored as is (chains created in name order: iptables-nft-save's slow case);
- once: ``kptrace --help`` against ``python -c "import typer"``.

Every command runs with a timeout (``--timeout``, default 600 s); a crash or a timeout
is recorded ("crashed after 270 s (SIGSEGV)") and the rest still runs.  A command whose
runs add up to more than ``--budget`` seconds is not repeated further.  Peak memory is
the maximum resident set size reported by GNU time (wait4(2) without it).

The Markdown table goes to stdout and ``benchmarks/results.md``, the numbers to
``benchmarks/out/results.json``; a ``--quick`` run writes ``quick-results.md`` and
``quick-results.json`` in the output directory instead, so it never replaces the
committed results.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))  # run from a checkout

from kptrace.generate import render_jumps, render_restore, render_save  # noqa: E402
from kptrace.generate.spec import ClusterSpec, synthetic_spec  # noqa: E402

MIB = 1024 * 1024
BACKENDS = ("nft", "legacy")
# kptrace's answers: 0 accepted, 1 blocked/no endpoints, 5 uncertain. 2-4 are failures.
KPTRACE_ANSWERED = (0, 1, 5)
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


# -- running one command ------------------------------------------------------------


@dataclass
class Run:
    """One run of one command."""

    seconds: float
    maxrss_kib: int
    returncode: int  # negative: killed by that signal
    timed_out: bool = False
    stderr: str = ""
    stdout_bytes: int = 0

    @property
    def signal_name(self) -> str | None:
        if self.returncode >= 0:
            return None
        try:
            return signal.Signals(-self.returncode).name
        except ValueError:
            return f"signal {-self.returncode}"


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def gnu_time() -> str | None:
    """GNU time, to read a command's peak memory without counting ours (a forked child
    starts with the parent's pages, so wait4's figure is at least the parent's peak)."""
    path = shutil.which("time", path="/usr/bin:/bin") or None
    if path is None:
        return None
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if "GNU" in proc.stdout + proc.stderr else None


TIME = gnu_time()
_TERMINATED = re.compile(r"Command terminated by signal (\d+)")


def run_once(argv: list[str], timeout: float, *, stdin: Path | None = None,
             stdout: Path | None = None, env: dict[str, str] | None = None) -> Run:
    """Run ``argv`` in its own process group, killed after ``timeout`` seconds.

    Wall time from fork to reaping.  Peak RSS from GNU time when installed (it adds about
    a millisecond), else from wait4(2), which then includes this script's own peak.
    """
    out_path = stdout or Path(os.devnull)
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss, \
            open(out_path, "wb") as out, open(stdin or os.devnull, "rb") as inp:
        full = [TIME, "-f", "%M", "-o", rss.name, *argv] if TIME else argv
        start = time.perf_counter()
        proc = subprocess.Popen(full, stdin=inp, stdout=out, stderr=err, env=env, cwd=ROOT,
                                start_new_session=True)
        fired = threading.Event()

        def expire() -> None:
            fired.set()
            _kill_group(proc.pid)

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: take the child down with us
            _kill_group(proc.pid)
            proc.wait()
            raise
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)  # reaped already: keep Popen quiet
        _kill_group(proc.pid)  # anything the command left behind in its group
        maxrss = usage.ru_maxrss
        if TIME and not fired.is_set():
            report = rss.read()
            numbers = re.findall(r"^(\d+)$", report, re.MULTILINE)
            if numbers:
                maxrss = int(numbers[-1])
            killed = _TERMINATED.search(report)
            if killed:
                code = -int(killed.group(1))
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    size = out_path.stat().st_size if stdout else 0
    return Run(elapsed, maxrss, code, fired.is_set(), stderr, size)


# -- measurements -------------------------------------------------------------------


@dataclass
class Measurement:
    key: str
    label: str
    argv: list[str]
    runs: list[Run] = field(default_factory=list)
    status: str = "not run"  # ok, crashed, timed out, failed, skipped, not run
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def median(self) -> float | None:
        return statistics.median(r.seconds for r in self.runs) if self.ok and self.runs else None

    @property
    def seconds_before_failure(self) -> float | None:
        """How long a crashed or timed-out command ran: a lower bound of its real time."""
        if self.status in ("crashed", "timed out") and self.runs:
            return self.runs[-1].seconds
        return None

    @property
    def peak_mib(self) -> float | None:
        return max(r.maxrss_kib for r in self.runs) / 1024 if self.runs else None

    def summary(self) -> str:
        if self.ok:
            return fmt_seconds(self.median)
        if self.status == "crashed":
            return f"crashed after {fmt_seconds(self.runs[-1].seconds)} ({self.runs[-1].signal_name})"
        if self.status == "timed out":
            return f"timed out after {fmt_seconds(self.runs[-1].seconds)}"
        if self.status == "failed":
            return f"failed after {fmt_seconds(self.runs[-1].seconds)}: {self.detail}"
        return f"{self.status}{': ' + self.detail if self.detail else ''}"

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "command": self.argv,
            "status": self.status,
            "detail": self.detail,
            "median_s": self.median,
            "runs_s": [round(r.seconds, 4) for r in self.runs],
            "peak_rss_mib": round(self.peak_mib, 1) if self.peak_mib is not None else None,
            "returncodes": [r.returncode for r in self.runs],
            "seconds_before_failure": self.seconds_before_failure,
        }


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 10:
        return f"{s:.3f} s"
    if s < 100:
        return f"{s:.1f} s"
    return f"{s:.0f} s"


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("# Warning")]
    return lines[0][:160] if lines else ""


def measure(m: Measurement, *, runs: int, timeout: float, budget: float, ok_codes: tuple[int, ...] = (0,),
            stdin: Path | None = None, check: Any = None, scratch: Path | None = None,
            env: dict[str, str] | None = None, log: Any = print) -> Measurement:
    """Run ``m.argv`` up to ``runs`` times; stop at the first failure or once the runs
    add up to more than ``budget`` seconds.  ``check(stdout_text)`` returns a problem
    or None; it looks at the first run's output only."""
    spent = 0.0
    for i in range(runs):
        out = scratch  # every run writes its output to a file, as a user would
        r = run_once(m.argv, timeout, stdin=stdin, stdout=out, env=env)
        m.runs.append(r)
        spent += r.seconds
        if r.timed_out:
            m.status = "timed out"
        elif r.returncode < 0:
            m.status = "crashed"
        elif r.returncode not in ok_codes:
            m.status, m.detail = "failed", f"exit {r.returncode}: {first_line(r.stderr) or 'no message'}"
        elif out is not None and check is not None and i == 0:
            problem = check(out.read_text(errors="replace"))
            m.status, m.detail = ("failed", problem) if problem else ("ok", "")
        else:
            m.status = "ok"
        if out is not None:
            out.unlink(missing_ok=True)
        log(f"    {m.label}: run {i + 1}: {fmt_seconds(r.seconds)}, {r.maxrss_kib / 1024:.0f} MiB"
            + ("" if m.ok else f" -> {m.summary()}"))
        if not m.ok:
            break
        if spent > budget and i + 1 < runs:
            log(f"    {m.label}: {fmt_seconds(spent)} spent, over the {budget:g} s budget: not repeated")
            break
    return m


# -- the machine ------------------------------------------------------------------------


def find_binary(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def _version(argv: list[str]) -> str | None:
    if find_binary(argv[0]) is None:
        return None
    try:
        proc = subprocess.run([find_binary(argv[0]) or argv[0], *argv[1:]], capture_output=True, text=True,
                              timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return first_line(proc.stdout or proc.stderr) or None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        m = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        mem = round(int(m.group(1)) / MIB, 1) if m else None
    except OSError:
        pass
    try:
        from importlib.metadata import PackageNotFoundError, version

        typer_version: str | None = version("typer")
    except PackageNotFoundError:
        typer_version = None
    commit = None
    try:
        proc = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=10, check=False)
        commit = proc.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "typer": typer_version,
        "iptables_nft": _version(["iptables-nft", "--version"]),
        "iptables_legacy": _version(["iptables-legacy", "--version"]),
        "nft": _version(["nft", "--version"]),
        "kptrace_commit": commit,
        "kptrace_sources": code_fingerprint(),
        "peak_rss_from": "GNU time" if TIME else "wait4 (includes this script's own peak)",
    }


def code_fingerprint() -> str:
    """A hash of kptrace's sources as they are on disk (committed or not)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((ROOT / "kptrace").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def kernel_problem() -> str | None:
    """Why the namespace measurements cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables)"
    if find_binary("ip") is None:
        return "needs ip (iproute2)"
    return None


# -- one size -------------------------------------------------------------------------------


@dataclass
class Target:
    """The Service and the packet every size asks about."""

    service: str
    dst: str
    src: str


def pick_target(spec: ClusterSpec) -> Target:
    """A ClusterIP Service with endpoints from the middle of the ruleset, and a pod
    backing another Service as the source."""
    services = spec.services
    mid = len(services) // 2
    for svc in list(services[mid:]) + list(services[:mid]):
        if svc.endpoints and svc.cluster_ips and svc.ports and ":" not in svc.cluster_ips[0]:
            break
    else:
        raise SystemExit("no Service with endpoints in the generated spec")
    others = [s for s in services if s.endpoints and s is not svc and s.name != "kubernetes"]
    src = others[len(others) // 4].endpoints[0].ip if others else "10.244.0.2"
    port = svc.ports[0].port
    return Target(f"{svc.namespace}/{svc.name}", f"{svc.cluster_ips[0]}:{port}", src)


def kptrace_argv() -> list[str]:
    return [sys.executable, "-m", "kptrace"]


def kptrace_env(out_dir: Path) -> dict[str, str]:
    """The environment of every Python command measured.  Byte code is cached (outside
    the checkout, under OUT_DIR/pycache), as for an installed package: with
    PYTHONDONTWRITEBYTECODE every start would compile kptrace again."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(out_dir / "pycache")
    env["COLUMNS"] = "120"
    env["LC_ALL"] = "C.UTF-8"
    return env


def expect_in(*needles: str) -> Any:
    def check(text: str) -> str | None:
        missing = [n for n in needles if n not in text]
        return f"output lacks {', '.join(map(repr, missing))}" if missing else None
    return check


def expect_rules(count: int) -> Any:
    def check(text: str) -> str | None:
        got = text.count("\n-A ")
        return None if got == count else f"printed {got} rules, {count} were loaded"
    return check


class NetnsSet:
    """Namespaces this run created; each is deleted when done (or on exit)."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, name: str) -> None:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
        self.names.append(name)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True,
                       capture_output=True, timeout=30)

    def delete(self, name: str) -> None:
        if name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60, check=False)
            self.names.remove(name)

    def delete_all(self) -> None:
        for name in list(self.names):
            self.delete(name)


def generate_files(n: int, endpoints: int, out_dir: Path, kernel: bool) -> dict[str, Any]:
    """Write the node's iptables-save file (and for the namespaces kube-proxy's restore
    payload and jumps); return what the measurements need."""
    t0 = time.perf_counter()
    spec = synthetic_spec(n, endpoints, seed=1)
    files = {"save": out_dir / f"node-{n}.save"}
    text = render_save(spec)
    files["save"].write_text(text)
    rules, save_bytes = text.count("\n-A "), len(text.encode())
    del text
    if kernel:
        files["restore"] = out_dir / f"node-{n}.restore"
        files["restore"].write_text(render_restore(spec, order="sync"))
        files["jumps"] = out_dir / f"node-{n}.jumps"
        files["jumps"].write_text(render_jumps(spec))
    return {"files": {k: str(v) for k, v in files.items()}, "rules": rules, "save_bytes": save_bytes,
            "seconds": time.perf_counter() - t0, "target": asdict(pick_target(spec))}


@dataclass
class Variant:
    """One namespace: a backend and the order its chains were created in."""

    key: str  # suffix of the measurement keys: nft, legacy, nft_nameorder
    backend: str
    title: str  # for labels
    steps: list[tuple[list[str], Path]]  # restore arguments after the binary, and the input


def variants(args: argparse.Namespace, files: dict[str, Path], n_services: int) -> list[Variant]:
    # kube-proxy's way: its sync payload (chains created in its order, which is by hash,
    # i.e. unsorted) then its jumps from the built-in chains.  A plain restore into the
    # fresh namespace: iptables-nft-restore --noflush of the whole payload is far slower.
    out = [Variant(b, b, b, [([], files["restore"]), (["--noflush"], files["jumps"])]) for b in args.backends]
    if args.name_order and "nft" in args.backends and n_services <= args.name_order_max:
        # The iptables-save file restored as is: chains created in name order.
        out.append(Variant("nft_nameorder", "nft", "nft, name order", [([], files["save"])]))
    return out


def load_ruleset(m: Measurement, ns: str, v: Variant, timeout: float) -> Measurement:
    """Run the restore steps (``m.argv`` plus each step's arguments) into ``ns``; one run
    that sums the steps."""
    total, peak = 0.0, 0
    for extra, path in v.steps:
        r = run_once([*m.argv, *extra], timeout, stdin=path)
        total, peak = total + r.seconds, max(peak, r.maxrss_kib)
        if r.timed_out or r.returncode != 0:
            r.seconds = total
            m.runs.append(r)
            m.status = "timed out" if r.timed_out else "crashed" if r.returncode < 0 else "failed"
            m.detail = "" if m.status != "failed" else f"exit {r.returncode}: {first_line(r.stderr) or 'no message'}"
            return m
    m.runs.append(Run(total, peak, 0))
    m.status = "ok"
    return m


def run_size(n: int, args: argparse.Namespace, namespaces: NetnsSet, log: Any) -> dict[str, Any]:
    out_dir: Path = args.out_dir
    log(f"\n== {n:,} Services x {args.endpoints} endpoints")
    # In a child process: generating 50,000 Services takes a few hundred MB, and every
    # command forked afterwards would otherwise start with that much memory.
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        gen = pool.submit(generate_files, n, args.endpoints, out_dir, args.kernel).result()
    files = {k: Path(v) for k, v in gen["files"].items()}
    rules, save_bytes, gen_s, target = gen["rules"], gen["save_bytes"], gen["seconds"], Target(**gen["target"])
    log(f"  {rules:,} rules, {save_bytes / 1e6:.1f} MB ({gen_s:.1f} s to generate); "
        f"Service {target.service}, packet {target.src} -> {target.dst}")
    scratch = out_dir / "last-output.txt"
    kp, env = kptrace_argv(), kptrace_env(out_dir)
    common: dict[str, Any] = {"runs": args.runs, "timeout": args.timeout, "budget": args.budget, "scratch": scratch,
                              "log": log}
    ms: dict[str, Measurement] = {}
    svc_check = expect_in(target.service)

    ms["svc_file"] = measure(Measurement("svc_file", "kptrace svc from file",
                                         [*kp, "svc", target.service, "--from", str(files["save"])]),
                             ok_codes=KPTRACE_ANSWERED, check=svc_check, env=env, **common)
    ms["packet_file"] = measure(Measurement("packet_file", "kptrace packet from file",
                                            [*kp, "packet", "--dst", target.dst, "--src", target.src,
                                             "--from", str(files["save"])]),
                                ok_codes=KPTRACE_ANSWERED, check=expect_in(target.dst.split(":")[0]), env=env,
                                **common)
    if args.kernel:
        for v in variants(args, files, n):
            restore, save = find_binary(f"iptables-{v.backend}-restore"), find_binary(f"iptables-{v.backend}-save")
            ns = f"kptrace-bench-{os.getpid()}-{n}-{v.key.replace('_', '-')}"
            suffix = "" if v.key in BACKENDS else f" ({v.title})"
            load = Measurement(f"load_{v.key}", f"load: iptables-{v.backend}-restore ({v.title})",
                               ["ip", "netns", "exec", ns, restore or f"iptables-{v.backend}-restore"])
            saving = Measurement(f"save_{v.key}", f"iptables-{v.backend}-save{suffix}",
                                 ["ip", "netns", "exec", ns, save or f"iptables-{v.backend}-save"])
            live = Measurement(f"live_{v.key}", f"kptrace --netns svc ({v.title})",
                               [*kp, "--netns", ns, "svc", target.service])
            tool = find_binary(f"iptables-{v.backend}") or f"iptables-{v.backend}"
            # The one chain every live question reads: its cost is the kernel's, not kptrace's.
            services = Measurement(f"services_{v.key}", f"iptables-{v.backend} -t nat -S KUBE-SERVICES{suffix}",
                                   ["ip", "netns", "exec", ns, tool, "-w", "5", "-t", "nat", "-S", "KUBE-SERVICES"])
            for m in (load, saving, live, services):
                ms[m.key] = m
            if not restore or not save:
                for m in (load, saving, live, services):
                    m.status, m.detail = "skipped", f"iptables-{v.backend}-save/restore not found"
                continue
            namespaces.add(ns)
            try:
                log(f"  [{v.title}] namespace {ns}")
                load_ruleset(load, ns, v, args.timeout)
                log(f"    {load.label}: {load.summary()}")
                if not load.ok:
                    for m in (saving, live, services):
                        m.status, m.detail = "skipped", "the ruleset did not load"
                    continue
                measure(saving, check=expect_rules(rules), **common)
                measure(live, ok_codes=KPTRACE_ANSWERED, check=svc_check, env=env, **common)
                measure(services, check=expect_in("-N KUBE-SERVICES"), **common)
            finally:
                namespaces.delete(ns)
    if not args.keep_files:
        for path in files.values():
            path.unlink(missing_ok=True)
    return {
        "services": n,
        "endpoints": args.endpoints,
        "rules": rules,
        "save_bytes": save_bytes,
        "generate_s": round(gen_s, 2),
        "service": target.service,
        "packet": {"dst": target.dst, "src": target.src},
        "measurements": ms,
    }


# -- targets and tables -----------------------------------------------------------------------


@dataclass
class Verdict:
    ratio: str  # "0.12x iptables-nft-save" or ""
    target: str
    result: str  # PASS, FAIL, n/a


def ratio_verdict(m: Measurement, base: Measurement | None, limit: float | None, base_name: str) -> Verdict:
    """``m``'s median against ``base``'s (a lower bound when ``base`` crashed or timed out)."""
    target = f"≤ {limit:g}×" if limit is not None else ""
    none = "n/a" if limit is not None else ""
    if not m.ok:
        return Verdict("", target, "FAIL" if limit is not None and m.status != "skipped" else none)
    if base is None or (not base.ok and base.seconds_before_failure is None):
        return Verdict("", target, none)
    if base.ok:
        r = m.median / base.median
        return Verdict(f"{r:.2f}× {base_name}", target, "" if limit is None else ("PASS" if r <= limit else "FAIL"))
    bound = m.median / base.seconds_before_failure
    ratio = f"≤ {bound:.3f}× {base_name} ({base.status} after {fmt_seconds(base.seconds_before_failure)})"
    if limit is None:
        return Verdict(ratio, target, "")
    return Verdict(ratio, target, "PASS" if bound <= limit else "n/a")


def memory_verdict(m: Measurement, limit_mib: float | None) -> str:
    if limit_mib is None or not m.runs:
        return ""
    return "PASS" if m.peak_mib is not None and m.peak_mib <= limit_mib else "FAIL"


ROWS = [  # key, baseline key, ratio limit, memory limit (MiB)
    ("save_nft", None, None, None),
    ("save_legacy", None, None, None),
    ("svc_file", "save_nft", 0.2, 300),
    ("packet_file", "save_nft", 0.2, 300),
    ("live_nft", "save_nft", 0.15, None),
    ("live_legacy", "save_legacy", 1.0, None),
    ("services_nft", "save_nft", None, None),
    ("services_legacy", "save_legacy", None, None),
    ("save_nft_nameorder", None, None, None),
    ("live_nft_nameorder", "save_nft_nameorder", None, None),
    ("load_nft", None, None, None),
    ("load_legacy", None, None, None),
    ("load_nft_nameorder", None, None, None),
]


def size_rows(size: dict[str, Any]) -> list[dict[str, str]]:
    ms: dict[str, Measurement] = size["measurements"]
    rows = []
    for key, base_key, limit, mem_limit in ROWS:
        m = ms.get(key)
        if m is None or (m.status == "skipped" and key.startswith(("load_", "save_"))):
            continue
        base = ms.get(base_key) if base_key else None
        v = ratio_verdict(m, base, limit, base.label if base else "")
        mem = memory_verdict(m, mem_limit)
        target = ", ".join(t for t in (v.target, f"≤ {mem_limit} MiB" if mem_limit else "") if t)
        if v.result and mem and v.result != mem:
            result = f"time {v.result}, memory {mem}"
        else:
            result = v.result or mem
        rows.append({
            "key": key,
            "label": m.label,
            "time": m.summary(),
            "runs": str(len(m.runs)) if m.runs else "-",
            "peak": f"{m.peak_mib:.0f} MiB" if m.peak_mib is not None else "-",
            "ratio": v.ratio,
            "target": target,
            "result": result,
        })
    return rows


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows)
    return out


def render_markdown(result: dict[str, Any]) -> str:
    mi, cfg = result["machine"], result["config"]
    lines = [
        "# kptrace scale benchmark",
        "",
        f"Generated by `{cfg['command']}` on {result['date']} ({result['total_s']:.0f} s in all).",
        "",
        f"- machine: {mi['cpu']}, {mi['cores']} cores, {mi['memory_gib']} GiB; kernel {mi['kernel']}",
        (f"- {mi['iptables_nft'] or 'iptables-nft: not found'}; "
         f"{mi['iptables_legacy'] or 'iptables-legacy: not found'}; {mi['nft'] or 'nft: not found'}"),
        (f"- Python {mi['python']}, typer {mi['typer']}; kptrace {mi['kptrace_commit'] or '(no git)'} "
         f"(sources {mi['kptrace_sources']})"),
        (f"- median of up to {cfg['runs']} runs (fewer once a command's runs pass {cfg['budget']:g} s, one when "
         f"it fails); every command limited to {cfg['timeout']:g} s; peak RSS: the largest maximum resident set "
         "size of the command and the processes it ran (`ip netns exec` execs the command, kptrace runs `nft` "
         f"and `iptables`), from {mi['peak_rss_from']}"),
    ]
    if cfg.get("no_kernel_reason"):
        lines.append(f"- namespace measurements skipped: {cfg['no_kernel_reason']}")
    else:
        lines += [
            ("- nft, legacy: a fresh network namespace per backend and size, loaded as kube-proxy does: its sync "
             "payload (`render_restore(order=\"sync\")`, chains created in kube-proxy's order, which is by hash) "
             "restored into the empty tables, then its jumps (`render_jumps`) with `--noflush`"),
        ]
        if "nft" in cfg["backends"] and cfg.get("name_order"):
            lines.append(
                "- nft, name order: the iptables-save file restored as is, so the chains are created in name "
                "order. iptables-nft-save 1.8.x sorts the chains with a quicksort that takes the first chain as "
                "pivot and recurses once per chain on input already sorted: quadratic time, and a stack overflow "
                "(SIGSEGV) past roughly 75,000 chains in one table with the default 8 MiB stack"
            )
    lines.append("- the targets are set for 10,000 Services; the other sizes show how the same ratios grow")
    for size in result["sizes"]:
        lines += ["", (f"## {size['services']:,} Services × {size['endpoints']} endpoints ({size['rules']:,} rules, "
                       f"{size['save_bytes'] / 1e6:.1f} MB saved)"), "",
                  (f"Service `{size['service']}`, packet `--src {size['packet']['src']} --dst "
                   f"{size['packet']['dst']}`."), ""]
        rows = size_rows(size)
        lines += md_table(["command", "time (median)", "runs", "peak RSS", "ratio", "target", "result"],
                          [[r["label"], r["time"], r["runs"], r["peak"], r["ratio"], r["target"], r["result"]]
                           for r in rows])
    startup = result["startup"]
    lines += ["", "## Start-up", ""]
    help_m, typer_m = startup["help"], startup["typer"]
    v = ratio_verdict(help_m, typer_m, 1.5, 'python -c "import typer"')
    lines += md_table(["command", "time (median)", "runs", "peak RSS", "ratio", "target", "result"], [
        [help_m.label, help_m.summary(), str(len(help_m.runs)), f"{help_m.peak_mib or 0:.0f} MiB", v.ratio, v.target,
         v.result],
        [typer_m.label, typer_m.summary(), str(len(typer_m.runs)), f"{typer_m.peak_mib or 0:.0f} MiB", "", "", ""],
    ])
    if len(result["sizes"]) > 1:
        lines += ["", "## Growth (median, or how the command ended)", ""]
        keys = [k for k, *_ in ROWS]
        labels: dict[str, str] = {}
        for size in result["sizes"]:
            for k in keys:
                m = size["measurements"].get(k)
                if m is not None and m.status != "skipped":
                    labels.setdefault(k, m.label)
        header = ["command"] + [f"{s['services']:,} Services" for s in result["sizes"]]
        rows = []
        for k in keys:
            if k not in labels:
                continue
            row = [labels[k]]
            for size in result["sizes"]:
                m = size["measurements"].get(k)
                row.append(m.summary() if m is not None else "-")
            rows.append(row)
        lines += md_table(header, rows)
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def to_json(result: dict[str, Any]) -> dict[str, Any]:
    doc = dict(result)
    doc["sizes"] = []
    for size in result["sizes"]:
        s = dict(size)
        s["measurements"] = {k: m.to_json() for k, m in size["measurements"].items()}
        s["verdicts"] = {r["key"]: {"ratio": r["ratio"], "target": r["target"], "result": r["result"]}
                         for r in size_rows(size)}
        doc["sizes"].append(s)
    doc["startup"] = {k: m.to_json() for k, m in result["startup"].items()}
    v = ratio_verdict(result["startup"]["help"], result["startup"]["typer"], 1.5, 'python -c "import typer"')
    doc["startup"]["verdict"] = asdict(v)
    return doc


# -- main ---------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x.replace("_", "")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers, e.g. 1000,10000") from None
    if not sizes or any(s < 3 for s in sizes):
        raise argparse.ArgumentTypeError("each size must be at least 3 Services")
    return sizes


def parse_backends(text: str) -> list[str]:
    backends = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        raise argparse.ArgumentTypeError(f"backends: choose from {', '.join(BACKENDS)}")
    return backends


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure kptrace against iptables-save on generated kube-proxy nodes.")
    parser.add_argument("--sizes", type=parse_sizes, help="numbers of Services (default 1000,10000; --quick: 200)")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per Service (default 10)")
    parser.add_argument("--runs", type=int, help="runs per command, the median is reported (default 5; --quick: 3)")
    parser.add_argument("--timeout", type=float, default=600.0, help="limit for each command, seconds (default 600)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="stop repeating a command once its runs add up to this many seconds (default 60)")
    parser.add_argument("--backends", type=parse_backends, default=list(BACKENDS),
                        help="iptables backends to load into namespaces (default nft,legacy)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (200 Services, 3 runs)")
    parser.add_argument("--no-kernel", action="store_true",
                        help="only the file-based commands: no namespaces, no root needed")
    parser.add_argument("--out-dir", type=Path, default=HERE / "out",
                        help="generated rules and results.json (default benchmarks/out)")
    parser.add_argument("--results", type=Path, help="Markdown output (default benchmarks/results.md; "
                        "--quick: OUT_DIR/quick-results.md)")
    parser.add_argument("--json", type=Path, help="JSON output (default OUT_DIR/results.json; "
                        "--quick: OUT_DIR/quick-results.json)")
    parser.add_argument("--no-name-order", dest="name_order", action="store_false",
                        help="skip the extra nft namespace loaded from the iptables-save file as is (chains "
                        "created in name order, iptables-nft-save's slow case)")
    parser.add_argument("--name-order-max", type=int, default=10000,
                        help="largest size that gets the name-order namespace (default 10000: at 50,000 "
                        "iptables-nft-save runs past any sensible timeout there)")
    parser.add_argument("--keep-files", action="store_true", help="keep the generated node-N.save files")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.endpoints < 1:
        parser.error("--endpoints must be at least 1")
    args.sizes = args.sizes or ([200] if args.quick else [1000, 10000])
    args.runs = args.runs or (3 if args.quick else 5)
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    prefix = "quick-" if args.quick else ""
    results_md = args.results or (args.out_dir / "quick-results.md" if args.quick else HERE / "results.md")
    results_json = args.json or args.out_dir / f"{prefix}results.json"
    args.no_kernel_reason = "--no-kernel" if args.no_kernel else kernel_problem()
    args.kernel = args.no_kernel_reason is None

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    # Killed politely: unwind, so the child's process group and the namespaces go too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.perf_counter()
    machine = machine_info()
    fingerprint = code_fingerprint()
    log(f"kptrace benchmark: sizes {args.sizes}, {args.runs} runs, timeout {args.timeout:g} s; "
        f"{machine['cpu']}, {machine['cores']} cores, kernel {machine['kernel']}")
    if not args.kernel:
        log(f"namespace measurements skipped: {args.no_kernel_reason}")

    env = kptrace_env(args.out_dir)
    common: dict[str, Any] = {"runs": args.runs, "timeout": args.timeout, "budget": args.budget, "log": log,
                              "env": env}
    # Warm-up, untimed: fills the byte-code cache.
    warm = synthetic_spec(20, 2)
    warm_target = pick_target(warm)
    warm_file = args.out_dir / "warm-up.save"
    warm_file.write_text(render_save(warm))
    for extra in (["--help"], ["svc", warm_target.service, "--from", str(warm_file)],
                  ["packet", "--dst", warm_target.dst, "--src", warm_target.src, "--from", str(warm_file)]):
        run_once([*kptrace_argv(), *extra], args.timeout, env=env)
    warm_file.unlink(missing_ok=True)

    log("\n== start-up")
    startup = {
        "help": measure(Measurement("help", "kptrace --help", [*kptrace_argv(), "--help"]), **common),
        "typer": measure(Measurement("typer", 'python -c "import typer"', [sys.executable, "-c", "import typer"]),
                         **common),
    }
    namespaces = NetnsSet()
    sizes = []
    try:
        for n in args.sizes:
            sizes.append(run_size(n, args, namespaces, log))
    finally:
        namespaces.delete_all()

    notes = []
    for size in sizes:
        for m in size["measurements"].values():
            if m.status in ("crashed", "timed out") and m.runs and first_line(m.runs[-1].stderr):
                notes.append(f"{size['services']:,} Services, {m.label}: {m.summary()}; stderr: "
                             f"{first_line(m.runs[-1].stderr)!r}")
    if code_fingerprint() != fingerprint:
        notes.insert(0, "kptrace's sources changed while this ran: the rows measured different code; run again")
        log("warning: kptrace's sources changed during the run; the numbers mix versions")
    shown = ["python3 benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "total_s": time.perf_counter() - started,
        "machine": machine,
        "config": {"command": " ".join(shown), "sizes": args.sizes, "endpoints": args.endpoints, "runs": args.runs,
                   "timeout": args.timeout, "budget": args.budget, "backends": args.backends,
                   "kernel": args.kernel, "no_kernel_reason": args.no_kernel_reason,
                   "name_order": args.name_order},
        "startup": startup,
        "sizes": sizes,
        "notes": notes,
    }
    md = render_markdown(result)
    print(md, end="")
    results_md.parent.mkdir(parents=True, exist_ok=True)
    results_md.write_text(md)
    results_json.parent.mkdir(parents=True, exist_ok=True)
    results_json.write_text(json.dumps(to_json(result), indent=2) + "\n")
    log(f"\nwrote {results_md} and {results_json} ({result['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
