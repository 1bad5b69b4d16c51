"""Split a PostgreSQL script into statements, keeping the line each one starts on.

Knows enough of PostgreSQL's lexical rules to find the semicolons that end statements: single-quoted
strings (with ``''`` and, in ``E''`` strings, backslash escapes), double-quoted identifiers,
dollar-quoted bodies (``$$...$$``, ``$tag$...$tag$``), ``--`` line comments and nested ``/* */``
block comments. psql meta-commands (lines starting with a backslash) are reported, not run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True)
class Statement:
    text: str
    #: 1-based line of the file on which the statement's first character is
    line: int

    def line_of(self, position: int) -> int:
        """File line of a 1-based character ``position`` inside this statement."""
        return self.line + self.text.count("\n", 0, max(position - 1, 0))


class MetaCommand(ValueError):
    def __init__(self, line: int, text: str) -> None:
        super().__init__(f"line {line}: psql meta-command {text!r} is not supported; use SQL only")
        self.line = line


def split_sql(script: str) -> list[Statement]:
    """The statements of ``script`` without their terminating semicolons; empty ones dropped."""
    statements: list[Statement] = []
    n = len(script)
    i = 0
    start = 0
    line = 1
    start_line: int | None = None  # line of the first significant character of the statement

    def flush(end: int) -> None:
        nonlocal start_line
        text = script[start:end]
        stripped = text.strip()
        if stripped and start_line is not None:
            # drop leading whitespace/comments: the statement starts at its first character
            lead = len(text) - len(text.lstrip())
            statements.append(Statement(text[lead:].rstrip(), start_line))
        start_line = None

    while i < n:
        c = script[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in " \t\r\f":
            i += 1
            continue
        if c == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            i = n if end < 0 else end
            continue
        if c == "/" and script.startswith("/*", i):
            depth = 0
            while i < n:
                if script.startswith("/*", i):
                    depth += 1
                    i += 2
                elif script.startswith("*/", i):
                    depth -= 1
                    i += 2
                    if depth == 0:
                        break
                else:
                    if script[i] == "\n":
                        line += 1
                    i += 1
            continue
        if c == "\\" and start_line is None:
            end = script.find("\n", i)
            raise MetaCommand(line, script[i : n if end < 0 else end].strip())
        if start_line is None:
            start_line = line
            # statement text starts at the first significant character
            start = i
        if c == ";":
            flush(i)
            i += 1
            start = i
            continue
        if c == "'":
            escapes = i > 0 and script[i - 1] in "eE" and (i < 2 or not script[i - 2].isalnum())
            i += 1
            while i < n:
                ch = script[i]
                if ch == "\n":
                    line += 1
                if escapes and ch == "\\":
                    i += 2
                    continue
                if ch == "'":
                    if script.startswith("''", i):
                        i += 2
                        continue
                    break
                i += 1
            i += 1
            continue
        if c == '"':
            end = script.find('"', i + 1)
            while end >= 0 and script.startswith('""', end):
                end = script.find('"', end + 2)
            end = n if end < 0 else end
            line += script.count("\n", i, end)
            i = end + 1
            continue
        if c == "$":
            m = _DOLLAR_TAG.match(script, i)
            prev = script[i - 1] if i > 0 else ""
            if m and not (prev.isalnum() or prev == "_"):
                tag = m.group(0)
                end = script.find(tag, m.end())
                end = n if end < 0 else end + len(tag)
                line += script.count("\n", i, end)
                i = end
                continue
        i += 1
    if start_line is not None:
        flush(n)
    return statements


def split_cypher(script: str) -> list[Statement]:
    """The statements of a Cypher script, split on ``;`` outside strings, names and comments.

    Cypher strings use ``'`` or ``"`` with backslash escapes; names may be quoted in backticks;
    comments are ``//`` to the end of the line and ``/* ... */``.
    """
    statements: list[Statement] = []
    n = len(script)
    i = 0
    line = 1
    start = 0
    start_line: int | None = None

    def flush(end: int) -> None:
        text = script[start:end].strip()
        if text and start_line is not None:
            statements.append(Statement(text, start_line))

    while i < n:
        c = script[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in " \t\r\f":
            i += 1
            continue
        if script.startswith("//", i):
            end = script.find("\n", i)
            i = n if end < 0 else end
            continue
        if script.startswith("/*", i):
            end = script.find("*/", i + 2)
            end = n if end < 0 else end + 2
            line += script.count("\n", i, end)
            i = end
            continue
        if start_line is None:
            start_line = line
            start = i
        if c == ";":
            flush(i)
            start_line = None
            i += 1
            continue
        if c in "'\"`":
            i += 1
            while i < n and script[i] != c:
                if script[i] == "\\" and c != "`":
                    i += 1
                elif script[i] == "\n":
                    line += 1
                i += 1
            i += 1
            continue
        i += 1
    if start_line is not None:
        flush(n)
    return statements
