"""The one error type a user's input raises (printed as one line, exit status 2) and how a library's error becomes
one; shared by the library, the trainer and every command."""

from __future__ import annotations

import contextlib
import re
from typing import Any


class ConfigError(ValueError):
    """A user-caused configuration problem, reported as one line (the CLI exits with status 2)."""


# What libraries (timm, transformers, sentence-transformers, Lightning) raise for a value they cannot build from.
BUILD_ERRORS = (ValueError, OSError, RuntimeError, KeyError, ImportError)


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty message line, at most `limit` characters (its type's name when it has none:
    EOFError from a zero-byte file carries an empty message)."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)  # KeyError's str() adds quotes
    return next((line.strip()[:limit] for line in text.splitlines() if line.strip()), type(e).__name__)


def _named_option(msg: str, options: dict[str, Any]) -> str | None:
    """Which of `options` (name -> value) a library's message is about: the first one it names (`devices`), else the
    one whose text value it holds (DeepSpeedStrategy for strategy=deepspeed)."""
    named = [(m.start(), k) for k in options for m in [re.search(rf"\b{k}\b", msg, re.IGNORECASE)] if m]
    if named:
        return min(named)[1]
    return next((k for k, v in options.items()
                 if isinstance(v, str) and len(v) >= 3 and v != "auto" and v.lower() in msg.lower()), None)


@contextlib.contextmanager
def reported_as(key: str, errors: tuple[type[BaseException], ...] = BUILD_ERRORS, options: dict | None = None):
    """Turn `errors` raised while something is built from config key `key` (model, trainer, ...) into one ConfigError
    line: the library's first message line, after the key (`key.option` for the one of `options` it is about) unless
    it already names a key under `key`. Other exceptions (bugs) pass as they are."""
    try:
        yield
    except ConfigError:
        raise
    except errors as e:
        msg = first_line(e)
        if re.search(rf"(?<![\w.]){re.escape(key)}[.=:]", msg):  # e.g. "model.text.cache_dir: ..."
            raise ConfigError(msg) from e
        option = _named_option(msg, options or {})
        name = f"{key}.{option}" if option else key
        raise ConfigError(f"config key {name!r}: {msg}") from e
