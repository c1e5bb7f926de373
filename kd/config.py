"""Typed job configs: YAML files + `--set key.path=value` overrides, validated before any Ray work starts.

Errors name the config file and the offending field (`ConfigError`), so a typo fails in milliseconds instead of
after a cluster has spun up. Relative paths in a config are resolved against the current working directory (the
job's working_dir under `ray job submit`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and field."""


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors (a misspelt field must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _set_path(data: dict, dotted: str, value: Any, source: str) -> None:
    """Set `a.b.0.c` inside nested dicts/lists (integer keys index lists)."""
    keys = dotted.split(".")
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"{source}: cannot set {dotted!r}: no item {key!r} in a list of {len(node)}")
            if last:
                node[int(key)] = value
                return
            node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
                return
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        else:
            raise ConfigError(f"{source}: cannot set {dotted!r}: {'.'.join(keys[:depth])!r} is not a section")


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


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"  field {field}: {e['msg']}")
    return "\n".join(lines)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read YAML (optional), apply overrides, validate into `cls`; raise ConfigError naming file and field."""
    data: dict = {}
    source = "<overrides>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of fields, got {type(loaded).__name__}")
        data = loaded
    for key, value in parse_overrides(overrides):
        _set_path(data, key, value, source)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def to_flat_dict(model: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a config into dotted keys (MLflow params)."""
    out: dict[str, Any] = {}
    for key, value in model.model_dump(mode="json").items():
        _flatten(out, f"{prefix}{key}", value)
    return out


def _flatten(out: dict, key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(out, f"{key}.{k}", v)
    else:
        out[key] = value


# ------------------------------------------------------------------------------------------------- shared sections
from typing import Literal  # noqa: E402

from pydantic import Field, field_validator, model_validator  # noqa: E402


class MLflowConfig(Strict):
    """Where runs are tracked. tracking_uri None → $MLFLOW_TRACKING_URI, else MLflow's default local store."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "kd"
    run_name: str | None = None


class TeacherSpec(Strict):
    """One teacher: a cross-encoder (kd folder or HF sequence-classification model) or a bi-encoder."""

    name: str = Field(min_length=1)
    path: str = Field(min_length=1, description="hub name or local folder")
    kind: Literal["cross", "bi"] = "cross"
    max_length: int = Field(512, ge=8)

    @field_validator("path")
    @classmethod
    def _local_path_exists(cls, v: str) -> str:
        if v.startswith((".", "/", "~")) and not Path(v).expanduser().exists():
            raise ValueError(f"teacher folder not found: {v}")
        return v


class TextSource(Strict):
    """Id → text: queries (queries.jsonl or id<TAB>text TSV) and passages (corpus.jsonl or collection TSV)."""

    queries: str
    passages: str
    use_title: bool = True

    @field_validator("queries", "passages")
    @classmethod
    def _exists(cls, v: str) -> str:
        if not Path(v).expanduser().is_file():
            raise ValueError(f"file not found: {v}")
        return v


class ScoreTeachersConfig(Strict):
    """jobs/score_teachers.py: a teacher ensemble scores id triples on Ray Data."""

    input: str = Field(description="id triples file: qid<TAB>pos_pid<TAB>neg_pid")
    text: TextSource
    teachers: list[TeacherSpec] = Field(min_length=1)
    output_dir: str
    batch_size: int = Field(32, ge=1, description="pairs per forward pass")
    window: int = Field(1024, ge=1, description="rows per Ray Data batch; sorted by length inside")
    shard_size: int = Field(100_000, ge=1, description="rows per output shard (the unit of resumption)")
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="1 on GPU clusters (bf16 there); 0 = CPU, fp32")
    strict: bool = True
    show_progress: bool = True
    mlflow: MLflowConfig = MLflowConfig(experiment="kd-score-teachers")

    @field_validator("input")
    @classmethod
    def _input_exists(cls, v: str) -> str:
        if not Path(v).expanduser().is_file():
            raise ValueError(f"file not found: {v}")
        return v

    @model_validator(mode="after")
    def _unique_teacher_names(self):
        names = [t.name for t in self.teachers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"teachers: names must be unique, repeated: {dupes}")
        return self
