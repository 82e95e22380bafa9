"""The shipped completion scripts are what the CLI generates, load in their shells, and complete."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from clirunner import ROOT

SHELLS = ["bash", "zsh", "fish"]
KPTRACE = [sys.executable, "-c", "from kptrace.cli.app import run; run()"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


@pytest.mark.parametrize("shell", SHELLS)
def test_script_is_generated_from_the_cli(shell: str) -> None:
    r = subprocess.run(KPTRACE, env=_env(_KPTRACE_COMPLETE=f"source_{shell}"), capture_output=True, text=True, timeout=60)
    generated = r.stdout.replace(f"{sys.executable} -c", "kptrace")
    shipped = (ROOT / "completions" / f"kptrace.{shell}").read_text()
    assert "_KPTRACE_COMPLETE" in shipped
    assert generated.strip() == shipped.strip() or r.stdout.strip() == shipped.strip()


@pytest.mark.parametrize("shell", SHELLS)
def test_script_loads(shell: str) -> None:
    binary = shutil.which(shell)
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{shell} is missing (.ci/run installs it)")
        pytest.skip(f"{shell} is not installed")
    flag = {"bash": "-n", "zsh": "-n", "fish": "--no-execute"}[shell]
    r = subprocess.run([binary, flag, str(ROOT / "completions" / f"kptrace.{shell}")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "words,cword,expected",
    [
        ("kptrace pa", 1, "packet"),
        ("kptrace svc --fr", 2, "--from"),
        ("kptrace packet --ds", 2, "--dst"),
        ("kptrace lab ", 2, "up"),
    ],
)
def test_bash_completion_answers(words: str, cword: int, expected: str) -> None:
    r = subprocess.run(
        KPTRACE,
        env=_env(_KPTRACE_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD=str(cword)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert expected in r.stdout.split()
