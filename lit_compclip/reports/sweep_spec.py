"""A W&B sweep spec as `compclip sweep` reads it: its keys, method, parameters and command checked (one-line errors
naming the key), and its runs' parameters expanded: every grid point, or random draws."""

from __future__ import annotations

import itertools
import math
import os
import random
from typing import Any

from omegaconf import OmegaConf

from lit_compclip.cli_args import first_line
from lit_compclip.config import ConfigError
from lit_compclip.registry import suggest

SPEC_KEYS = ("name", "description", "program", "method", "metric", "parameters", "command", "early_terminate",
             "run_cap", "project", "entity")
METHODS = ("grid", "random", "bayes")
DISTRIBUTIONS = ("uniform", "log_uniform_values", "int_uniform", "q_uniform", "q_log_uniform_values", "categorical")
# The W&B macros that hand a run's parameters to its command (`${args}`: `--key=value` each, as compclip train takes).
ARGS_MACROS = ("${args}", "${args_no_hyphens}")


def load_spec(path: str) -> dict[str, Any]:
    """The spec as a plain dict, checked: known keys, a method, parameters with `value`, `values` or a distribution,
    and a program and command that `compclip train` is."""
    if os.path.isdir(path):
        raise ConfigError(f"sweep spec {path} is a folder, not a YAML file")
    if not os.path.isfile(path):
        raise ConfigError(f"sweep spec not found: {path}")
    try:
        spec = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as e:
        raise ConfigError(f"cannot parse {path}: {first_line(e)}") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} must hold a mapping (method, parameters, ...)")
    if not spec:
        raise ConfigError(f"{path} is empty: a sweep spec needs a method and parameters")
    for key in spec:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{path}: unknown sweep key {key!r}{suggest(str(key), SPEC_KEYS)}; "
                              f"valid keys: {list(SPEC_KEYS)}")
    if spec.get("method") not in METHODS:
        raise ConfigError(f"{path}: method {spec.get('method')!r} is not one of {list(METHODS)}")
    if not isinstance(spec.get("name", ""), str):
        raise ConfigError(f"{path}: 'name' must be a string (it names the sweep's folder), got {spec['name']!r}")
    check_command(spec, path)
    params = spec.get("parameters")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: 'parameters' must map config keys to {{value: ...}} or {{values: [...]}}")
    for name, p in params.items():
        where = f"{path}: parameter {name!r}"
        if not isinstance(p, dict) or not ({"value", "values", "distribution", "min"} & set(p)):
            raise ConfigError(f"{where} needs 'value', 'values' or a distribution with min/max")
        if "values" in p and (not isinstance(p["values"], list) or not p["values"]):
            raise ConfigError(f"{where}: 'values' must be a non-empty list")
        if "distribution" in p and p["distribution"] not in DISTRIBUTIONS:
            raise ConfigError(f"{where}: distribution {p['distribution']!r} is not one of {list(DISTRIBUTIONS)}")
        if "min" in p and "max" not in p:
            raise ConfigError(f"{where}: 'min' without 'max'")
        if spec["method"] == "grid" and "values" not in p and "value" not in p:
            raise ConfigError(f"{where}: a grid needs 'value' or 'values', not a distribution")
        if "value" not in p and "values" not in p:
            check_range(p, where)
    return spec


def check_command(spec: dict[str, Any], path: str) -> None:
    """Every run is `python -m lit_compclip.cli train ${args}`: a spec whose program or command says otherwise
    (another script, no `train`, no `${args}` to pass the parameters) would run here as something it does not name."""
    program = spec.get("program")
    if program is not None and not (isinstance(program, str) and program.endswith("lit_compclip/cli.py")):
        raise ConfigError(f"{path}: program {program!r} is not lit_compclip/cli.py, the only program `compclip sweep` "
                          f"runs (as `compclip train`)")
    command = spec.get("command")
    if command is None:
        return
    runs_cli = isinstance(command, list) and all(isinstance(w, str) for w in command) and "train" in command and \
        any(w in command for w in ("lit_compclip.cli", "compclip", "${program}"))
    if not runs_cli or not any(m in command for m in ARGS_MACROS):
        raise ConfigError(f"{path}: command {command!r} does not run `lit_compclip.cli train ${{args}}`, the only "
                          f"command `compclip sweep` runs (see experiments/sweeps/)")


def check_range(p: dict[str, Any], where: str) -> None:
    """A distribution's min, max and q: numbers that can be drawn from."""
    if p.get("distribution") == "categorical":
        raise ConfigError(f"{where}: a categorical distribution needs 'values'")
    if "min" not in p or "max" not in p:
        raise ConfigError(f"{where}: distribution {p['distribution']!r} needs 'min' and 'max'")
    lo, hi = p["min"], p["max"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (lo, hi)):
        raise ConfigError(f"{where}: 'min' and 'max' must be numbers, got {lo!r} and {hi!r}")
    if lo > hi:
        raise ConfigError(f"{where}: 'min' {lo} is above 'max' {hi}")
    dist = p.get("distribution")
    if dist == "int_uniform" and not (isinstance(lo, int) and isinstance(hi, int)):
        raise ConfigError(f"{where}: int_uniform needs whole-number 'min' and 'max', got {lo!r} and {hi!r}")
    if dist in ("log_uniform_values", "q_log_uniform_values") and lo <= 0:
        raise ConfigError(f"{where}: {dist} needs 'min' above 0, got {lo!r}")
    q = p.get("q", 1)
    if not (isinstance(q, (int, float)) and not isinstance(q, bool) and q > 0 and math.isfinite(q)):
        raise ConfigError(f"{where}: 'q' must be a number above 0, got {q!r}")


def _draw(p: dict[str, Any], rng: random.Random) -> Any:
    if "value" in p:
        return p["value"]
    if "values" in p:
        return rng.choice(p["values"])
    lo, hi, dist = p["min"], p["max"], p.get("distribution")
    if dist is None:  # W&B infers the distribution from the type of min/max
        dist = "int_uniform" if isinstance(lo, int) and isinstance(hi, int) else "uniform"
    if dist == "int_uniform":
        return rng.randint(lo, hi)
    if dist in ("log_uniform_values", "q_log_uniform_values"):
        x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    else:
        x = rng.uniform(lo, hi)
    if dist.startswith("q_"):
        q = p.get("q", 1)
        x = round(x / q) * q
    return x


def expand(spec: dict[str, Any], count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The runs' parameters: every grid point in spec order (the first `count`), or `count` random draws (random /
    bayes locally)."""
    if count is not None and count < 1:
        raise ConfigError(f"--count {count}: must be at least 1")
    params = spec["parameters"]
    if spec["method"] == "grid":
        names = list(params)
        choices = [p["values"] if "values" in p else [p["value"]] for p in params.values()]
        runs = [dict(zip(names, combo)) for combo in itertools.product(*choices)]
        return runs[:count]
    if count is None:
        raise ConfigError(f"method {spec['method']!r} draws runs at random: give --count N")
    rng = random.Random(seed)
    return [{name: _draw(p, rng) for name, p in params.items()} for _ in range(count)]
