"""What keeps a distill run one run, checked before (and, for checkpoints, also inside) Ray Train.

- One job per run.name: an exclusive lock on the run's folder for the job's life (`run_lock`).
- One config per run.name: the fields that define a run are fingerprinted in the folder; a rerun that changed
  them is refused, naming them (`check_same_run`).
- Workers that the cluster can hold: num_workers × per-worker resources against the cluster's total
  (`check_resources`).
- Only checkpoints the job wrote are resumed: each carries a manifest of its files' sha256, whose own digest is kept
  where only the job writes (`record_digest`, `checkpoint_problem`, `verify_restored`).
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Iterator

import torch

from kd.configs.errors import ConfigError
from kd.configs.distill import DistillConfig
from kd.data import FormatError
from kd.runtime.tracking import Tag, find_run
from kd.teachers.checks import sha256_file  # the one file digest (teacher corpora, checkpoints)

logger = logging.getLogger(__name__)


def distill_run(cfg: DistillConfig):
    """The MLflow run of `run.name` (tag kd.run_name) in the config's experiment, or None (read-only:
    kd.runtime.tracking.find_run)."""
    return find_run(cfg.mlflow.experiment, {Tag.RUN_NAME: cfg.run.name}, tracking_uri=cfg.mlflow.tracking_uri)


# ====================================================================================== one run name, one run
LOCK_FILE = ".kd_lock"
RUN_FILE = "kd_run.json"


def run_folder(cfg: DistillConfig) -> Path:
    """Where Ray Train keeps the run (checkpoints) and the job its own files (final.json, final_model, ...)."""
    return Path(cfg.run.storage_path) / cfg.run.name


@contextlib.contextmanager
def run_lock(cfg: DistillConfig) -> Iterator[None]:
    """Hold an exclusive lock on the run's folder for the job's life: two jobs started at once with the same
    run.name both trained, registered versions 1 and 2 and both reported version 2. The second job now fails at
    once, naming the holder (pid, host, start time written into the lock file). flock is released by the kernel
    when the holder dies, so a killed job never leaves a stale lock (on NFS it needs working NFS locking)."""
    folder = run_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    f = open(path, "a+")  # noqa: SIM115 - held open (and locked) until the job ends
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "holder unknown (it is still starting)"
        f.close()
        raise ConfigError(f"field run.name: run {cfg.run.name!r} is in use by another job: {holder} (lock file "
                          f"{path}); wait for it to end, or pick another run.name") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()}, started "
                f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}\n")
        f.flush()
        yield
    finally:
        f.truncate(0)  # the next holder is named only once it has written itself in
        f.close()  # closing releases the lock


def check_same_run(cfg: DistillConfig) -> None:
    """A rerun under an existing run.name resumes its checkpoint, so it must be the same run: a changed lr, teacher
    file or max_steps silently "resumed at step 2" of the old one. The fields that define a run
    (kd.training.run_fields) are kept in <run folder>/kd_run.json; a mismatch is refused, naming the fields."""
    from kd.configs.base import fingerprint
    from kd.training import changed_fields, run_fields

    fields = run_fields(cfg)
    path = run_folder(cfg) / RUN_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") != fingerprint(fields):
            changed = "; ".join(changed_fields(saved.get("fields", {}), fields))
            raise ConfigError(
                f"field run.name: run {cfg.run.name!r} already exists at {run_folder(cfg)} with a different config "
                f"(changed: {changed}); a run resumes only unchanged. To start fresh, pick a new run.name or "
                f"delete {run_folder(cfg)}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"fingerprint": fingerprint(fields), "fields": fields}, indent=1, default=str) + "\n")


# ========================================================================================= cluster resources
def may_autoscale() -> bool:
    """Whether the cluster can grow, so that a need above today's total is not final. Yes when:
    - the job runs in a KubeRay pod (the operator sets RAY_USAGE_STATS_KUBERAY_IN_USE, as Ray's usage stats read it):
      its worker groups may scale (enableInTreeAutoscaling), and KubeRay's default (v1) autoscaler publishes nothing
      to the GCS;
    - an autoscaler published its node groups to the GCS (autoscaler v2; Ray Train then checks their maximum itself);
    - this head was started by the Ray cluster launcher (`ray up` leaves ~/ray_bootstrap_config.yaml on the head,
      where submitted jobs' drivers run).
    Otherwise (`ray start`, a local ray.init) the cluster is what it is."""
    if "RAY_USAGE_STATS_KUBERAY_IN_USE" in os.environ:
        return True
    from ray._private import state

    try:
        if state.state.get_cluster_config() is not None:
            return True
    except Exception:  # noqa: BLE001 - not connected, or a GCS without the autoscaler-state API: the other signs
        pass
    return (Path.home() / "ray_bootstrap_config.yaml").is_file()


def worker_resources(t) -> dict[str, float]:
    """The Ray resources of one training worker (`cfg.training`): its CPUs, and one GPU with use_gpu."""
    return {"CPU": float(t.cpus_per_worker), **({"GPU": 1.0} if t.use_gpu else {})}


def resource_shortfall(cfg: DistillConfig, total: dict, largest_node: dict) -> list[str]:
    """What `training.num_workers` × per-worker resources need that the cluster does not have: all workers
    together against the cluster's total, and one worker against the largest node (a worker cannot span nodes)."""
    t = cfg.training
    per_worker = worker_resources(t)
    out = []
    for res, each in per_worker.items():
        need, have, node = each * t.num_workers, float(total.get(res, 0.0)), float(largest_node.get(res, 0.0))
        if need > have + 1e-9:
            out.append(f"{need:g} {res} (training.num_workers {t.num_workers} × {each:g} {res} per worker"
                       f"{'' if res == 'GPU' else ', training.cpus_per_worker'}) but the cluster has {have:g}")
        elif each > node + 1e-9:
            out.append(f"{each:g} {res} per worker on one node, but the largest node has {node:g}")
    return out


def check_resources(cfg: DistillConfig) -> None:
    """Fail before the trainer is built when the workers can never be placed (Ray Train would wait forever: 4
    workers on a 2-CPU machine retried without end); on a cluster that may autoscale (`may_autoscale`) only warn."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    largest = {res: max((n.get(res, 0.0) for n in nodes), default=0.0) for res in ("CPU", "GPU")}
    short = resource_shortfall(cfg, ray.cluster_resources(), largest)
    if not short:
        return
    message = "the workers need " + "; ".join(short)
    if may_autoscale():
        logger.warning("%s: waiting for the autoscaler to add nodes", message)
        return
    raise ConfigError(f"field training.num_workers: {message}; lower training.num_workers / "
                      "training.cpus_per_worker or join a larger cluster (RAY_ADDRESS)")


# ================================================================================== checkpoint integrity
# Resuming runs DeepSpeed's load_checkpoint, which unpickles (torch.load(weights_only=False)) whatever lies in the
# checkpoint folder on shared storage: a payload placed there ran on resume. So every checkpoint carries a
# manifest (kd_manifest.json: the sha256 of every file the ranks wrote), the manifest's own sha256 is recorded where
# only the job writes — a tag of the run's MLflow run, or without MLflow a ledger file in ~/.cache/kd on rank 0's
# machine — and a checkpoint is loaded only when its manifest is one the job recorded and every file matches it.
MANIFEST = "kd_manifest.json"
DIGEST_TAG = Tag.CHECKPOINT_SHA256


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (but the manifest), by path relative to it."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def manifest_bytes(step: int, per_rank: list[dict[str, str]]) -> bytes:
    """The checkpoint's manifest from every rank's file digests (Ray merges the ranks' folders into one)."""
    files: dict[str, str] = {}
    for digests in per_rank:
        for name, digest in digests.items():
            if files.setdefault(name, digest) != digest:
                raise RuntimeError(f"checkpoint at step {step}: ranks wrote different contents to {name}")
    return json.dumps({"step": step, "files": files}, indent=1, sort_keys=True).encode() + b"\n"


def seal_checkpoint(cfg: DistillConfig, folder: Path, step: int, per_rank: list[dict[str, str]]) -> None:
    """Rank 0, before the checkpoint is reported: write its manifest into `folder` and record the manifest's
    digest where only the job writes."""
    manifest = manifest_bytes(step, per_rank)
    (folder / MANIFEST).write_bytes(manifest)
    record_digest(cfg, step, hashlib.sha256(manifest).hexdigest())


def checkpoint_problem(folder: Path, trusted: set[str]) -> str | None:
    """Why `folder` must not be loaded (None: it is exactly what the job saved). Extra files count too: DeepSpeed
    globs its folder for shards."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return (f"{folder}: no {MANIFEST} (written by kd since checkpoints are verified): it was not saved by this "
                "job, or by an older kd")
    raw = manifest.read_bytes()
    if hashlib.sha256(raw).hexdigest() not in trusted:
        return (f"{manifest}: not a manifest this run recorded ({len(trusted)} recorded): the checkpoint was replaced "
                "or edited after the job saved it")
    try:
        expected = json.loads(raw)["files"]
    except (ValueError, KeyError, TypeError):
        return f"{manifest}: not a kd checkpoint manifest"
    actual = file_digests(folder)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            return f"{folder / name}: listed in the manifest but missing"
        if name not in expected:
            return f"{folder / name}: not written by the job (not in {MANIFEST})"
        if actual[name] != expected[name]:
            return f"{folder / name}: sha256 differs from the one recorded when the job saved it"
    return None


def _ledger_path(cfg: DistillConfig) -> Path:
    key = hashlib.sha256(str(run_folder(cfg).resolve()).encode()).hexdigest()[:24]
    return Path.home() / ".cache" / "kd" / "checkpoint_digests" / f"{key}.json"


def record_digest(cfg: DistillConfig, step: int, digest: str) -> None:
    """Rank 0, before the checkpoint is reported: remember its manifest's sha256 where only the job writes."""
    if cfg.mlflow.enabled:
        import mlflow

        mlflow.set_tag(f"{DIGEST_TAG}{step}", digest)  # the run rank 0 has open
        return
    path = _ledger_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    ledger = json.loads(path.read_text()) if path.exists() else {}
    ledger[str(step)] = digest
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ledger, indent=1) + "\n")
    os.replace(tmp, path)


def trusted_digests(cfg: DistillConfig) -> set[str]:
    """The manifest digests this run recorded (see `record_digest`)."""
    if cfg.mlflow.enabled:
        run = distill_run(cfg)
        return {v for k, v in (run.data.tags if run else {}).items() if k.startswith(DIGEST_TAG)}
    path = _ledger_path(cfg)
    return set(json.loads(path.read_text()).values()) if path.exists() else set()


def refuse_checkpoint(problem: str, cfg: DistillConfig) -> FormatError:
    return FormatError(f"refusing to resume run {cfg.run.name!r} from this checkpoint: {problem}. Resuming "
                       "unpickles the checkpoint, so only files this job saved are loaded; to start fresh, pick a new "
                       f"run.name or delete {run_folder(cfg)}")


def latest_checkpoint(cfg: DistillConfig) -> Path | None:
    """The checkpoint Ray Train will restore: the latest one in its checkpoint-manager snapshot."""
    snapshot = run_folder(cfg) / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]
        return run_folder(cfg) / latest["checkpoint_dir_name"] if latest else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_resumable(cfg: DistillConfig) -> None:
    """Driver, before Ray Train starts: refuse a tampered latest checkpoint at once (exit code 2) instead of after
    the workers started and retried. With MLflow only — the ledger lives on rank 0's machine, so without MLflow the
    workers' own check (every resume, `train_loop_per_worker`) is the only one."""
    folder = latest_checkpoint(cfg)
    if folder is None or not cfg.mlflow.enabled:
        return
    problem = checkpoint_problem(folder, trusted_digests(cfg))
    if problem:
        raise refuse_checkpoint(problem, cfg)



def verify_restored(cfg: DistillConfig, folder: Path, rank: int, device: torch.device) -> None:
    """Every rank checks the checkpoint it is about to load against the digests rank 0 read from the run's record
    (`trusted_digests`); if any rank refuses, all raise (none is left waiting in load_checkpoint's collectives)."""
    import torch.distributed as dist

    box = [trusted_digests(cfg) if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    problem = checkpoint_problem(folder, box[0])
    refused = torch.tensor([float(problem is not None)], device=device)
    dist.all_reduce(refused)
    if problem or refused.item():
        raise refuse_checkpoint(problem or "another worker found it altered", cfg)
