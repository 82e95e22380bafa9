"""The ``kptrace`` program: start the slowest read of a live question before anything else.

On a node with a large legacy iptables ruleset, the kernel takes half a second to copy
the nat table out; importing the command line and the command's modules takes a fifth of
that. So when the arguments ask a question of the live node (``svc`` or ``packet``
without ``--from``), the copy starts first, in a background thread (after entering
``--netns``), and the command finds it done or under way. Anything that goes wrong here
is left for the command itself to find and report: this only saves time.
"""

from __future__ import annotations

import sys

LIVE_COMMANDS = ("svc", "packet")


def live_question(args: list[str]) -> tuple[bool, str | None]:
    """(the arguments ask a question of the live node, the --netns given before the command)."""
    netns, command = None, None
    words = iter(args)
    for word in words:
        if word == "--netns":
            netns = next(words, None)
        elif word.startswith("--netns="):
            netns = word.partition("=")[2]
        elif not word.startswith("-"):
            command = word
            break
    if command not in LIVE_COMMANDS or any(a in ("-h", "--help") for a in args):
        return False, netns
    from_file = any(a in ("--from", "-f") or a.startswith(("--from=", "-f")) for a in args)
    return not from_file, netns


def start_early_reads(args: list[str]) -> None:
    live, netns = live_question(args)
    if not live:
        return
    try:
        if netns:
            from ..sources.netns import enter_netns

            enter_netns(netns)  # the command enters it again, and reports a failure
        from ..sources.xtables import prefetch

        prefetch()
    except Exception:  # noqa: BLE001 - the command reads again and reports what failed
        return


def run() -> None:
    start_early_reads(sys.argv[1:])
    from .app import main

    sys.exit(main())
