"""jobs/distill.py runtime: Ray Train V2 TorchTrainer → per-worker DeepSpeed loop → MLflow run + model registry.

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
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from kd.config import DistillConfig, to_flat_dict
from kd.runtime.run_guards import (check_resources, check_resumable, check_same_run, file_digests, find_run,
                                   run_folder, run_lock, seal_checkpoint, verify_restored)

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


def deepspeed_config(cfg: DistillConfig, total_steps: int) -> dict:
    """The engine's config from the training section, with `training.deepspeed_config`'s other keys (ZeRO settings,
    gradient clipping, communication options, ...) merged over it."""
    t = cfg.training
    conf = _generated_deepspeed_config(cfg, total_steps)
    if t.deepspeed_config:
        extra = json.loads(Path(t.deepspeed_config).read_text())
        conf.update({k: v for k, v in extra.items() if k not in DEEPSPEED_OWNED})
    return conf


def _generated_deepspeed_config(cfg: DistillConfig, total_steps: int) -> dict:
    t = cfg.training
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "weight_decay": t.weight_decay, "torch_adam": True}},
        "scheduler": {"type": "WarmupDecayLR", "params": {
            "total_num_steps": max(total_steps, 2), "warmup_num_steps": max(int(t.warmup_ratio * total_steps), 1),
            "warmup_min_lr": 0.0, "warmup_max_lr": t.lr, "warmup_type": "linear"}},
        "zero_optimization": {"stage": zero_stage(cfg)},
        "bf16": {"enabled": bool(t.use_gpu and t.bf16)},
        "gradient_clipping": t.gradient_clipping,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def _mlflow_start(cfg: DistillConfig, extra_tags: dict | None = None):
    import mlflow

    from kd.runtime.tracking import git_commit, log_params, use_experiment

    use_experiment(cfg.mlflow)
    found = find_run(cfg)
    name = cfg.mlflow.run_name or cfg.run.name
    if found:  # a restarted worker group (or a rerun with the same name) continues the same MLflow run
        return mlflow.start_run(run_id=found.info.run_id)
    run = mlflow.start_run(run_name=name, tags={
        "kd.run_name": cfg.run.name, "kd.job": "distill", "kd.mode": cfg.mode,
        "kd.git_commit": git_commit() or "unknown", "kd.dataset": cfg.registry.dataset_tag or "",
        **(extra_tags or {}),  # e.g. a sweep's mlflow.parentRunId (the run is nested under the sweep's run)
    })
    log_params(to_flat_dict(cfg))
    return run


def _register(cfg: DistillConfig, folder: Path, metrics: dict) -> dict:
    from mlflow import MlflowClient

    from kd.runtime.pyfunc import log_ranker
    from kd.runtime.tracking import git_commit

    name = cfg.registry.name
    info = log_ranker(folder, registered_name=name)
    out = {"model_uri": info.model_uri}
    if name:
        version = str(info.registered_model_version)
        client = MlflowClient()
        client.set_registered_model_alias(name, cfg.registry.alias, version)
        tags = {"git_commit": git_commit() or "unknown", "dataset": cfg.registry.dataset_tag or "",
                "run_name": cfg.run.name, "architecture": cfg.student.architecture, "mode": cfg.mode,
                **{f"val_{k}": f"{v:.6f}" for k, v in metrics.items()}}
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        out.update(registered_name=name, registered_version=version, alias=cfg.registry.alias)
    return out


def train_loop_per_worker(config: dict) -> None:
    import deepspeed
    import ray.train
    import torch.distributed as dist
    from safetensors.torch import load_file

    from kd.training import DistillStep, Validator, build_loss, build_student, load_examples, load_teacher_model
    from kd.training import metric_key, rank_batches, validation_scorer

    cfg = DistillConfig.model_validate(config["cfg"])
    t = cfg.training
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device(f"cuda:{ctx.get_local_rank()}") if t.use_gpu else torch.device("cpu")
    if t.use_gpu:
        torch.cuda.set_device(device)
    else:  # Ray pins OMP_NUM_THREADS=1 per worker; use the CPUs this worker reserved
        torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    bf16 = bool(t.use_gpu and t.bf16)

    torch.manual_seed(t.seed)  # identical initial student (and heads) on every rank
    teacher = load_teacher_model(cfg)
    student = build_student(cfg, teacher)
    module = DistillStep(cfg.mode, student, build_loss(cfg, student, teacher), teacher if cfg.mode in
                         ("in_loop", "embedding") else None)
    if module.teacher is not None:
        module.teacher.to(device=device, dtype=torch.bfloat16 if bf16 else torch.float32)
    examples = load_examples(cfg)
    mb, ga = t.micro_batch_size, t.gradient_accumulation_steps
    per_epoch_batches = len(rank_batches(len(examples), 0, t.seed, rank, world, mb))
    steps_per_epoch = per_epoch_batches // ga
    if steps_per_epoch == 0:
        raise ValueError(f"{len(examples)} examples are too few for {world} workers × micro_batch_size {mb} × "
                         f"gradient_accumulation_steps {ga}")
    total_steps = steps_per_epoch * t.epochs if t.max_steps is None else min(t.max_steps, steps_per_epoch * t.epochs)
    engine, _, _, scheduler = deepspeed.initialize(
        model=module, model_parameters=[p for p in module.parameters() if p.requires_grad],
        config=deepspeed_config(cfg, total_steps),
    )
    validator = Validator(cfg, rank, world) if cfg.validation.run else None
    target = metric_key(cfg.validation.metric)

    step, best, best_state, best_metrics = 0, -math.inf, None, {}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            verify_restored(cfg, Path(d), rank, device)  # before anything unpickles it
            _, client = engine.load_checkpoint(d, tag="ds")
            step, best, best_metrics = client["step"], client["best"], client["best_metrics"]
            if rank == 0 and (Path(d) / "best_student" / "model.safetensors").exists():
                best_state = load_file(str(Path(d) / "best_student" / "model.safetensors"))
        logger.info("rank %d resumed at step %d (best %s)", rank, step, best)

    storage = Path(cfg.run.storage_path) / cfg.run.name
    if step >= total_steps and (storage / "final.json").exists():  # a finished run: nothing to train or register
        logger.info("run %s already finished at step %d", cfg.run.name, step)
        done = json.loads((storage / "final.json").read_text())
        ray.train.report({k: v for k, v in done.items() if isinstance(v, (int, float, str))})
        return
    run = _mlflow_start(cfg, config.get("mlflow_tags")) if rank == 0 and cfg.mlflow.enabled else None
    import mlflow

    fault = t.fault_injection
    marker = storage / ".fault_injected"

    def save_best_student(folder: Path) -> Path:
        if best_state is not None:
            snapshot = module.student
            current = {k: v.detach().cpu().clone() for k, v in snapshot.state_dict().items()}
            snapshot.load_state_dict(best_state)
            snapshot.save_pretrained(folder)
            snapshot.load_state_dict(current)
        else:
            module.student.save_pretrained(folder)
        return folder

    def validate() -> dict[str, float]:
        scorer = validation_scorer(module, cfg.validation.batch_size)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            part = validator.partial_run(scorer)
        parts = [None] * world
        dist.all_gather_object(parts, part)
        merged = {q: docs for p in parts for q, docs in p.items()}
        return validator.metrics(merged)

    def checkpoint(metrics: dict) -> None:
        with tempfile.TemporaryDirectory(prefix=f"kd-ckpt-r{rank}-") as tmp:
            (Path(tmp) / "ds").mkdir()
            engine.save_checkpoint(tmp, tag="ds", client_state={
                "step": step, "best": best, "best_metrics": best_metrics})
            if rank == 0:
                save_best_student(Path(tmp) / "best_student")
                (Path(tmp) / "kd_progress.json").write_text(json.dumps({"step": step, **metrics}) + "\n")
            per_rank = [None] * world
            dist.all_gather_object(per_rank, file_digests(Path(tmp)))
            if rank == 0:
                seal_checkpoint(cfg, Path(tmp), step, per_rank)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    engine.train()
    losses: list[float] = []
    t_last, seen_since = time.perf_counter(), 0
    while step < total_steps:
        epoch = step // steps_per_epoch
        batches = rank_batches(len(examples), epoch, t.seed, rank, world, mb)[: steps_per_epoch * ga]
        for bi in range((step - epoch * steps_per_epoch) * ga, len(batches)):
            torch.manual_seed(t.seed * 1_000_003 + rank * 10_007 + epoch * 100_003 + bi)  # dropout: f(step, rank)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = engine(examples.batch(batches[bi]))
            engine.backward(loss)
            engine.step()
            losses.append(float(loss.detach()))
            seen_since += len(batches[bi])
            if (bi + 1) % ga:
                continue
            step += 1
            if fault is not None and rank == fault.rank and step == fault.at_step and not marker.exists():
                storage.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"worker rank {rank} killed at step {step}\n")
                logger.error("fault injection: killing worker rank %d at step %d", rank, step)
                os._exit(1)
            metrics: dict = {"step": step, "total_steps": total_steps}  # total_steps: lets callbacks spot the end
            if step % t.log_every == 0 or step == total_steps:
                mean_loss = torch.tensor([sum(losses) / max(len(losses), 1)], dtype=torch.float64)
                dist.all_reduce(mean_loss)
                elapsed = time.perf_counter() - t_last
                metrics.update(loss=mean_loss.item() / world, lr=scheduler.get_last_lr()[0],
                               examples_per_second=seen_since * world / max(elapsed, 1e-9))
                losses, t_last, seen_since = [], time.perf_counter(), 0
                if run is not None:
                    mlflow.log_metrics({k: v for k, v in metrics.items() if k not in ("step", "total_steps")},
                                       step=step)
            validating = validator is not None and (step % cfg.validation.every_steps == 0 or step == total_steps)
            if validating:
                engine.eval()
                val = validate()
                engine.train()
                metrics.update({f"val_{k}": v for k, v in val.items()})
                if val[target] > best:
                    best, best_metrics = val[target], val
                    if rank == 0:
                        best_state = {k: v.detach().cpu().clone() for k, v in module.student.state_dict().items()}
                if run is not None:
                    mlflow.log_metrics({f"val_{k}": v for k, v in val.items()}, step=step)
            if validating or step % t.checkpoint_every == 0 or step == total_steps:
                checkpoint(metrics)
            if step >= total_steps:
                break
    final = {"step": step, "best_" + target: best if validator else float("nan"),
             **{f"best_val_{k}": v for k, v in best_metrics.items()}}
    if rank == 0:
        # the best student (the last one without validation), saved once, as a plain kd folder at a fixed path (the
        # example configs score_teachers_scifact.yaml and tinybert_scifact.yaml name <storage>/<run>/final_model as
        # a teacher); the pyfunc model logged from it carries the same folder into MLflow and the registry
        storage.mkdir(parents=True, exist_ok=True)
        folder = save_best_student(storage / "final_model")
        final["final_model"] = str(folder)
        if run is not None:
            final.update(_register(cfg, folder, best_metrics))
            mlflow.log_metric("best_" + target, final["best_" + target])
            final["mlflow_run_id"] = run.info.run_id
            mlflow.end_run()
        (storage / "final.json").write_text(json.dumps(final, indent=2, default=str) + "\n")
    ray.train.report({k: v for k, v in final.items() if isinstance(v, (int, float, str))})


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


def _end_open_run(cfg: DistillConfig, exc: BaseException) -> None:
    """A worker killed with the job (Ctrl+C, SIGTERM, a failed worker group) cannot end its MLflow run: the driver
    ends it as run_status(exc) (KILLED / FAILED) if it is still RUNNING."""
    if not cfg.mlflow.enabled:
        return
    from mlflow import MlflowClient

    from kd.runtime.interrupts import run_status

    try:
        run = find_run(cfg)
        if run is not None and run.info.status == "RUNNING":
            MlflowClient(cfg.mlflow.tracking_uri).set_terminated(run.info.run_id, status=run_status(exc))
    except Exception:  # noqa: BLE001 - never hide the job's own error behind a tracking one
        logger.exception("could not end the MLflow run of %s", cfg.run.name)


def _distill_locked(cfg: DistillConfig, callbacks, mlflow_tags: dict[str, str] | None) -> dict:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from kd.runtime.cluster import ensure_ray
    from kd.runtime.interrupts import keep_signal_handlers

    t = cfg.training
    check_same_run(cfg)
    check_inputs(cfg)
    check_resumable(cfg)
    ensure_ray()
    check_resources(cfg)
    resources = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
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
        _end_open_run(cfg, e)
        raise
    final_file = run_folder(cfg) / "final.json"
    out = json.loads(final_file.read_text()) if final_file.exists() else dict(result.metrics or {})
    out["checkpoint"] = result.checkpoint.path if result.checkpoint else None
    return out
