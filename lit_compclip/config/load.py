"""Loading a config: defaults <- experiment files <- key=value overrides, one line per problem."""

from __future__ import annotations

import os

import yaml
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from lit_compclip.config.checks import check_values
from lit_compclip.config.schema import Config
from lit_compclip.errors import ConfigError
from lit_compclip.registry import suggest


def _keys(node, prefix="") -> list[str]:
    out = []
    for k in node.keys() if isinstance(node, DictConfig) else []:
        full = f"{prefix}{k}"
        out.append(full)
        child = node._get_node(k)
        if isinstance(child, DictConfig) and not child._is_missing() and child._metadata.object_type is not dict:
            out += _keys(child, full + ".")
    return out


def _one_line(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError) and "not in" in msg:
        return ConfigError(f"unknown config key {key!r} in {where}{suggest(key, _keys(OmegaConf.structured(Config)))}")
    if isinstance(e, ValidationError) and "value 'None'" in msg:
        return ConfigError(f"config key {key!r} in {where} has no value; it needs one ({msg.split('for ')[-1]})")
    if isinstance(e, ValidationError):
        return ConfigError(f"bad value for config key {key!r} in {where}: {msg}")
    return ConfigError(f"config key {key!r} in {where}: {msg}")


def normalise_overrides(args: list[str]) -> list[str]:
    """Accept `key=value`, `--key=value` and `--key value` (the form W&B sweeps pass)."""
    out, i = [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("--"):
            a = a[2:]
            if "=" not in a:
                if i + 1 >= len(args):
                    raise ConfigError(f"override --{a} has no value")
                a, i = f"{a}={args[i + 1]}", i + 1
        if "=" not in a:
            raise ConfigError(f"override {a!r} is not of the form key=value")
        out.append(a)
        i += 1
    return out


def split_args(args: list[str]) -> tuple[list[str], list[str]]:
    """Experiment files are the leading *.yaml/*.yml arguments without '=', then any `--experiment PATH` (the form a
    W&B sweep passes, `--experiment=PATH` too); everything else is an override."""
    args, files, rest = list(args), [], []
    while args and args[0].endswith((".yaml", ".yml")) and "=" not in args[0] and not args[0].startswith("--"):
        files.append(args.pop(0))
    while args:
        arg = args.pop(0)
        if arg == "--experiment":
            if not args:
                raise ConfigError("--experiment needs a path to an experiment YAML file")
            files.append(args.pop(0))
        elif arg.startswith("--experiment="):
            files.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return files, rest


# Maps whose meaning depends on a name inside them: a new tower or a new probe list replaces, never merges.
def _clear_replaced(cfg: DictConfig, new: DictConfig, key: str | None = None) -> None:
    """Empty the maps that `new` replaces whole: any of them when `new` is an experiment file (key None), else only the
    map an override names whole (`key`)."""
    text = OmegaConf.select(new, "model.text", default=None)
    if isinstance(text, DictConfig) and text.get("tower", cfg.model.text.get("tower")) != cfg.model.text.get("tower"):
        cfg.model.text = {}
    # A caption mixture is whole (alt_text.yaml's {alt_text: 1.0} must not keep the default recaption beside it); a
    # dotted override of one field (data.caption_fields.alt_text=0.2) still adds to it.
    for path in ("probes.suites", "data.caption_fields", "data.later_caption_fields", "data.sentence_sample"):
        if key in (None, path) and isinstance(OmegaConf.select(new, path, default=None), DictConfig):
            OmegaConf.update(cfg, path, {}, merge=False)


def _read(path: str, chain: tuple[str, ...] = ()) -> list[tuple[str, DictConfig]]:
    """An experiment file and the files it `extends` (a path relative to it), base first, as (path, config)."""
    if not os.path.isfile(path):
        raise ConfigError(f"experiment file not found: {path}")
    if os.path.realpath(path) in chain:
        raise ConfigError(f"{path}: `extends` goes round in a circle ({' -> '.join(chain)})")
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:
        raise ConfigError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    base = loaded.pop("extends", None)
    if base is None:
        return [(path, loaded)]
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: extends must name one experiment file, relative to this one")
    parent = os.path.normpath(os.path.join(os.path.dirname(path), base))
    return _read(parent, chain + (os.path.realpath(path),)) + [(path, loaded)]


def _plugin_sections(cfg: DictConfig) -> None:
    """Each plug-in section the config sets, on its plug-in's schema: its defaults filled in, unknown keys refused."""
    from lit_compclip.config.plugins import active

    for name, plugin in active(cfg):
        schema = OmegaConf.structured(plugin.SCHEMA)
        if not isinstance(cfg[name], DictConfig):
            raise ConfigError(f"config key {name!r} must be a mapping of its keys, or null")
        try:
            merged = OmegaConf.merge(schema, cfg[name])
        except OmegaConfBaseException as e:
            key = f"{name}.{getattr(e, 'full_key', None) or '?'}"
            if isinstance(e, ConfigKeyError):
                raise ConfigError(f"unknown config key {key!r}"
                                  f"{suggest(key, [f'{name}.{k}' for k in schema.keys()])}") from None
            raise ConfigError(f"bad value for config key {key!r}: {str(e).splitlines()[0]}") from None
        with open_dict(cfg):
            cfg[name] = merged


def load_config(files: list[str] = (), overrides: list[str] = (), data: bool = True) -> DictConfig:
    """Defaults <- each experiment YAML in order (each after the files it extends) <- key=value overrides; checked,
    one-line ConfigError otherwise. `data=False`: for what reads no training data (`compclip probe`), which may leave
    data.train_shards unset."""
    cfg = OmegaConf.structured(Config)
    # merged in place: OmegaConf.merge would copy the whole config for every file and every override (most of the
    # time a command with a few dozen overrides spends here); a failed merge raises, so cfg is never used half-merged
    for path, loaded in [step for path in files for step in _read(path)]:
        try:
            _clear_replaced(cfg, loaded)
            cfg.merge_with(loaded)
        except OmegaConfBaseException as e:
            raise _one_line(e, path) from None
    dotlist = normalise_overrides(list(overrides))
    for item in dotlist:
        try:
            new = OmegaConf.from_dotlist([item])
        except yaml.YAMLError as e:  # the value is parsed as YAML, outside OmegaConf's own errors
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"override {item!r}: its value is not valid YAML ({problem}); quote a string, and write "
                              f"a mapping as {{key: value, ...}} with a space after each ':'") from None
        try:
            _clear_replaced(cfg, new, item.split("=", 1)[0].strip())
            cfg.merge_with(new)
        except OmegaConfBaseException as e:
            raise _one_line(e, f"override {item!r}") from None
    _plugin_sections(cfg)
    if not data and OmegaConf.is_missing(cfg.data, "train_shards"):
        cfg.data.train_shards = ""  # read by nothing that asked for data=False
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"config key {missing[0]!r} has no value; set it in an experiment file or as an override")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise _one_line(e, "interpolation") from None
    check_values(cfg)
    return cfg
