"""A sweep's search space, without Ray: its dimensions, what each point sets in the distill config, the points
checked before Ray starts, and what a trial needs from the cluster.

A key of `search_space` is a dotted field of the distill config (`training.lr`, `student.options.pooling`, ...), or —
for conditional spaces — any other name whose `grid`/`choice` options are mappings of dotted fields (a linked
dimension). Every grid/choice value (and both ends of every range) must give a valid DistillConfig in combination
with the other discrete dimensions; errors name the search-space key and the distill field.
"""
from __future__ import annotations

import difflib
import itertools
import json
import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError, model_validator

from kd.configs.base import Strict
from kd.configs.distill import DistillConfig
from kd.configs.errors import ConfigError, error_lines
from kd.configs.loader import set_path
from kd.configs.schema import container_of, models_in

if TYPE_CHECKING:
    from kd.configs.sweep import SweepConfig

KINDS = ("grid", "choice", "uniform", "quniform", "loguniform", "qloguniform", "randint", "qrandint", "lograndint",
         "randn")
DISCRETE = ("grid", "choice")
MAX_CHECKED_POINTS = 4096  # discrete combinations validated one by one (beyond: every value on its own)
MAX_REPORTED = 5  # invalid points reported before the check stops


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
            set_path(data, field, v, f"search_space.{key}")
    return data


_INT_FIELDS = {"training.max_steps", "training.micro_batch_size", "training.gradient_accumulation_steps",
               "training.epochs", "training.num_workers", "student.init.num_layers", "validation.every_steps",
               "validation.top_k", "validation.max_queries", "data.max_examples", "training.seed"}


def _wants_int(field: str) -> bool:
    return field in _INT_FIELDS


# ---------------------------------------------------------------------------------------------- the checks
def _key_errors(space: dict[str, Dimension]) -> list[str]:
    """Every key names a distill field, or is a linked dimension whose options name distill fields."""
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
    return errors


def checked_points(space: dict[str, Dimension]) -> list[dict[str, Any]]:
    """The points validated before Ray: every discrete combination (or, beyond MAX_CHECKED_POINTS, every value of
    every dimension against the others' first values), with ranges at their low end; then each range's other
    check values against the first discrete point."""
    discrete = {k: d.args for k, d in space.items() if d.kind in DISCRETE}
    ranges = {k: d for k, d in space.items() if d.kind not in DISCRETE}
    first = {k: v[0] for k, v in discrete.items()}
    total = math.prod(len(v) for v in discrete.values()) if discrete else 1
    if total <= MAX_CHECKED_POINTS:
        points = [dict(zip(discrete, combo)) for combo in itertools.product(*discrete.values())]
    else:
        points = [{**first, k: v} for k, values in discrete.items() for v in values]
    low = {k: d.check_values()[0] for k, d in ranges.items()}
    points = [{**p, **low} for p in points] or [dict(low)]
    for k, d in ranges.items():
        points += [{**first, **low, k: v} for v in d.check_values()[1:]]
    return points


def _point_problem(base: dict, point: dict[str, Any], space: dict[str, Dimension]) -> str | None:
    """The `field search_space (...)` message of a point whose distill config is invalid, else None."""
    try:
        DistillConfig.model_validate(apply_params(base, point, space))
        return None
    except (ConfigError, ValidationError) as e:
        msg = "\n".join(error_lines(e))
    shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in point.items())
    text = f"field search_space ({', '.join(point)}): the point {{{shown}}} gives an invalid distill config:\n" + \
        "\n".join("    " + line.strip() for line in msg.splitlines() if line.strip())
    if "does not fit mode" in msg:
        text += ("\n    (a loss that needs another mode is swept together with it, as a linked dimension: "
                 "objective: {grid: [{loss.name: margin_mse}, {loss.name: ranknet, mode: supervised}]})")
    return text


def check_search_space(sweep: SweepConfig) -> None:
    """Every key names a field; every value (and range end) gives a valid DistillConfig with the other discrete
    dimensions. Raises ValueError whose lines read `field search_space.<key>: ...`."""
    space = sweep.search_space
    errors = _key_errors(space)
    if errors:
        raise ValueError("\n".join(errors))
    base = sweep.base.model_dump(mode="json")
    for point in checked_points(space):
        problem = _point_problem(base, point, space)
        if problem and problem not in errors:
            errors.append(problem)
        if len(errors) >= MAX_REPORTED:
            break
    if errors:
        raise ValueError("\n".join(errors))


# ---------------------------------------------------------------------------------------------- the trials
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
