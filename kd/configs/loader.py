"""Loading a job config: a YAML file, then `--set key.path=value` overrides, validated into the job's config class.

Errors name the config file and the offending field (ConfigError), so a typo fails in milliseconds instead of after
a cluster has spun up. Relative paths in a config are resolved against the current working directory (the job's
working_dir under `ray job submit`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from kd.configs.errors import ConfigError, format_validation_error
from kd.configs.schema import container_of, field_annotation, models_in

T = TypeVar("T", bound=BaseModel)


def read_yaml(path: str | Path, what: str = "config file") -> dict:
    """The mapping a YAML file holds ({} when empty); ConfigError naming the file (and the line of a YAML error)."""
    path, file = Path(path), Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        loaded = yaml.safe_load(file.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(loaded).__name__}")
    return loaded


def parse_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """`a.b=3` → ("a.b", 3); values are parsed as YAML (numbers, booleans, lists, null)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        parsed.append((key.strip(), value))
    return parsed


def _mapping_key_length(node: dict, rest: list[str], value_type: Any) -> int:
    """How many of the path's remaining parts make up one key of a free-form mapping: the longest prefix that is
    already a key, else the parts before the first field of the mapping's value section, else all of them."""
    for n in range(len(rest), 0, -1):
        if ".".join(rest[:n]) in node:
            return n
    fields = {name for model in models_in(value_type) for name in model.model_fields}
    return next((n for n in range(1, len(rest)) if rest[n] in fields), len(rest))


def set_path(data: dict, dotted: str, value: Any, source: str, schema: Any = None) -> None:
    """Set `a.b.0.c` inside nested dicts/lists (integer keys index lists).

    With `schema` (the config class), the keys of free-form mappings may hold dots: `search_space.training.lr` sets
    the key `training.lr` of `search_space` (a dict field), as the YAML spells it, instead of a nested
    `{training: {lr: ...}}` that the mapping refuses as "Extra inputs"; `search_space.training.lr.loguniform` sets
    a field of that entry (see _mapping_key_length). Without a schema every dot descends one level.
    """
    keys = dotted.split(".")
    node: Any = data
    i = 0
    while i < len(keys):
        key = keys[i]
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"{source}: cannot set {dotted!r}: no item {key!r} in a list of {len(node)}")
            container = container_of(schema)
            schema = container[1] if container and container[0] == "list" else None
            i += 1
            if i == len(keys):
                node[int(key)] = value
                return
            node = node[int(key)]
        elif isinstance(node, dict):
            container = container_of(schema) if schema is not None and not models_in(schema) else None
            if container and container[0] == "dict":
                n = _mapping_key_length(node, keys[i:], container[1])
                key, schema = ".".join(keys[i:i + n]), container[1]
            else:
                n, schema = 1, field_annotation(schema, key)
            i += n
            if i == len(keys):
                node[key] = value
                return
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        else:
            raise ConfigError(f"{source}: cannot set {dotted!r}: {'.'.join(keys[:i])!r} is not a section")


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read YAML (optional), apply overrides, validate into `cls`; raise ConfigError naming file and field."""
    data: dict = read_yaml(path) if path is not None else {}
    source = str(Path(path)) if path is not None else "<overrides>"
    for key, value in parse_overrides(overrides):
        set_path(data, key, value, source, schema=cls)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
