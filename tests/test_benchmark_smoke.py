"""The scale benchmark still runs: its smallest mode, file-based commands only (no root,
no namespaces), into a temporary directory so the committed results stay untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_run_without_kernel_prints_the_table(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--no-kernel", "--runs", "2", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "| command | time (median) | runs | peak RSS | ratio | target | result |" in out
    for label in ("kptrace svc from file", "kptrace packet from file", "kptrace --help", 'python -c "import typer"'):
        assert f"| {label} |" in out, label
    assert "namespace measurements skipped: --no-kernel" in out
    assert "iptables-nft-save" not in out  # nothing touched the kernel

    assert (tmp_path / "quick-results.md").read_text() == out
    doc = json.loads((tmp_path / "quick-results.json").read_text())
    (size,) = doc["sizes"]
    for key in ("svc_file", "packet_file"):
        m = size["measurements"][key]
        assert m["status"] == "ok", m
        assert len(m["runs_s"]) == 2 and m["median_s"] > 0 and m["peak_rss_mib"] > 0
    assert doc["startup"]["help"]["status"] == "ok"
    assert not list(tmp_path.glob("node-*"))  # generated rules are removed
