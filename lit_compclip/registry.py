"""Plain name -> "module:attr" registries, imported only when used, with options checked against signatures."""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Mapping


def suggest(name: str, options) -> str:
    """' (did you mean X?)' when a near name exists, else ''."""
    close = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve(registry: Mapping[str, str], name: str, kind: str):
    """Import and return the object registered under `name`; unknown names raise ValueError listing the valid ones."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}{suggest(name, registry)}; choose one of {sorted(registry)}")
    module, attr = registry[name].split(":")
    return getattr(importlib.import_module(module), attr)


def check_options(fn, options: Mapping[str, Any], where: str, given: tuple[str, ...] = ()) -> None:
    """Raise ValueError if `options` holds a keyword `fn` does not accept or lacks one it requires.

    `given` names the parameters the caller supplies itself (never user options)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self" and n not in given]
    for key in options:
        if key not in accepted:
            raise ValueError(f"{where}: unknown option {key!r}{suggest(key, accepted)}; valid options: {accepted}")
    for n, p in params.items():
        if n in accepted and p.default is inspect.Parameter.empty and n not in options:
            raise ValueError(f"{where}: missing required option {n!r}")


def build(registry: Mapping[str, str], name: str, kind: str, options: Mapping[str, Any] | None = None, **given):
    """Resolve `name` and call it with `options` (+ `given`), checked first so a typo fails before anything heavy runs."""
    fn = resolve(registry, name, kind)
    options = dict(options or {})
    check_options(fn, options, f"{kind} {name!r}", tuple(given))
    return fn(**given, **options)
