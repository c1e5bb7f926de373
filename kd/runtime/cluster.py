"""Starting or joining Ray: the same job code runs locally and under `ray job submit`."""
from __future__ import annotations

import logging
import os

import ray

logger = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster named by `address` / $RAY_ADDRESS (as under `ray job submit`), else start a local one."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"address": address} if address else {"num_cpus": num_cpus}
    # workers never reach a model hub unless the user's environment says so
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MLFLOW_TRACKING_URI") if k in os.environ}
    ray.init(**kwargs, runtime_env={"env_vars": env} if env else None, log_to_driver=True)
    logger.info("Ray: %s", ray.cluster_resources())
