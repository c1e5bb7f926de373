"""The pipeline's MLflow runs (kd/runtime/pipeline.py): one parent run per pipeline (tag kd.pipeline=<name>; a rerun
reuses it) and one run per stage nested under it (`mlflow.parentRunId`), through MlflowClient only."""
from __future__ import annotations

import logging
import time

from kd.configs.base import to_flat_dict
from kd.configs.pipeline import PipelineConfig
from kd.runtime.tracking import Tag, create_run, find_or_create_run, log_params, use_experiment

logger = logging.getLogger(__name__)


def _say(msg: str) -> None:
    print(msg, flush=True)


class Tracker:
    """The pipeline's parent MLflow run and its stage runs (MlflowClient only: no active-run state in this
    process, so the stage runtimes are free to start their own runs).

    The runs it created and has not ended yet are kept (`open`): when a stage raises, Ctrl+C and SIGTERM included,
    `end_open` ends them and the parent KILLED / FAILED (`run_status`) instead of leaving them RUNNING."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.enabled = cfg.mlflow.enabled
        self.client = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.open: list[str] = []

    def start(self) -> None:
        if not self.enabled:
            return
        import mlflow
        from mlflow import MlflowClient

        use_experiment(self.cfg.mlflow)
        self.client = MlflowClient()
        self.experiment_id = mlflow.get_experiment_by_name(self.cfg.mlflow.experiment).experiment_id
        key = {Tag.PIPELINE: self.cfg.name, Tag.JOB: "pipeline"}
        run, created = find_or_create_run(self.cfg.mlflow.experiment, key, self.cfg.name,
                                          params=to_flat_dict(self.cfg), client=self.client)
        self.parent_id = run.info.run_id
        if created:
            _say(f"MLflow: pipeline run {self.parent_id} in experiment {self.cfg.mlflow.experiment!r}")
        else:
            _say(f"MLflow: resuming pipeline run {self.parent_id}")

    def child_tags(self, stage: str) -> dict[str, str]:
        tags = {Tag.PIPELINE: self.cfg.name, Tag.STAGE: stage}
        if self.parent_id:
            tags[Tag.PARENT] = self.parent_id
        return tags

    def create(self, stage: str, params: dict | None = None, tags: dict | None = None) -> str | None:
        if not self.enabled:
            return None
        run = create_run(self.cfg.mlflow.experiment, f"{self.cfg.name}/{stage}", {
            **self.child_tags(stage), Tag.JOB: f"pipeline.{stage.split('-')[0]}", **(tags or {})},
            client=self.client)
        self.open.append(run.info.run_id)  # before its params: a run that exists is ended with the others
        if params:
            log_params(params, run.info.run_id, self.client)
        return run.info.run_id

    def metrics(self, run_id: str | None, metrics: dict[str, float]) -> None:
        if run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def adopt(self, run_id: str | None, stage: str) -> None:
        """Nest a run that a stage runtime created on its own under the pipeline run."""
        if run_id is None or not self.enabled:
            return
        for k, v in self.child_tags(stage).items():
            self.client.set_tag(run_id, k, v)

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id is not None:
            self.client.set_terminated(run_id, status=status)
            if run_id in self.open:
                self.open.remove(run_id)

    def end_open(self, exc: BaseException) -> None:
        """A stage raised `exc`: end the stage runs still open, then the parent, with `run_status(exc)`."""
        from kd.runtime.interrupts import run_status

        status = run_status(exc)
        for run_id in [*self.open, self.parent_id]:
            if run_id is None:
                continue
            try:
                self.end(run_id, status)
            except Exception as e:  # noqa: BLE001 - the stage's own error is the one to report
                logger.warning("could not end MLflow run %s as %s: %s", run_id, status, e)
