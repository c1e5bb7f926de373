"""Typed config of jobs/sweep.py: a distillation config (`base`) + a search space over any of its fields.

    name: scifact-cpu-sweep            # the Tune experiment; rerunning the same name resumes it
    base: configs/distill_x.yaml       # or the distill config inline (run.name / registry / mlflow are set per trial)
    search_space:
      training.lr: {loguniform: [1.0e-5, 3.0e-4]}
      student.init.layers: {grid: [top-bottom, uniform, bottom]}
      student.init.num_layers: {grid: [2, 3]}
      objective:                       # a *linked* dimension: each option sets several fields together
        grid:
          - {loss.name: margin_mse}
          - {loss.name: kl}
          - {loss.name: ranknet, mode: supervised}   # no-teacher baseline: RankNet on the same triples' labels
    scheduler: {name: asha, grace_period: 100, reduction_factor: 2}
    registry: {name: scifact-bert-dot, alias: champion}

A key of `search_space` is a dotted field of the distill config (`training.lr`, `student.options.pooling`, ...), or —
for conditional spaces — any other name whose `grid`/`choice` options are mappings of dotted fields (a linked
dimension). Losses that need another mode (ranknet: `supervised`, which trains on `data.triples` without a teacher)
are swept this way, so every trial is a valid distill config by construction.

Validation happens here, before Ray starts: every key must name a field, every grid/choice value (and both ends of
every range) must give a valid DistillConfig in combination with the other discrete dimensions; errors name the
search-space key and the distill field. Only pydantic/yaml are imported (no torch, no Ray).
"""
from __future__ import annotations

import difflib
import itertools
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, Field, ValidationError, field_validator, model_validator

from kd.config import NAME_MAX_LENGTH, ConfigError, DistillConfig, MLflowConfig, RegistryConfig, SafeName, Strict
from kd.config import _set_path, check_metric, check_name, container_of, format_validation_error, models_in

KINDS = ("grid", "choice", "uniform", "quniform", "loguniform", "qloguniform", "randint", "qrandint", "lograndint",
         "randn")
DISCRETE = ("grid", "choice")
MAX_CHECKED_POINTS = 4096  # discrete combinations validated one by one (beyond: every value on its own)


class Dimension(Strict):
    """One search dimension: exactly one of the kinds (Ray Tune's sampling functions of the same name).

    grid: every value, one trial each (× the other grids)   choice: sampled uniformly
    uniform / loguniform: [low, high]   quniform / qloguniform: [low, high, q]
    randint / lograndint: [low, high) integers   qrandint: [low, high, q]   randn: [mean, sd]
    """

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: list[float] | None = None
    quniform: list[float] | None = None
    loguniform: list[float] | None = None
    qloguniform: list[float] | None = None
    randint: list[int] | None = None
    qrandint: list[int] | None = None
    lograndint: list[int] | None = None
    randn: list[float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {list(KINDS)}, got {given or 'none'}")
        kind, args = given[0], getattr(self, given[0])
        if kind in DISCRETE:
            if not args:
                raise ValueError(f"{kind}: needs at least one value")
            return self
        want = 3 if kind in ("quniform", "qloguniform", "qrandint") else 2
        if len(args) != want:
            raise ValueError(f"{kind}: expected [{'low, high, q' if want == 3 else 'low, high'}]"
                             + (" ([mean, sd])" if kind == "randn" else "") + f", got {args}")
        if kind == "randn":
            if args[1] <= 0:
                raise ValueError(f"randn: sd must be > 0, got {args[1]}")
            return self
        low, high = args[0], args[1]
        if not low < high:
            raise ValueError(f"{kind}: low must be < high, got {args}")
        if kind in ("loguniform", "qloguniform", "lograndint") and low <= 0:
            raise ValueError(f"{kind}: low must be > 0, got {low}")
        if want == 3 and args[2] <= 0:
            raise ValueError(f"{kind}: q must be > 0, got {args[2]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def args(self) -> list:
        return getattr(self, self.kind)

    def check_values(self) -> list[Any]:
        """The values checked against the distill config: every discrete option, or the ends of a range."""
        kind, args = self.kind, self.args
        if kind in DISCRETE:
            return list(args)
        if kind == "randn":  # unbounded: check the mean and ±3 sd
            return [args[0], args[0] - 3 * args[1], args[0] + 3 * args[1]]
        if kind in ("randint", "lograndint"):
            return [int(args[0]), int(args[1]) - 1]
        return [args[0], args[1]]


class SchedulerConfig(Strict):
    """Early stopping on the validation metric. `asha`: Ray Tune's AsyncHyperBandScheduler with time measured in
    optimizer steps (every validation is a rung candidate); `fifo`: no early stopping."""

    name: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="optimizer steps before a trial can be stopped")
    reduction_factor: float = Field(2.0, gt=1)
    max_t: int | None = Field(None, ge=1, description="steps of a full trial; default base.training.max_steps")
    brackets: int = Field(1, ge=1)


class TrialDriverConfig(Strict):
    """Resources of the per-trial Tune driver (it only starts a TorchTrainer and waits). It takes no CPU, so the
    training workers get the whole cluster; `memory_mb` reserves Ray's logical memory, which also gives the
    driver's placement-group bundle a non-empty shape. On clusters, `resources` (e.g. {TRAIN_DRIVER: 0.01}) can pin
    drivers to a node type."""

    cpus: float = Field(0.0, ge=0)
    memory_mb: int = Field(256, ge=1)
    resources: dict[str, float] = {}


class SweepRegistryConfig(Strict):
    """Register the best trial's model as `name` and move `alias` to the new version (the old version stays)."""

    name: SafeName | None = None
    alias: str = "champion"
    dataset_tag: str | None = None

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, v: str) -> str:
        try:  # the same rule as jobs.distill: 'latest' and 'v<N>' are reserved by MLflow
            RegistryConfig(alias=v)
        except ValidationError as e:
            raise ValueError(e.errors()[0]["msg"].removeprefix("Value error, ")) from None
        return v


TRIAL_SUFFIX_LENGTH = 20  # trial run names are `<sweep>-<Ray trial id>` (e.g. 5f3a1_00000)


def check_sweep_name(name: str) -> str:
    """kd.config.check_name, with room left for the trial id that every trial's run name appends."""
    check_name(name)
    if len(name) > NAME_MAX_LENGTH - TRIAL_SUFFIX_LENGTH:
        raise ValueError(f"{name!r}: a sweep name is at most {NAME_MAX_LENGTH - TRIAL_SUFFIX_LENGTH} characters (its "
                         f"trials' run names append -<trial id>, and a run name is at most {NAME_MAX_LENGTH})")
    return name


class SweepConfig(Strict):
    name: Annotated[str, AfterValidator(check_sweep_name)] = Field(
        description="deterministic: rerunning the same name resumes the sweep (Tuner.restore)")
    base: DistillConfig
    search_space: dict[str, Dimension] = Field(min_length=1)
    num_samples: int = Field(1, ge=1, description="samples of the space (the grid is repeated num_samples times)")
    metric: Annotated[str, AfterValidator(check_metric)] | None = Field(
        None, description="validation metric to maximise; default base.validation.metric")
    scheduler: SchedulerConfig = SchedulerConfig()
    max_concurrent_trials: int | Literal["auto"] = "auto"
    trial_driver: TrialDriverConfig = TrialDriverConfig()
    max_failures: int = Field(0, ge=0, description="per-trial retries (a retried trial resumes its checkpoint)")
    seed: int | None = Field(0, description="seed of the random sampling (None: not reproducible)")
    storage_path: str = "./outputs/sweeps"
    registry: SweepRegistryConfig = SweepRegistryConfig()
    mlflow: MLflowConfig = MLflowConfig(experiment="kd-sweep")

    @model_validator(mode="before")
    @classmethod
    def _read_base(cls, data: Any) -> Any:
        """`base` may be a path to a distill YAML; run.name may be left out (every trial gets its own)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        base = data.get("base")
        if isinstance(base, str):
            path = Path(base).expanduser()
            if not path.is_file():
                raise ValueError(f"field base: distill config file not found: {base}")
            try:
                base = yaml.safe_load(path.read_text()) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"field base: {base} is not valid YAML ({e})") from None
        if isinstance(base, dict):
            base = json.loads(json.dumps(base))  # a private copy
            if base.get("run") is None:
                base["run"] = {}
            if isinstance(base["run"], dict) and "name" not in base["run"]:
                name = data.get("name", "sweep")
                if isinstance(name, str):  # the trial run names derive from it: name the field the user wrote
                    try:
                        check_sweep_name(name)
                    except ValueError as e:
                        raise ValueError(f"field name: {e}") from None
                base["run"]["name"] = f"{name}-trial"
            data["base"] = base
            try:  # here, so that errors read `field base.<field>: ...`
                DistillConfig.model_validate(base)
            except ValidationError as e:
                lines = format_validation_error(e, "base").splitlines()[1:]
                raise ValueError("\n".join(line.strip().replace("field ", "field base.", 1) for line in lines)) \
                    from None
        return data

    @model_validator(mode="after")
    def _check(self):
        errors: list[str] = []
        if not self.base.validation.run:
            errors.append("field base.validation: a sweep needs validation (run, qrels, queries, passages): ASHA "
                          "and the champion are chosen on the validation metric")
        metric = self.metric or self.base.validation.metric
        known = {self.base.validation.metric, "ndcg@10", "mrr@10"}
        if metric not in known:
            errors.append(f"field metric: {metric!r} is not computed in validation; use one of {sorted(known)} "
                          "(or set base.validation.metric)")
        if self.scheduler.name == "asha" and self.scheduler.max_t is None and self.base.training.max_steps is None \
                and "training.max_steps" not in self.search_space:
            errors.append("field scheduler.max_t: give the steps of a full trial (or base.training.max_steps)")
        if errors:
            raise ValueError("\n".join(errors))
        check_search_space(self)
        return self

    # ---------------------------------------------------------------------------------------------- derived
    @property
    def target_metric(self) -> str:
        """The validation metric (kd.metrics name, e.g. `ndcg@10`)."""
        return self.metric or self.base.validation.metric

    @property
    def tune_metric(self) -> str:
        """The key reported to Tune, e.g. `val_ndcg_at_10`."""
        return "val_" + self.target_metric.replace("@", "_at_")

    @property
    def max_t(self) -> int:
        if self.scheduler.max_t is not None:
            return self.scheduler.max_t
        steps = [self.base.training.max_steps or 1]
        dim = self.search_space.get("training.max_steps")
        if dim is not None:
            steps += [int(v) for v in dim.check_values() if v is not None]
        return max(steps)


# ------------------------------------------------------------------------------------------------ field paths
def field_path_error(path: str, root: type[BaseModel] = DistillConfig) -> str | None:
    """None if `path` (dotted) names a field of `root`, else a message saying what is wrong.

    Free-form mappings (`student.options`, `loss.options`) accept any key here: DistillConfig's own check refuses
    an option the architecture or loss does not take, for every checked point. List fields accept an index
    (`data.query_files.0`).
    """
    parts = path.split(".")
    cls: type[BaseModel] = root
    for i, part in enumerate(parts):
        fields = cls.model_fields
        where = ".".join(parts[:i])
        if part not in fields:
            close = difflib.get_close_matches(part, list(fields), n=1)
            hint = f" (did you mean {'.'.join(parts[:i] + close)!r}?)" if close else ""
            return (f"{'section ' + repr(where) if where else 'the distill config'} has no field {part!r}{hint}; "
                    f"its fields: {sorted(fields)}")
        rest = parts[i + 1:]
        if not rest:
            return None
        annotation = fields[part].annotation
        models = models_in(annotation)
        if models:
            cls = models[0]
            continue
        container = (container_of(annotation) or (None,))[0]
        if container == "dict":
            return None
        if container == "list" and len(rest) == 1 and rest[0].isdigit():
            return None
        return f"{'.'.join(parts[:i + 1])!r} is a value, not a section (it has no field {'.'.join(rest)!r})"
    return None


# ----------------------------------------------------------------------------------------------- the space
def is_linked(key: str, dim: Dimension) -> bool:
    """A linked dimension: a key that is not a field, with grid/choice options that are mappings of fields."""
    return (field_path_error(key) is not None and dim.kind in DISCRETE
            and all(isinstance(v, dict) for v in dim.args))


def assignments(key: str, dim: Dimension, value: Any) -> dict[str, Any]:
    """What one value of a dimension sets: {dotted field: value}."""
    if is_linked(key, dim):
        return dict(value)
    return {key: value}


def apply_params(base: dict, params: dict[str, Any], space: dict[str, Dimension]) -> dict:
    """The distill config (as a dict) of one point of the space (`params`: search-space key → sampled value)."""
    data = json.loads(json.dumps(base))
    for key, value in params.items():
        dim = space.get(key)
        sets = assignments(key, dim, value) if dim is not None else {key: value}
        for field, v in sets.items():
            if isinstance(v, float) and v.is_integer() and _wants_int(field):
                v = int(v)
            _set_path(data, field, v, f"search_space.{key}")
    return data


_INT_FIELDS = {"training.max_steps", "training.micro_batch_size", "training.gradient_accumulation_steps",
               "training.epochs", "training.num_workers", "student.init.num_layers", "validation.every_steps",
               "validation.top_k", "validation.max_queries", "data.max_examples", "training.seed"}


def _wants_int(field: str) -> bool:
    return field in _INT_FIELDS


def check_search_space(sweep: SweepConfig) -> None:
    """Every key names a field; every value (and range end) gives a valid DistillConfig with the other discrete
    dimensions. Raises ValueError whose lines read `field search_space.<key>: ...`."""
    space = sweep.search_space
    base = sweep.base.model_dump(mode="json")
    errors: list[str] = []
    for key, dim in space.items():
        if field_path_error(key) is None:
            continue
        if dim.kind in DISCRETE and all(isinstance(v, dict) for v in dim.args):
            for i, option in enumerate(dim.args):
                if not option:
                    errors.append(f"field search_space.{key}.{dim.kind}.{i}: an empty set of fields")
                for field in option:
                    msg = field_path_error(field)
                    if msg:
                        errors.append(f"field search_space.{key}.{dim.kind}.{i}.{field}: {msg}")
        else:
            errors.append(f"field search_space.{key}: {field_path_error(key)} (a linked dimension instead needs "
                          "grid/choice options that are mappings of dotted fields)")
    if errors:
        raise ValueError("\n".join(errors))

    def validate(point: dict[str, Any]) -> str | None:
        try:
            DistillConfig.model_validate(apply_params(base, point, space))
        except ConfigError as e:
            return str(e)
        except ValidationError as e:
            return format_validation_error(e, "distill config").split("\n", 1)[1]
        return None

    discrete = {k: d.args for k, d in space.items() if d.kind in DISCRETE}
    ranges = {k: d for k, d in space.items() if d.kind not in DISCRETE}
    first = {k: v[0] for k, v in discrete.items()}
    total = math.prod(len(v) for v in discrete.values()) if discrete else 1
    seen: set[str] = set()

    def fail(point: dict[str, Any], msg: str) -> None:
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in point.items())
        keys = ", ".join(point)
        text = f"field search_space ({keys}): the point {{{shown}}} gives an invalid distill config:\n" + \
            "\n".join("    " + line.strip() for line in msg.splitlines() if line.strip())
        if "does not fit mode" in msg:
            text += ("\n    (a loss that needs another mode is swept together with it, as a linked dimension: "
                     "objective: {grid: [{loss.name: margin_mse}, {loss.name: ranknet, mode: supervised}]})")
        if text not in seen:
            seen.add(text)
            errors.append(text)

    points: list[dict[str, Any]] = []
    if total <= MAX_CHECKED_POINTS:
        points += [dict(zip(discrete, combo)) for combo in itertools.product(*discrete.values())]
    else:  # too many combinations: every value of every dimension against the others' first values
        points += [{**first, k: v} for k, values in discrete.items() for v in values]
    low = {k: d.check_values()[0] for k, d in ranges.items()}
    points = [{**p, **low} for p in points] or [dict(low)]
    for k, d in ranges.items():
        points += [{**first, **low, k: v} for v in d.check_values()[1:]]
    for point in points:
        msg = validate(point)
        if msg:
            fail(point, msg)
        if len(errors) >= 5:
            break
    if errors:
        raise ValueError("\n".join(errors))


def expected_trials(sweep: SweepConfig) -> int:
    """How many trials the sweep runs: num_samples × the grid's combinations (Tune repeats the grid per sample)."""
    grid = math.prod(len(d.args) for d in sweep.search_space.values() if d.kind == "grid")
    return sweep.num_samples * grid


def trial_configs(sweep: SweepConfig) -> list[DistillConfig]:
    """The distill configs of the discrete points (ranges at their low end): what a trial may need."""
    space = sweep.search_space
    base = sweep.base.model_dump(mode="json")
    discrete = {k: d.args for k, d in space.items() if d.kind in DISCRETE}
    low = {k: d.check_values()[0] for k, d in space.items() if d.kind not in DISCRETE}
    combos = list(itertools.islice(itertools.product(*discrete.values()), MAX_CHECKED_POINTS))
    return [DistillConfig.model_validate(apply_params(base, {**dict(zip(discrete, c)), **low}, space))
            for c in combos]


def trial_resources(sweep: SweepConfig) -> dict[str, float]:
    """The most CPUs / GPUs one trial's workers take (over the search space), plus its driver's share."""
    cpus = gpus = 0.0
    for cfg in trial_configs(sweep):
        t = cfg.training
        cpus = max(cpus, t.num_workers * t.cpus_per_worker)
        gpus = max(gpus, float(t.num_workers) if t.use_gpu else 0.0)
    return {"CPU": cpus + sweep.trial_driver.cpus, "GPU": gpus}


def max_concurrent(sweep: SweepConfig, cluster: dict[str, float]) -> int:
    """Trials that fit the cluster at once (each takes `trial_resources`); `max_concurrent_trials` overrides."""
    if sweep.max_concurrent_trials != "auto":
        return int(sweep.max_concurrent_trials)
    need = trial_resources(sweep)
    fits = []
    for res, amount in need.items():
        if amount <= 0:
            continue
        have = float(cluster.get(res, 0.0))
        n = int(math.floor(have / amount + 1e-9))
        if n < 1:
            raise ConfigError(f"one trial needs {amount:g} {res} (training.num_workers × "
                              f"{'cpus_per_worker' if res == 'CPU' else '1 GPU'}) but the Ray cluster has {have:g}; "
                              "make trials smaller or set max_concurrent_trials explicitly (autoscaling clusters)")
        fits.append(n)
    return max(1, min(fits)) if fits else 1
