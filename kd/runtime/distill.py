"""jobs/distill.py runtime: Ray Train V2 TorchTrainer → per-worker DeepSpeed loop → MLflow run + model registry.
This module is the driver (paths, the DeepSpeed config, the checks before Ray, the trainer); the per-worker loop is
kd/runtime/distill_worker.py.

Per worker: the student, loss and (frozen) teacher are built identically on every rank (same seed), wrapped in a
`DistillStep` and handed to `deepspeed.initialize` (Ray already made the process group: gloo on CPU, NCCL on GPU).
Data: every rank reads the same examples and takes its stride of a seeded per-epoch permutation, so the position in
the data is a pure function of the optimizer step — a restarted worker group resumes exactly where the last
checkpoint was taken (same batches, same dropout seeds). Checkpoints: every rank saves its DeepSpeed shard and calls
`ray.train.report`; rank 0 adds `best_student/` (the best-validating student so far, HF format). Validation re-ranks
a dev run: each rank scores its share of the queries, the partial runs are all-gathered and every rank computes the
same metric. Rank 0 logs to MLflow and, at the end, registers the best student (pyfunc + HF folder) with an alias.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from kd.configs.distill import DistillConfig
from kd.runtime.run_guards import (check_resources, check_resumable, check_same_run, distill_run, run_folder, run_lock,
                                   worker_resources)

logger = logging.getLogger(__name__)

PATH_FIELDS = (
    ("teacher", "scores"), ("teacher", "model"), ("data", "queries"), ("data", "passages"), ("data", "triples"),
    ("data", "exclude_query_ids_from"), ("validation", "run"), ("validation", "qrels"), ("validation", "queries"),
    ("validation", "passages"), ("student", "backbone"), ("training", "deepspeed_config"),
)
# keys of a DeepSpeed JSON that the training section owns (the data loop depends on them)
DEEPSPEED_OWNED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
                   "scheduler", "bf16", "fp16")


def absolutize(cfg: DistillConfig) -> DistillConfig:
    """Resolve relative local paths on the driver (workers may run in another working directory)."""
    data = cfg.model_dump(mode="json")
    for section, key in PATH_FIELDS:
        value = data[section].get(key)
        if isinstance(value, str) and Path(value).expanduser().exists():
            data[section][key] = str(Path(value).expanduser().resolve())
    data["data"]["query_files"] = [str(Path(f).expanduser().resolve()) for f in data["data"]["query_files"]]
    data["run"]["storage_path"] = str(Path(data["run"]["storage_path"]).expanduser().resolve())
    return DistillConfig.model_validate(data)


def zero_stage(cfg: DistillConfig) -> int:
    stage = cfg.training.zero_stage
    return (2 if cfg.training.use_gpu else 0) if stage == "auto" else stage


def deepspeed_config(cfg: DistillConfig, total_steps: int, bf16: bool = False) -> dict:
    """The engine's config from the training section, with `training.deepspeed_config`'s other keys (ZeRO settings,
    gradient clipping, communication options, ...) merged over it. `bf16`: DeepSpeed's bf16 mode (bf16 weights, fp32
    master copies), for a GPU whose worker resolved training.precision to bf16; on CPU the worker autocasts instead and
    DeepSpeed keeps fp32 (its CPU path has no bf16 optimizer)."""
    t = cfg.training
    conf = _generated_deepspeed_config(cfg, total_steps, bf16)
    if t.deepspeed_config:
        extra = json.loads(Path(t.deepspeed_config).read_text())
        conf.update({k: v for k, v in extra.items() if k not in DEEPSPEED_OWNED})
    return conf


def _generated_deepspeed_config(cfg: DistillConfig, total_steps: int, bf16: bool) -> dict:
    t = cfg.training
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "weight_decay": t.weight_decay, "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "total_num_steps": max(total_steps, 2), "warmup_num_steps": max(int(t.warmup_ratio * total_steps), 1),
            "warmup_min_lr": 0.0, "warmup_max_lr": t.lr, "warmup_type": "linear"}},
        "zero_optimization": {"stage": zero_stage(cfg)},
        "bf16": {"enabled": bool(t.use_gpu and bf16)},
        "gradient_clipping": t.gradient_clipping,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def distill(cfg: DistillConfig, *, callbacks=(), mlflow_tags: dict[str, str] | None = None) -> dict:
    """Run a distillation job; returns rank 0's final metrics (registry version, best validation metric, ...).

    `callbacks`: Ray Train V2 UserCallbacks (a sweep passes one that forwards validation reports to Tune);
    `mlflow_tags`: extra tags of a new MLflow run (a sweep nests trials with `mlflow.parentRunId`).
    Before Ray starts: the run's lock (one job per run.name), the same-config check, the inputs and the checkpoint
    Ray Train would resume from.
    """
    cfg = absolutize(cfg)
    with run_lock(cfg):
        return _distill_locked(cfg, callbacks, mlflow_tags)


def check_inputs(cfg: DistillConfig) -> None:
    """Everything the workers would read, checked on the driver before Ray starts (the same readers and checks):
    the training data, the validation files and (in-loop KD) the two vocabularies."""
    from kd.training import Validator, check_examples, check_vocabularies

    logger.info("training data: %s", check_examples(cfg))
    if cfg.validation.run:
        logger.info("validation: %d queries", len(Validator(cfg).all_qids))
    check_vocabularies(cfg)


def end_open_run(cfg: DistillConfig, exc: BaseException) -> None:
    """A worker killed with the job (Ctrl+C, SIGTERM, a failed worker group) cannot end its MLflow run: the driver
    ends it as run_status(exc) (KILLED / FAILED) if it is still RUNNING."""
    if not cfg.mlflow.enabled:
        return
    from mlflow import MlflowClient

    from kd.runtime.interrupts import run_status

    try:
        run = distill_run(cfg)
        if run is not None and run.info.status == "RUNNING":
            MlflowClient(cfg.mlflow.tracking_uri).set_terminated(run.info.run_id, status=run_status(exc))
    except Exception:  # noqa: BLE001 - never hide the job's own error behind a tracking one
        logger.exception("could not end the MLflow run of %s", cfg.run.name)


def _distill_locked(cfg: DistillConfig, callbacks, mlflow_tags: dict[str, str] | None) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from kd.runtime.cluster import ensure_ray
    from kd.runtime.distill_worker import train_loop_per_worker
    from kd.runtime.interrupts import keep_signal_handlers

    t = cfg.training
    check_same_run(cfg)
    check_inputs(cfg)
    check_resumable(cfg)
    ensure_ray()
    check_resources(cfg)
    resources = worker_resources(t)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "mlflow_tags": dict(mlflow_tags or {})},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=cfg.run.name, storage_path=cfg.run.storage_path,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=t.num_to_keep),
            callbacks=list(callbacks),
        ),
    )
    try:
        with keep_signal_handlers():  # Ray Train's SIGINT handler must not outlive the fit (later stages' Ctrl+C)
            result = trainer.fit()
    except BaseException as e:
        end_open_run(cfg, e)
        raise
    final_file = run_folder(cfg) / "final.json"
    out = json.loads(final_file.read_text()) if final_file.exists() else dict(result.metrics or {})
    out["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    return out
