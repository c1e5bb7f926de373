"""Typed job configs: YAML files + `--set key.path=value` overrides, validated before any Ray work starts.

Errors name the config file and the offending field (`ConfigError`), so a typo fails in milliseconds instead of
after a cluster has spun up. Relative paths in a config are resolved against the current working directory (the
job's working_dir under `ray job submit`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence, TypeVar, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

T = TypeVar("T", bound=BaseModel)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and field."""


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors (a misspelt field must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _alternatives(annotation: Any) -> tuple:
    """The types an annotation allows: the members of a Union / Optional, Annotated[...] unwrapped."""
    if typing.get_origin(annotation) is Annotated:
        return _alternatives(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for arg in typing.get_args(annotation) for a in _alternatives(arg))
    return (annotation,)


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The config sections (pydantic models) an annotation allows."""
    return [a for a in _alternatives(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]


def container_of(annotation: Any) -> tuple[str, Any] | None:
    """("dict", value type) for a mapping field, ("list", item type) for a list field, else None."""
    for a in _alternatives(annotation):
        origin, args = typing.get_origin(a) or a, typing.get_args(a)
        if origin is dict:
            return "dict", args[1] if len(args) == 2 else Any
        if origin is list:
            return "list", args[0] if args else Any
    return None


def _field_annotation(schema: Any, key: str) -> Any:
    """The annotation of field `key` (its name or YAML alias) of the section(s) `schema` allows, else None."""
    for model in models_in(schema):
        for name, f in model.model_fields.items():
            if key in (name, f.alias):
                return f.annotation
    return None


def _mapping_key_length(node: dict, rest: list[str], value_type: Any) -> int:
    """How many of the path's remaining parts make up one key of a free-form mapping: the longest prefix that is
    already a key, else the parts before the first field of the mapping's value section, else all of them."""
    for n in range(len(rest), 0, -1):
        if ".".join(rest[:n]) in node:
            return n
    fields = {name for model in models_in(value_type) for name in model.model_fields}
    return next((n for n in range(1, len(rest)) if rest[n] in fields), len(rest))


def _set_path(data: dict, dotted: str, value: Any, source: str, schema: Any = None) -> None:
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
                n, schema = 1, _field_annotation(schema, key)
            i += n
            if i == len(keys):
                node[key] = value
                return
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
        else:
            raise ConfigError(f"{source}: cannot set {dotted!r}: {'.'.join(keys[:i])!r} is not a section")


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
        msg = e["msg"].removeprefix("Value error, ")
        if e["loc"]:
            lines.append(f"  field {'.'.join(str(p) for p in e['loc'])}: {msg}")
        else:  # cross-field checks already name their fields, one per line
            lines.extend(f"  {line}" for line in msg.splitlines())
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
        _set_path(data, key, value, source, schema=cls)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def fingerprint(obj: Any) -> str:
    """sha256 of `obj`'s canonical JSON (sorted keys; non-JSON values as str), 16 hex digits: what a resumed run,
    sweep or evaluation result compares with what produced it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


from pydantic import Field, field_validator, model_validator  # noqa: E402

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
NAME_MAX_LENGTH = 100


def check_name(value: str) -> str:
    """A name that goes into MLflow filter strings, folder names or model URIs (run, sweep, pipeline, registered
    model, evaluation model and task names): 1-100 characters from [A-Za-z0-9._-], starting with a letter or digit.

    That set needs no quoting in a filter literal, a `models:/name@alias` URI or a file name on any OS, cannot climb
    out of a folder (`..`, `/`) or hide in one (`.x`), and 100 characters leave room for what jobs append
    (`<pipeline>-student-<name>`, `<sweep>-<trial id>`) within a file name's 255 bytes. Raises ValueError.
    """
    if not value:
        raise ValueError("empty name: give 1-100 letters, digits, '.', '_' or '-'")
    if not NAME_RE.fullmatch(value) or len(value) > NAME_MAX_LENGTH:
        raise ValueError(f"{value!r}: a name is 1-{NAME_MAX_LENGTH} letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit (it is used in MLflow searches, folder names and model URIs)")
    return value


SafeName = Annotated[str, AfterValidator(check_name)]


def check_metric(value: str) -> str:
    """A metric kd.metrics computes (its parser decides: `ndcg@ten` is refused), in its canonical spelling
    (`NDCG@10` → `ndcg@10`), which is the key the computed results carry."""
    from kd.metrics import parse_metric

    return parse_metric(value).name


def _hub_offline() -> bool:
    """huggingface_hub's reading of $HF_HUB_OFFLINE (or transformers' $TRANSFORMERS_OFFLINE), read now rather than
    at its import, so a job's environment decides."""
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def model_source_error(value: str) -> str | None:
    """None when a model argument (a local folder or a hub name) can be loaded, else what is wrong.

    The resolution is kd.models.backbone.resolve's (kd.catalog.local_model_folder: an existing folder, or the
    all-MiniLM-L6-v2 hub name mapped to the packaged copy); any other name must be a well-formed hub id
    (huggingface_hub's own check: `name` or `org/name`, so a relative path of a folder that does not exist yet,
    `outputs/runs/x/final_model`, is refused rather than sent to the hub). Offline ($HF_HUB_OFFLINE set) the id
    must also be in the hub cache, as that is all from_pretrained can read there. Online, a well-formed id that is
    not cached is accepted: checking that it exists would need the network at validation time, and the download
    itself reports a missing repository by name. A path-looking value (./, /, ~) is never a hub id.
    """
    from kd.catalog import local_model_folder

    if local_model_folder(value) is not None:
        return None
    if value.startswith((".", "/", "~")):
        return f"model folder not found: {value}"
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(value)
    except HFValidationError:
        return f"model folder not found: {value} (nor is it a hub model id: name or org/name)"
    if _hub_offline() and not isinstance(try_to_load_from_cache(value, "config.json"), str):
        return (f"{value!r} is not a local folder, and HF_HUB_OFFLINE is set but the hub cache has no copy of it "
                "(download it once online, or give a local folder)")
    return None


class MLflowConfig(Strict):
    """Where runs are tracked. tracking_uri None → $MLFLOW_TRACKING_URI, else MLflow's default local store."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "kd"
    run_name: str | None = None
    # where a *new* experiment stores artifacts; None: the server's default, or <db folder>/mlartifacts for a
    # sqlite:/// URI (MLflow's own default there is ./mlruns relative to whichever process creates the experiment)
    artifact_location: str | None = None


class TeacherSpec(Strict):
    """One teacher member: a cross-encoder (kd folder or HF sequence-classification model), a bi-encoder (kd
    bert_dot folder or HF / sentence-transformers encoder), or BM25 over a corpus (kd/teachers/bm25.py). Checked by
    kd.teachers.check_member: a member that cannot score fails here, naming it."""

    name: SafeName = Field(description="a column in members.parquet, a tag in MLflow")
    kind: Literal["cross", "bi", "bm25"] = "cross"
    path: str | None = Field(None, min_length=1, description="cross/bi: hub name or local folder; bm25: none")
    max_length: int = Field(512, ge=8, description="cross only")
    weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="its weight in the combination")
    corpus: str | None = Field(None, description="bm25 only: passages file (corpus.jsonl[.gz] or id<TAB>text) "
                                                 "whose statistics (N, df, avgdl) define its scores")
    use_title: bool = Field(True, description="bm25 only: index title + text")
    k1: float = Field(1.5, ge=0, allow_inf_nan=False, description="bm25 only")
    b: float = Field(0.75, ge=0, le=1, description="bm25 only")

    @field_validator("path")
    @classmethod
    def _local_path_exists(cls, v: str | None) -> str | None:
        if v is not None and v.startswith((".", "/", "~")) and not Path(v).expanduser().exists():
            raise ValueError(f"teacher folder not found: {v}")
        return v

    @model_validator(mode="after")
    def _can_score(self):
        from kd.teachers.checks import check_member

        # model_files=False: a pipeline validates its scoring stage against folders earlier stages will fill
        check_member(self.model_dump(), model_files=False)
        return self


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
    """jobs/score_teachers.py: a teacher ensemble scores id triples on Ray Data; `combine` makes one teacher score
    of its members' (kd/teachers/combine.py: mean = the paper's T2, zscore = each member standardised over the
    whole scored set; weights are per member)."""

    input: str = Field(description="id triples file: qid<TAB>pos_pid<TAB>neg_pid")
    text: TextSource
    teachers: list[TeacherSpec] = Field(min_length=1)
    combine: Literal["mean", "zscore"] = "zscore"
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
            raise ValueError(f"field teachers: names must be unique, repeated: {dupes}")
        return self


# ---------------------------------------------------------------------------------------------------- distillation
MODES = ("score_file", "in_loop", "embedding", "supervised")
# which losses each mode can train with (kinds come from the loss registry)
MODE_LOSS_KINDS = {
    "score_file": ("pairwise", "pointwise", "listwise"),
    "in_loop": ("logits", "tinybert"),
    "embedding": ("embedding",),
    "supervised": ("pairwise",),
}


class InitConfig(Strict):
    """How the student starts. `backbone`: student.backbone's pretrained weights (optionally truncated to
    `num_layers`); `teacher_layers`: a copy of the teacher with a subset of its layers (scheme + num_layers, or an
    explicit index list); `other_model`: another encoder (student.backbone) + projection to the teacher's width."""

    strategy: Literal["backbone", "teacher_layers", "other_model"] = "backbone"
    layers: str | list[int] | None = None  # top-bottom | uniform | bottom | top | middle | [i, j, ...]
    num_layers: int | None = Field(None, ge=1)


class StudentConfig(Strict):
    architecture: str
    backbone: str = "sentence-transformers/all-MiniLM-L6-v2"
    options: dict[str, Any] = {}
    init: InitConfig = InitConfig()


class LossConfig(Strict):
    name: str
    options: dict[str, Any] = {}


class TeacherConfig(Strict):
    """score_file: `scores` (published teacher-file format); in_loop / embedding: `model` (a kd folder or HF model)."""

    scores: str | None = None
    model: str | None = None
    kind: Literal["cross", "bi"] = "cross"


class TrainDataConfig(Strict):
    """Training text. score_file reads ids from teacher.scores; supervised / in_loop read id triples (`triples`);
    embedding reads query files (`query_files`: queries.jsonl or id<TAB>text TSV, all their queries)."""

    queries: str | None = None
    passages: str | None = None
    triples: str | None = None
    query_files: list[str] = []
    exclude_query_ids_from: str | None = None  # e.g. a test qrels file: those queries are never trained on
    use_title: bool = True
    max_examples: int | None = Field(None, ge=1)
    strict: bool = True


class ValidationConfig(Strict):
    """Re-rank the top_k of a dev run every `every_steps` optimizer steps; metric from kd.metrics."""

    run: str | None = None
    qrels: str | None = None
    queries: str | None = None
    passages: str | None = None
    top_k: int = Field(100, ge=1)
    max_queries: int | None = Field(None, ge=1)
    every_steps: int = Field(500, ge=1)
    metric: Annotated[str, AfterValidator(check_metric)] = "ndcg@10"
    relevance_level: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)


class FaultInjection(Strict):
    """Testing aid: worker `rank` exits hard at optimizer step `at_step`, once per run (marker file)."""

    at_step: int = Field(ge=1)
    rank: int = Field(0, ge=0)


class TrainingConfig(Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="also the worker's torch thread count on CPU")
    micro_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; caps epochs")
    lr: float = Field(7e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    gradient_clipping: float = Field(1.0, ge=0)
    zero_stage: Literal[0, 1, 2, "auto"] = "auto"  # auto: 2 on GPU, 0 on CPU (ZeRO only costs time in host memory)
    bf16: bool = True  # only on GPU; CPU always trains in fp32
    seed: int = 42
    checkpoint_every: int = Field(100, ge=1)
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    log_every: int = Field(10, ge=1)
    fault_injection: FaultInjection | None = None
    deepspeed_config: str | None = Field(
        None, description="DeepSpeed JSON (e.g. cluster/deepspeed/zero2.json) merged over the generated config; batch "
                          "sizes, optimizer, scheduler and precision always come from this section")

    @field_validator("deepspeed_config")
    @classmethod
    def _deepspeed_file(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import json

        path = Path(v).expanduser()
        if not path.is_file():
            raise ValueError(f"file not found: {v}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{v}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{v}: a DeepSpeed config is a JSON object")
        stage = (data.get("zero_optimization") or {}).get("stage", 0)
        if stage not in (0, 1, 2):
            raise ValueError(f"{v}: ZeRO stage {stage!r} is not supported by the distill loop (0, 1 or 2: it saves and "
                             "validates the student from full, unpartitioned parameters)")
        return v


class RegistryConfig(Strict):
    """Register the best student as `name` and point `alias` at the new version (`models:/name@alias`)."""

    name: SafeName | None = None  # None: log the model but do not register it
    alias: str = "current"
    dataset_tag: str | None = None

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        import re

        if v.lower() == "latest" or re.fullmatch(r"v\d+", v.lower()):
            raise ValueError(f"alias {v!r} is reserved by MLflow ('models:/name/latest' already means the newest "
                             "version); pick another, e.g. 'current' or 'champion'")
        return v


class RunSection(Strict):
    name: SafeName  # deterministic: rerunning with the same name resumes (Ray Train folder, MLflow tag kd.run_name)
    storage_path: str = "./outputs/runs"


class DistillConfig(Strict):
    mode: Literal["score_file", "in_loop", "embedding", "supervised"]
    student: StudentConfig
    loss: LossConfig
    teacher: TeacherConfig = TeacherConfig()
    data: TrainDataConfig = TrainDataConfig()
    validation: ValidationConfig = ValidationConfig()
    training: TrainingConfig = TrainingConfig()
    registry: RegistryConfig = RegistryConfig()
    mlflow: MLflowConfig = MLflowConfig(experiment="kd-distill")
    run: RunSection

    @model_validator(mode="after")
    def _check(self):
        from kd.catalog import ARCHITECTURES, LAYER_SCHEMES, LOSS_KINDS, saved_num_layers

        errors: list[tuple[str, str]] = []
        if self.student.architecture not in ARCHITECTURES:
            errors.append(("student.architecture",
                           f"unknown architecture {self.student.architecture!r}; known: {sorted(ARCHITECTURES)}"))
        errors += self._option_errors()

        def fits(name: str) -> bool:
            # score_file also takes a teacher-free pairwise loss: the no-KD twin (RankNet on the labels) of a KD
            # student, trained on the identical examples, order and steps of the same teacher file
            kind, needs_teacher = LOSS_KINDS[name]
            if self.mode == "score_file" and kind == "pairwise" and not needs_teacher:
                return True
            return kind in MODE_LOSS_KINDS[self.mode] and needs_teacher == (self.mode != "supervised")

        if self.loss.name not in LOSS_KINDS:
            errors.append(("loss.name", f"unknown loss {self.loss.name!r}; known: {sorted(LOSS_KINDS)}"))
        elif not fits(self.loss.name):
            ok = sorted(n for n in LOSS_KINDS if fits(n))
            errors.append(("loss.name", f"loss {self.loss.name!r} does not fit mode {self.mode!r}; use one of {ok}"))
        needs_file = {
            "score_file": [("teacher.scores", self.teacher.scores), ("data.queries", self.data.queries),
                           ("data.passages", self.data.passages)],
            "supervised": [("data.triples", self.data.triples), ("data.queries", self.data.queries),
                           ("data.passages", self.data.passages)],
            "in_loop": [("data.triples", self.data.triples), ("data.queries", self.data.queries),
                        ("data.passages", self.data.passages)],
            "embedding": [],
        }[self.mode]
        for field_name, value in needs_file:
            if value is None:
                errors.append((field_name, f"required in mode {self.mode!r}"))
            elif not Path(value).expanduser().is_file():
                errors.append((field_name, f"file not found: {value}"))
        if self.mode == "embedding":
            if not self.data.query_files:
                errors.append(("data.query_files", "embedding mode needs at least one query file"))
            for i, f in enumerate(self.data.query_files):
                if not Path(f).expanduser().is_file():
                    errors.append((f"data.query_files.{i}", f"file not found: {f}"))
            if self.student.architecture != "bert_dot":
                errors.append(("student.architecture", "embedding mode trains a bert_dot query encoder"))
        if self.mode in ("in_loop", "embedding") and not self.teacher.model:
            errors.append(("teacher.model", f"mode {self.mode!r} runs a teacher model inside the step"))
        if self.mode == "in_loop" and self.student.architecture != "tinybert_cat":
            errors.append(("student.architecture", "in_loop KD trains a tinybert_cat student (2-class logits)"))
        for field_name, value in (("student.backbone", self.student.backbone), ("teacher.model", self.teacher.model)):
            problem = model_source_error(value) if value else None
            if problem:
                errors.append((field_name, problem))
        if self.data.exclude_query_ids_from and not Path(self.data.exclude_query_ids_from).is_file():
            errors.append(("data.exclude_query_ids_from", f"file not found: {self.data.exclude_query_ids_from}"))
        init = self.student.init
        if init.strategy == "teacher_layers":
            if not self.teacher.model:
                errors.append(("student.init.strategy", "teacher_layers init needs teacher.model"))
            if init.layers is None:
                errors.append(("student.init.layers", "give a scheme (top-bottom, uniform, ...) or an index list"))
            elif isinstance(init.layers, str) and init.num_layers is None:
                errors.append(("student.init.num_layers", f"scheme {init.layers!r} needs num_layers"))
        if isinstance(init.layers, str) and init.layers not in LAYER_SCHEMES:
            errors.append(("student.init.layers", f"unknown scheme {init.layers!r}; known: {list(LAYER_SCHEMES)}"))
        layer_source = self.teacher.model if init.strategy == "teacher_layers" else self.student.backbone
        if layer_source and (isinstance(init.layers, list) or init.num_layers):
            total = saved_num_layers(layer_source)
            if total is not None:
                if isinstance(init.layers, list):
                    bad = [i for i in init.layers if not 0 <= i < total]
                    if bad:
                        errors.append(("student.init.layers",
                                       f"layer indices {bad} out of range for {layer_source} ({total} layers: 0..{total - 1})"))
                if init.num_layers and init.num_layers > total:
                    errors.append(("student.init.num_layers", f"{init.num_layers} > the {total} layers of {layer_source}"))
        v = self.validation
        given = [v.run, v.qrels, v.queries, v.passages]
        if any(given) and not all(given):
            errors.append(("validation", "give all of run, qrels, queries, passages (or none)"))
        for name in ("run", "qrels", "queries", "passages"):
            value = getattr(v, name)
            if value and not Path(value).expanduser().is_file():
                errors.append((f"validation.{name}", f"file not found: {value}"))
        if errors:
            raise ValueError("\n".join(f"field {f}: {m}" for f, m in errors))
        return self

    def _option_errors(self) -> list[tuple[str, str]]:
        """Keys of student.options / loss.options that the constructor they are passed to does not take.

        student.options go to the architecture's constructor (BertDot's for other_model init); teacher_layers init
        copies the teacher, options and all, so options given there would be dropped. Unknown options used to fail
        only as a TypeError inside the Ray workers, or not at all."""
        from kd.catalog import ARCHITECTURE_OPTIONS, LOSS_OPTIONS

        errors = []
        strategy = self.student.init.strategy
        if strategy == "teacher_layers" and self.student.options:
            errors.append(("student.options", "teacher_layers init copies the teacher's options; "
                                              f"{sorted(self.student.options)} would be ignored, remove them"))
        architecture = "bert_dot" if strategy == "other_model" else self.student.architecture
        for section, name, options, known in (
                ("student.options", architecture, self.student.options, ARCHITECTURE_OPTIONS),
                ("loss.options", self.loss.name, self.loss.options, LOSS_OPTIONS)):
            if name not in known or section == "student.options" and strategy == "teacher_layers":
                continue
            for key in options:
                if key not in known[name]:
                    allowed = f"its options: {list(known[name])}" if known[name] else "it takes no options"
                    errors.append((f"{section}.{key}", f"{name!r} has no option {key!r}; {allowed}"))
        return errors


class MineTriplesConfig(Strict):
    """jobs/mine_triples.py: (BM25 first stage when no run is given) → training triples from qrels."""

    beir: str = Field(description="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    split: str = "train"
    run: str | None = Field(None, description="first-stage TREC run; BM25 (bm25s) over the corpus when absent")
    bm25_run_out: str | None = Field(None, description="where to write the BM25 run (TREC format)")
    output: str
    n_negatives: int = Field(1, ge=1)
    top_k: int = Field(100, ge=1)
    threshold: int = Field(1, ge=0, description="positives: qrels grade >= threshold")
    seed: int = 0

    @field_validator("beir")
    @classmethod
    def _beir_folder(cls, v: str) -> str:
        if not any((Path(v) / name).is_file() for name in ("corpus.jsonl", "corpus.jsonl.gz")):
            raise ValueError(f"not a BEIR folder (no corpus.jsonl): {v}")
        return v

    @model_validator(mode="after")
    def _files(self):
        qrels = Path(self.beir) / "qrels" / f"{self.split}.tsv"
        if not qrels.is_file():
            raise ValueError(f"field split: no qrels file {qrels}")
        if self.run and not Path(self.run).is_file():
            raise ValueError(f"field run: file not found: {self.run}")
        if not self.run and not (Path(self.beir) / "corpus.jsonl").is_file():  # only a given run needs no corpus
            raise ValueError(f"field run: BM25 mining reads {Path(self.beir) / 'corpus.jsonl'}; give a first-stage run")
        return self
