"""MLflow tracking helpers (runs, params, teacher identities)."""
from __future__ import annotations

import contextlib
import logging
import os
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import mlflow

from kd.config import ConfigError, MLflowConfig
from kd.runtime.interrupts import run_status

logger = logging.getLogger(__name__)

# seconds the tracking server gets to answer /health: a server that answers nothing within it would otherwise cost
# minutes of MLflow's own retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES=7 with backoff, MLFLOW_HTTP_REQUEST_TIMEOUT=120 s)
HEALTH_TIMEOUT_S = 4.0


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parents[2],
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def filter_literal(value: str) -> str:
    """`value` as an MLflow filter-string literal that matches exactly `value`, for every user-controlled value.

    MLflow's filter grammar has no escape sequence: a literal is the text between a pair of single or double
    quotes, taken verbatim. So the literal is single-quoted, or double-quoted when the value holds a single quote.
    A value holding both quote characters, or a backslash (sqlparse reads a backslash before a quote as an escape
    that MLflow never undoes, so the literal would end elsewhere or match other text), cannot be written exactly
    and is refused rather than pasted in: pasted unquoted, `it's` crashed the job and a crafted name matched
    another run. Names checked by kd.config (NAME_PATTERN) never hit the refusal.
    """
    if not isinstance(value, str):
        raise TypeError(f"filter_literal: expected a string, got {type(value).__name__}")
    if "\\" in value or ("'" in value and '"' in value):
        raise ValueError(
            f"{value!r} cannot be used in an MLflow filter: it holds a backslash or both quote characters, "
            "which MLflow's filter grammar cannot express exactly")
    quote = '"' if "'" in value else "'"
    return f"{quote}{value}{quote}"


class TrackingServerError(ConfigError):
    """The tracking server named by the config (or $MLFLOW_TRACKING_URI) does not answer."""


def tracking_uri(cfg: MLflowConfig) -> str | None:
    """The URI a job tracks to: cfg.tracking_uri, else $MLFLOW_TRACKING_URI (None: MLflow's default local store)."""
    return cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


_answered: set[str] = set()


def _tls_context() -> ssl.SSLContext | None:
    """The TLS settings MLflow's client honours: MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_SERVER_CERT_PATH."""
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    cafile = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cafile) if cafile else None


def check_tracking_server(cfg: MLflowConfig, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Fail in seconds, naming the URI, when an http(s) tracking server does not answer its /health endpoint.

    Called by every job before any Ray work (jobs/_common.run_job) and by `use_experiment`: without it a server that
    is down, or accepts connections but never replies, surfaces only after 4-7 minutes of MLflow's HTTP retries,
    after the training or evaluation it was meant to record. Any HTTP answer below 500 counts as alive (a proxy's
    401/404 is the server's business); 5xx, refused connections and silence within `timeout` are errors. File and
    database stores are not checked (nothing to wait for). Each URI is checked once per process.
    """
    uri = tracking_uri(cfg)
    if not cfg.enabled or not uri or not uri.startswith(("http://", "https://")) or uri in _answered:
        return
    source = "mlflow.tracking_uri" if cfg.tracking_uri else "$MLFLOW_TRACKING_URI"
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout, context=_tls_context()):
            pass
    except urllib.error.HTTPError as e:
        if e.code >= 500:
            raise TrackingServerError(f"{source}: the MLflow tracking server {uri} answered {health} with HTTP "
                                      f"{e.code} {e.reason}") from None
    except (OSError, ValueError) as e:  # refused, unreachable, DNS, timeout (socket.timeout is an OSError)
        reason = getattr(e, "reason", None) or e
        raise TrackingServerError(
            f"{source}: the MLflow tracking server {uri} does not answer ({health}: {reason}, waited at most "
            f"{timeout:g} s); start it, fix the URI, or set mlflow.enabled=false") from None
    _answered.add(uri)


def log_params(params: dict[str, Any]) -> None:
    """MLflow params are strings ≤ 6000 chars; None becomes "None"; batches of 100.

    A reopened run (a rerun of the same job) already holds params, and MLflow refuses to change one: params it
    holds with the same value are skipped, changed ones keep their first value and are named in a warning."""
    items = {k: str(v)[:6000] for k, v in params.items()}
    run = mlflow.active_run()
    old = mlflow.get_run(run.info.run_id).data.params if run is not None else {}
    changed = sorted(k for k in items if k in old and old[k] != items[k])
    if changed:
        logger.warning("MLflow run %s keeps the params of its first run; changed since: %s", run.info.run_id,
                       ", ".join(f"{k} ({old[k]!r} → {items[k]!r})" for k in changed))
    new = [(k, v) for k, v in items.items() if k not in old]
    for i in range(0, len(new), 100):
        mlflow.log_params(dict(new[i : i + 100]))


def use_experiment(cfg: MLflowConfig) -> None:
    """Point MLflow at cfg's tracking URI and experiment, creating it with a stable artifact location."""
    check_tracking_server(cfg)
    if cfg.tracking_uri:
        mlflow.set_tracking_uri(cfg.tracking_uri)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        location = cfg.artifact_location
        uri = mlflow.get_tracking_uri()
        if location is None and uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        try:
            mlflow.create_experiment(cfg.experiment, artifact_location=location)
        except mlflow.exceptions.MlflowException:  # created meanwhile by another process
            pass
    mlflow.set_experiment(cfg.experiment)


def find_run(job: str, run_name: str) -> str | None:
    """The id of the newest run of the active experiment tagged kd.job=`job` and kd.run_name=`run_name`."""
    found = mlflow.search_runs(
        filter_string=f"tags.`kd.job` = {filter_literal(job)} AND tags.`kd.run_name` = {filter_literal(run_name)}",
        order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    return found[0].info.run_id if found else None


@contextlib.contextmanager
def mlflow_run(cfg: MLflowConfig, run_name: str, tags: dict[str, str] | None = None, *,
               reuse: bool = False) -> Iterator[Any]:
    """A run in cfg.experiment (or nothing when tracking is disabled), ended FINISHED, or KILLED / FAILED
    (`run_status`) when the body raises, Ctrl+C included, so no run stays RUNNING after the process is gone.

    `reuse`: a rerun of the same job (same kd.job tag and run name, tagged kd.run_name) reopens that run instead of
    starting a second one, as jobs.distill does for its run.name."""
    if not cfg.enabled:
        yield None
        return
    use_experiment(cfg)
    name = cfg.run_name or run_name
    all_tags = {"kd.git_commit": git_commit() or "unknown", **(tags or {})}
    run_id = None
    if reuse:
        all_tags["kd.run_name"] = name
        run_id = find_run(all_tags.get("kd.job", ""), name)
    run = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(run_name=name, tags=all_tags)
    try:
        yield run
    except BaseException as exc:
        mlflow.end_run(run_status(exc))
        raise
    mlflow.end_run(run_status(None))
