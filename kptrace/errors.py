"""Exit statuses and the one exception family the CLI turns into messages."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0  # every outcome accepted
    BLOCKED = 1  # some outcome dropped/rejected, or a Service has no endpoints
    USAGE = 2  # bad usage, unreadable or malformed input
    ENVIRONMENT = 3  # missing binary, permission, kernel feature, unsupported mode
    NOT_FOUND = 4  # the Service or address named is not found
    UNCERTAIN = 5  # the answer depends on something kptrace could not evaluate
    DISAGREES = 6  # the kernel disagrees with the prediction (inject)


# What a live read without privileges says (the kernel refuses to list or copy rules).
ROOT_MESSAGE = "needs root (CAP_NET_ADMIN): run with sudo or use --from FILE"


class KptraceError(Exception):
    """An error with a user-facing one-line message and an exit status."""

    exit_status: ExitStatus = ExitStatus.USAGE

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail  # extra lines shown under the message (e.g. a caret)


class UsageError(KptraceError):
    exit_status = ExitStatus.USAGE


class ParseError(KptraceError):
    """Malformed input; names the file and line and can point at the bad token."""

    exit_status = ExitStatus.USAGE

    def __init__(
        self,
        problem: str,
        *,
        source: str = "<input>",
        line: int | None = None,
        text: str | None = None,
        column: int | None = None,
    ) -> None:
        where = f"{source}:{line}" if line is not None else source
        detail = None
        if text is not None:
            shown = text.rstrip("\n")
            if len(shown) > 200:  # keep the caret line readable on huge rules
                start = max(0, (column or 0) - 100)
                shown = shown[start : start + 200]
                column = (column or 0) - start
            detail = "  " + shown
            if column is not None:
                detail += "\n  " + " " * column + "^"
        super().__init__(f"{where}: {problem}", detail=detail)
        self.problem = problem
        self.source = source
        self.line = line
        self.column = column


class EnvironmentProblem(KptraceError):
    exit_status = ExitStatus.ENVIRONMENT


class UnsupportedMode(EnvironmentProblem):
    pass


class NotFound(KptraceError):
    exit_status = ExitStatus.NOT_FOUND
