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

Losses that need another mode (ranknet: `supervised`, which trains on `data.triples` without a teacher) are swept as
a linked dimension, so every trial is a valid distill config by construction. The search space itself (its keys,
the points checked, trial sizes) is kd.configs.search_space. Validation happens here, before Ray starts; only
pydantic/yaml are imported (no torch, no Ray).
"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from kd.configs.base import Strict
from kd.configs.common import MLflowConfig
from kd.configs.distill import DistillConfig
from kd.configs.errors import ConfigError, error_lines
from kd.configs.fields import NAME_MAX_LENGTH, Alias, Metric, SafeName, check_name
from kd.configs.loader import read_yaml
from kd.configs.search_space import Dimension, check_search_space


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
    alias: Alias = "champion"  # the same rule as jobs.distill: 'latest' and 'v<N>' are reserved by MLflow
    dataset_tag: str | None = None


TRIAL_SUFFIX_LENGTH = 20  # trial run names are `<sweep>-<Ray trial id>` (e.g. 5f3a1_00000)


def check_sweep_name(name: str) -> str:
    """kd.configs.fields.check_name, with room left for the trial id that every trial's run name appends."""
    check_name(name)
    if len(name) > NAME_MAX_LENGTH - TRIAL_SUFFIX_LENGTH:
        raise ValueError(f"{name!r}: a sweep name is at most {NAME_MAX_LENGTH - TRIAL_SUFFIX_LENGTH} characters (its "
                         f"trials' run names append -<trial id>, and a run name is at most {NAME_MAX_LENGTH})")
    return name


def _base_with_run_name(base: dict, name: Any) -> dict:
    """A private copy of the distill config `base`, with run.name `<sweep name>-trial` when it gives none (every
    trial gets its own)."""
    base = json.loads(json.dumps(base))
    if base.get("run") is None:
        base["run"] = {}
    if isinstance(base["run"], dict) and "name" not in base["run"]:
        if isinstance(name, str):  # the trial run names derive from it: name the field the user wrote
            try:
                check_sweep_name(name)
            except ValueError as e:
                raise ValueError(f"field name: {e}") from None
        base["run"]["name"] = f"{name}-trial"
    return base


class SweepConfig(Strict):
    name: Annotated[str, AfterValidator(check_sweep_name)] = Field(
        description="deterministic: rerunning the same name resumes the sweep (Tuner.restore)")
    base: DistillConfig
    search_space: dict[str, Dimension] = Field(min_length=1)
    num_samples: int = Field(1, ge=1, description="samples of the space (the grid is repeated num_samples times)")
    metric: Metric | None = Field(None, description="validation metric to maximise; default base.validation.metric")
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
            try:
                base = read_yaml(base, "distill config file")
            except ConfigError as e:
                raise ValueError(f"field base: {e}") from None
        if isinstance(base, dict):
            data["base"] = base = _base_with_run_name(base, data.get("name", "sweep"))
            try:  # here, so that errors read `field base.<field>: ...`
                DistillConfig.model_validate(base)
            except ValidationError as e:
                raise ValueError("\n".join(error_lines(e, "base"))) from None
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
