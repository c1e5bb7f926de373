"""Starting or joining Ray: the same job code runs locally and under `ray job submit`."""
from __future__ import annotations

import logging
import os

import ray

from kd.runtime.interrupts import keep_signal_handlers

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster named by `address` / $RAY_ADDRESS (as under `ray job submit`), else start a local one."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"address": address} if address else {"num_cpus": num_cpus}
    env = forwarded_env()
    try:
        with keep_signal_handlers():  # ray.init sets a SIGTERM handler that exits 15 without unwinding the job
            ray.init(**kwargs, runtime_env={"env_vars": env} if env else None, log_to_driver=True)
    except ConnectionError as e:
        if address and address != "auto" and "RAY_AUTH_MODE" not in os.environ:
            raise ConnectionError(
                f"{e}. Clusters started with `ray start` use token authentication when ~/.ray/auth_token exists; "
                "Ray 2.60 clients connecting to an explicit address must then set RAY_AUTH_MODE=token "
                "(or use RAY_ADDRESS=auto on the head node, or `ray job submit`)."
            ) from e
        raise
    logger.info("Ray: %s", ray.cluster_resources())


def started_local_ray() -> bool:
    """Whether the Ray this process is connected to was started by it: `ray.init()` without an address starts its
    gcs_server as a child of the driver, a joined cluster (RAY_ADDRESS, `ray job submit`, a `ray start` head found by
    auto-detection) has none here. Decided from the process tree, so a Ray that Ray Data or Tune started implicitly
    counts too."""
    if not ray.is_initialized():
        return False
    import psutil

    for child in psutil.Process().children():
        try:
            if child.name() == "gcs_server":
                return True
        except psutil.Error:  # exited meanwhile
            continue
    return False


def shutdown_local_ray() -> bool:
    """Shut down the local Ray this process started (jobs/_common.run_job calls it on every exit, interrupted or not),
    so that a job killed with SIGTERM or Ctrl+C leaves no raylet, gcs_server or workers behind. A joined cluster is
    left alone: it is not this job's to stop, and Ray disconnects from it at exit. Returns whether it shut down."""
    if not started_local_ray():
        return False
    logger.info("shutting down the local Ray this job started")
    ray.shutdown(wait_for_processes=True)  # the job's exit status comes after its Ray processes are gone
    return True


# glibc malloc settings for the job's workers (set when the process starts, so only through its environment): keep
# freed memory in the heap for the next step's tensors of the same sizes instead of trimming it and faulting it back
# in. One 1-core Ray Train worker, the quickstart's 2-layer BERT_DOT, AVX2 fp32, 30 steps, single runs on a noisy
# 2-core VM: 2.13 and 2.27 s/step with glibc's defaults, 1.70, 1.90 and 2.07 with these (the same loop in a plain
# process: 1.68-1.83) — a modest gain, not a cure for the worker being slower than a plain process.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296",
                 "MALLOC_TOP_PAD_": "536870912"}


def forwarded_env() -> dict[str, str]:
    """The driver's offline and tracking settings, handed on to the workers, and WORKER_MALLOC (a value the driver
    has is kept) — except those a submitted job's runtime env already sets (`ray job submit --runtime-env-json
    '{"env_vars": {...}}'`): Ray refuses to merge the job's runtime env with ray.init's when both name the same
    variable."""
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MLFLOW_TRACKING_URI") if k in os.environ}
    env.update({k: os.environ.get(k, v) for k, v in WORKER_MALLOC.items()})
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if raw:
        import json

        try:
            job_vars = set((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
        except (ValueError, AttributeError):
            job_vars = set()
        env = {k: v for k, v in env.items() if k not in job_vars}
    return env
