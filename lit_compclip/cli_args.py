"""What every `compclip` command shares on its command line and in the folders it writes: a parser whose errors are
one line, one line of any exception for an error message, output folders checked before any work and removed again
when the work fails."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile

from lit_compclip.errors import first_line  # noqa: F401  (commands import it from here too)


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


class ScriptParser(argparse.ArgumentParser):
    """For the scripts make runs (the benchmarks): no abbreviations, and an error is one line `PROG: error: ...` and
    exit 2, without argparse's usage block."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def missing_folders(path: str) -> list[str]:
    """Folder `path` and those of its parents that do not exist yet, deepest first: what making it would create (a
    dangling link counts as existing, so nothing beyond one is ever removed)."""
    missing, path = [], os.path.abspath(path)
    while not os.path.lexists(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


@contextlib.contextmanager
def new_folder(path: str):
    """Makes folder `path` (and its missing parents) for the block; if the block fails, removes what was made here,
    so a failed command leaves no folder behind. A folder that existed before is never removed."""
    missing = missing_folders(path)
    os.makedirs(path, exist_ok=True)
    try:
        yield
    except BaseException:
        if missing:
            shutil.rmtree(missing[-1], ignore_errors=True)
        raise


def check_writable_folder(path: str, what: str, error: type[ValueError] = UsageError) -> None:
    """A one-line `error` naming `what` unless folder `path` exists or could be made, and files can be written in
    it: a file in its place or above it, or a folder we may not write in, is found before any work. Tries a real
    file (removed at once) rather than os.access, which says yes to root even where writing fails (/proc, a
    read-only mount)."""
    target = os.path.abspath(os.path.expanduser(path))
    missing = missing_folders(target)
    existing = os.path.dirname(missing[-1]) if missing else target
    if not os.path.isdir(existing):
        if existing == target:
            raise error(f"{what} {path!r} is a file, not a folder")
        raise error(f"{what} {path!r} cannot be made: {existing!r} is a file, not a folder")
    try:
        handle, name = tempfile.mkstemp(dir=existing, prefix=".compclip-write-check-")
        os.close(handle)
        os.remove(name)
    except OSError as e:
        raise error(f"{what} {path!r} cannot be written (creating a file in {existing!r}: "
                         f"{e.strerror or type(e).__name__})") from None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record, so a process that runs commands one after another
    (the tests, a notebook) never logs to a stream an earlier command had."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ sets it: ignored
        pass


def log_to_stderr() -> None:
    """The package's INFO lines on stderr, as `LEVEL logger: message`; once, however often a command starts."""
    logger = logging.getLogger("lit_compclip")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
