"""What every `compclip` command shares on its command line: a parser whose errors are one line, and one line of any
exception for an error message."""

from __future__ import annotations

import argparse


class UsageError(ValueError):
    """A bad command line: printed by the command as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with no abbreviations (`--api-key` must never be taken for `--api-key-env`) and errors raised as
    UsageError instead of a usage block on stderr and SystemExit; only --help still exits (status 0)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(message)


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message, or its type's name when it has none (EOFError from a
    zero-byte file carries an empty message)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()[:limit]
    return type(err).__name__
