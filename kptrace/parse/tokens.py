"""Split an iptables-restore line into words the way iptables-restore does.

Words are separated by blanks; double quotes group words, and inside quotes a
backslash escapes the next character. Each word keeps its column for error carets.
"""

from __future__ import annotations

from typing import NamedTuple


class Token(NamedTuple):
    text: str
    column: int
    quoted: bool


class UnbalancedQuote(ValueError):
    def __init__(self, column: int) -> None:
        super().__init__("unbalanced quote")
        self.column = column


def tokenize(line: str) -> list[Token]:
    if '"' not in line and "\\" not in line:  # the common case, at C speed
        tokens: list[Token] = []
        col = 0
        for word in line.split():
            col = line.index(word, col)
            tokens.append(Token(word, col, False))
            col += len(word)
        return tokens
    return _tokenize_quoted(line)


def _tokenize_quoted(line: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t\r\n":
            i += 1
        if i >= n:
            break
        start = i
        buf: list[str] = []
        quoted = False
        while i < n and line[i] not in " \t\r\n":
            ch = line[i]
            if ch == '"':
                quoted = True
                open_at = i
                i += 1
                while True:
                    if i >= n:
                        raise UnbalancedQuote(open_at)
                    ch = line[i]
                    if ch == "\\" and i + 1 < n:
                        buf.append(line[i + 1])
                        i += 2
                        continue
                    if ch == '"':
                        i += 1
                        break
                    buf.append(ch)
                    i += 1
            else:
                buf.append(ch)
                i += 1
        tokens.append(Token("".join(buf), start, quoted))
    return tokens
