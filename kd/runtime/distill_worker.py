"""One jobs.distill worker (Ray Train's `train_loop_per_worker`): build, resume, train, and — rank 0 — log and register.

Every rank builds the same student, loss and frozen teacher (same seed), wraps them in a `DistillStep` and hands it to
`deepspeed.initialize`. The batches of an optimizer step are a pure function of (seed, epoch, rank) and the dropout
seed of a micro-batch one of (seed, rank, epoch, batch index), so a restarted worker group resumes exactly where its
last checkpoint was taken. Validation: each rank scores its share of the dev queries, the partial runs are
all-gathered and every rank computes the same metric. The driver side (locks, checks, the TorchTrainer) is
kd/runtime/distill.py.
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

from kd.configs.distill import DistillConfig
from kd.configs.base import to_flat_dict
from kd.precision import resolve_precision
from kd.runtime.run_guards import file_digests, seal_checkpoint, verify_restored

logger = logging.getLogger(__name__)


def train_loop_per_worker(config: dict) -> None:
    """`config`: {"cfg": the DistillConfig as JSON, "mlflow_tags": extra tags of a new MLflow run}."""
    worker = Worker(DistillConfig.model_validate(config["cfg"]))
    worker.restore()
    if worker.already_finished():  # a finished run: nothing to train or register
        return
    if worker.rank == 0 and worker.cfg.mlflow.enabled:
        from kd.runtime.tracking import log_params

        worker.run = _mlflow_start(worker.cfg, config.get("mlflow_tags"))
        # what training.precision resolved to here, and why (evaluation's vocabulary: info.precision[_reason])
        log_params({f"info.{k}": v for k, v in worker.precision.as_info().items()})
    worker.train()
    worker.finish()


def _mlflow_start(cfg: DistillConfig, extra_tags: dict | None = None):
    """Rank 0's MLflow run (the process's active run): the run of `run.name` (tag kd.run_name) when there is one — a
    restarted worker group, or a rerun with the same name, continues it — else a new one with the config as params."""
    from kd.runtime.tracking import Tag, find_or_create_run, use_experiment

    use_experiment(cfg.mlflow)
    tags = {Tag.JOB: "distill", Tag.MODE: cfg.mode, Tag.DATASET: cfg.registry.dataset_tag or "",
            **(extra_tags or {})}  # e.g. a sweep's mlflow.parentRunId (the run is nested under the sweep's run)
    run, _ = find_or_create_run(cfg.mlflow.experiment, {Tag.RUN_NAME: cfg.run.name},
                                cfg.mlflow.run_name or cfg.run.name, tags, params=to_flat_dict(cfg))
    return run


def _register(cfg: DistillConfig, folder: Path, metrics: dict) -> dict:
    """Log the best student as a pyfunc and, with `registry.name`, register it (a new version), tag it and point
    `registry.alias` at it."""
    from kd.runtime.pyfunc import log_ranker
    from kd.runtime.registry import publish_version, version_tags

    name = cfg.registry.name
    info = log_ranker(folder, registered_name=name)
    out = {"model_uri": info.model_uri}
    if name:
        version = str(info.registered_model_version)
        publish_version(name, version, cfg.registry.alias, {
            **version_tags(cfg), "run_name": cfg.run.name, **{f"val_{k}": f"{v:.6f}" for k, v in metrics.items()}})
        out.update(registered_name=name, registered_version=version, alias=cfg.registry.alias)
    return out


def _set_up_device(cfg: DistillConfig, local_rank: int) -> torch.device:
    t = cfg.training
    device = torch.device(f"cuda:{local_rank}") if t.use_gpu else torch.device("cpu")
    if t.use_gpu:
        torch.cuda.set_device(device)
    else:  # Ray pins OMP_NUM_THREADS=1 per worker; use the CPUs this worker reserved
        torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    return device


class Worker:
    """The state of one rank's training: the DeepSpeed engine, the position (`step`) and the best validation so far
    (`best`, `best_metrics`; rank 0 also keeps the best student's weights, `best_state`)."""

    def __init__(self, cfg: DistillConfig):
        import deepspeed
        import ray.train

        from kd.runtime.distill import deepspeed_config
        from kd.training import DistillStep, Validator, build_student, load_examples, load_teacher_model
        from kd.training import example_lengths, metric_key, rank_batches

        self.cfg = cfg
        t = cfg.training
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = _set_up_device(cfg, ctx.get_local_rank())
        # training.precision → bf16 autocast (fp32 weights, fp32 optimizer) where the device has native bf16
        self.precision = resolve_precision(t.precision, self.device)
        self.bf16 = self.precision.bf16
        logger.info("rank %d trains in %s", self.rank, self.precision)

        torch.manual_seed(t.seed)  # identical initial student (and heads) on every rank
        teacher = load_teacher_model(cfg)
        student = build_student(cfg, teacher)
        self.module = DistillStep.from_config(cfg, student, teacher)
        if self.module.teacher is not None:
            self.module.teacher.to(device=self.device, dtype=torch.bfloat16 if self.bf16 else torch.float32)
        self.examples = load_examples(cfg, student)  # data.prepared: memory-mapped, collated for this student
        mb, ga = t.micro_batch_size, t.gradient_accumulation_steps
        # training.group_by_length: the student's token counts, the key the grouped batches sort by
        self.lengths = example_lengths(self.examples, student) if t.group_by_length else None
        per_epoch_batches = len(rank_batches(len(self.examples), 0, t.seed, self.rank, self.world, mb, self.lengths,
                                             t.group_by_length))
        self.steps_per_epoch = per_epoch_batches // ga
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.examples)} examples are too few for {self.world} workers × micro_batch_size "
                             f"{mb} × gradient_accumulation_steps {ga}")
        every = self.steps_per_epoch * t.epochs
        self.total_steps = every if t.max_steps is None else min(t.max_steps, every)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.module, model_parameters=[p for p in self.module.parameters() if p.requires_grad],
            config=deepspeed_config(cfg, self.total_steps, bf16=self.bf16 and self.device.type == "cuda"),
        )
        self.validator = Validator(cfg, self.rank, self.world) if cfg.validation.run else None
        self.target = metric_key(cfg.validation.metric)
        self.step, self.best, self.best_state, self.best_metrics = 0, -math.inf, None, {}
        self.storage = Path(cfg.run.storage_path) / cfg.run.name
        self.run = None  # rank 0's MLflow run (train_loop_per_worker)
        self.losses: list[float] = []  # since the last training metrics: the loss of each micro-batch, ...
        self.t_last, self.seen_since = time.perf_counter(), 0  # ... when they were logged, examples seen since

    # ------------------------------------------------------------------------------------------ resume
    def restore(self) -> None:
        """Load the checkpoint Ray Train hands over (a restarted worker group, a rerun), after checking it."""
        import ray.train
        from safetensors.torch import load_file

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return
        with ckpt.as_directory() as d:
            verify_restored(self.cfg, Path(d), self.rank, self.device)  # before anything unpickles it
            _, client = self.engine.load_checkpoint(d, tag="ds")
            self.step, self.best, self.best_metrics = client["step"], client["best"], client["best_metrics"]
            if self.rank == 0 and (Path(d) / "best_student" / "model.safetensors").exists():
                self.best_state = load_file(str(Path(d) / "best_student" / "model.safetensors"))
        logger.info("rank %d resumed at step %d (best %s)", self.rank, self.step, self.best)

    def already_finished(self) -> bool:
        """A run that trained to the end and wrote final.json: report that again instead of training."""
        import ray.train

        final_file = self.storage / "final.json"
        if self.step < self.total_steps or not final_file.exists():
            return False
        logger.info("run %s already finished at step %d", self.cfg.run.name, self.step)
        done = json.loads(final_file.read_text())
        ray.train.report({k: v for k, v in done.items() if isinstance(v, (int, float, str))})
        return True

    # ------------------------------------------------------------------------------------------- train
    def train(self) -> None:
        from kd.data.prefetch import batch_stream
        from kd.training import rank_batches

        t = self.cfg.training
        mb, ga = t.micro_batch_size, t.gradient_accumulation_steps
        self.engine.train()
        self.losses, self.t_last, self.seen_since = [], time.perf_counter(), 0
        while self.step < self.total_steps:
            epoch = self.step // self.steps_per_epoch
            batches = rank_batches(len(self.examples), epoch, t.seed, self.rank, self.world, mb, self.lengths,
                                   t.group_by_length)[: self.steps_per_epoch * ga]
            start = (self.step - epoch * self.steps_per_epoch) * ga
            stream = batch_stream(self.examples, batches[start:])  # prepared: collated ahead in a thread
            for bi in range(start, len(batches)):
                # dropout: f(step, rank)
                torch.manual_seed(t.seed * 1_000_003 + self.rank * 10_007 + epoch * 100_003 + bi)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    loss = self.engine(next(stream))
                self.engine.backward(loss)
                self.engine.step()
                self.losses.append(float(loss.detach()))
                self.seen_since += len(batches[bi])
                if (bi + 1) % ga:
                    continue
                self.step += 1
                self._after_step()
                if self.step >= self.total_steps:
                    break

    def _after_step(self) -> None:
        """After an optimizer step: the fault injection, the training metrics every `log_every` steps, validation
        every `validation.every_steps`, a checkpoint after each validation and every `checkpoint_every` steps."""
        cfg, step, last = self.cfg, self.step, self.step == self.total_steps
        self._inject_fault()
        metrics: dict = {"step": step, "total_steps": self.total_steps}  # total_steps: lets callbacks spot the end
        if step % cfg.training.log_every == 0 or last:
            metrics.update(self._training_metrics())
        validating = self.validator is not None and (step % cfg.validation.every_steps == 0 or last)
        if validating:
            metrics.update(self._validate_and_keep_best())
        if validating or step % cfg.training.checkpoint_every == 0 or last:
            self.checkpoint(metrics)

    def _inject_fault(self) -> None:
        """training.fault_injection: kill this worker once, at the given rank and step (the marker file makes the
        restarted group pass)."""
        fault = self.cfg.training.fault_injection
        marker = self.storage / ".fault_injected"
        if fault is not None and self.rank == fault.rank and self.step == fault.at_step and not marker.exists():
            self.storage.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"worker rank {self.rank} killed at step {self.step}\n")
            logger.error("fault injection: killing worker rank %d at step %d", self.rank, self.step)
            os._exit(1)

    def _training_metrics(self) -> dict[str, float]:
        """Mean loss over all ranks since the last log, the learning rate, examples per second (all ranks)."""
        import torch.distributed as dist

        mean_loss = torch.tensor([sum(self.losses) / max(len(self.losses), 1)], dtype=torch.float64)
        dist.all_reduce(mean_loss)
        elapsed = time.perf_counter() - self.t_last
        out = {"loss": mean_loss.item() / self.world, "lr": self.scheduler.get_last_lr()[0],
               "examples_per_second": self.seen_since * self.world / max(elapsed, 1e-9)}
        self.losses, self.t_last, self.seen_since = [], time.perf_counter(), 0
        if self.run is not None:
            import mlflow

            mlflow.log_metrics(out, step=self.step)
        return out

    def _validate_and_keep_best(self) -> dict[str, float]:
        self.engine.eval()
        val = self.validate()
        self.engine.train()
        if val[self.target] > self.best:
            self.best, self.best_metrics = val[self.target], val
            if self.rank == 0:
                self.best_state = {k: v.detach().cpu().clone() for k, v in self.module.student.state_dict().items()}
        if self.run is not None:
            import mlflow

            mlflow.log_metrics({f"val_{k}": v for k, v in val.items()}, step=self.step)
        return {f"val_{k}": v for k, v in val.items()}

    def validate(self) -> dict[str, float]:
        import torch.distributed as dist

        from kd.training import validation_scorer

        scorer = validation_scorer(self.module, self.cfg.validation.batch_size)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            part = self.validator.partial_run(scorer)
        parts = [None] * self.world
        dist.all_gather_object(parts, part)
        merged = {q: docs for p in parts for q, docs in p.items()}
        return self.validator.metrics(merged)

    # -------------------------------------------------------------------------------------- save, report
    def save_best_student(self, folder: Path) -> Path:
        """The best-validating student (the current one without validation) as a kd folder."""
        if self.best_state is not None:
            snapshot = self.module.student
            current = {k: v.detach().cpu().clone() for k, v in snapshot.state_dict().items()}
            snapshot.load_state_dict(self.best_state)
            snapshot.save_pretrained(folder)
            snapshot.load_state_dict(current)
        else:
            self.module.student.save_pretrained(folder)
        return folder

    def checkpoint(self, metrics: dict) -> None:
        """Every rank's DeepSpeed shard (+ rank 0: best_student/, kd_progress.json), sealed by rank 0 with a manifest
        of every rank's file digests (run_guards.seal_checkpoint), reported to Ray Train with `metrics`."""
        import ray.train
        import torch.distributed as dist

        with tempfile.TemporaryDirectory(prefix=f"kd-ckpt-r{self.rank}-") as tmp:
            (Path(tmp) / "ds").mkdir()
            self.engine.save_checkpoint(tmp, tag="ds", client_state={
                "step": self.step, "best": self.best, "best_metrics": self.best_metrics})
            if self.rank == 0:
                self.save_best_student(Path(tmp) / "best_student")
                (Path(tmp) / "kd_progress.json").write_text(json.dumps({"step": self.step, **metrics}) + "\n")
            per_rank = [None] * self.world
            dist.all_gather_object(per_rank, file_digests(Path(tmp)))
            if self.rank == 0:
                seal_checkpoint(self.cfg, Path(tmp), self.step, per_rank)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def finish(self) -> None:
        """The final report; rank 0 first saves the best student, registers it (with MLflow) and writes final.json."""
        import ray.train

        target = self.target
        final = {"step": self.step, "best_" + target: self.best if self.validator else float("nan"),
                 **{f"best_val_{k}": v for k, v in self.best_metrics.items()}}
        if self.rank == 0:
            # the best student (the last one without validation), saved once, as a plain kd folder at a fixed path
            # (the example configs score_teachers_scifact.yaml and tinybert_scifact.yaml name
            # <storage>/<run>/final_model as a teacher); the pyfunc model logged from it carries the same folder into
            # MLflow and the registry
            self.storage.mkdir(parents=True, exist_ok=True)
            folder = self.save_best_student(self.storage / "final_model")
            final["final_model"] = str(folder)
            if self.run is not None:
                import mlflow

                final.update(_register(self.cfg, folder, self.best_metrics))
                mlflow.log_metric("best_" + target, final["best_" + target])
                final["mlflow_run_id"] = self.run.info.run_id
                mlflow.end_run()
            (self.storage / "final.json").write_text(json.dumps(final, indent=2, default=str) + "\n")
        ray.train.report({k: v for k, v in final.items() if isinstance(v, (int, float, str))})
