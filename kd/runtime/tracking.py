"""MLflow runs, one vocabulary for every job: the tag names (`Tag`), finding a run by its tags (`find_run`), starting
one (`create_run`) or reopening a rerun's (`find_or_create_run`), params (`log_params`), the tracking server check and
`mlflow_run` (a run that never stays RUNNING). Registered model versions: kd/runtime/registry.py."""
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
from mlflow import MlflowClient
from mlflow.entities import Param

from kd.configs.errors import ConfigError
from kd.configs.common import MLflowConfig
from kd.runtime.interrupts import run_status

logger = logging.getLogger(__name__)


class Tag:
    """The run tags kd writes and finds runs by (MLflow's own nesting tag included); model-version tags are plain
    names (kd/runtime/registry.py)."""

    JOB = "kd.job"  # distill | evaluate | score_teachers | sweep | pipeline | pipeline.<stage kind>
    RUN_NAME = "kd.run_name"  # what a rerun finds its run by: a distill run.name, a reused run's name
    GIT_COMMIT = "kd.git_commit"
    DATASET = "kd.dataset"
    MODE = "kd.mode"
    TASK = "kd.task"
    MODEL = "kd.model"  # an evaluation run's model label
    MODEL_PATH = "kd.model_path"
    MODEL_URI = "kd.model_uri"
    PIPELINE = "kd.pipeline"
    STAGE = "kd.stage"
    PARENT = "mlflow.parentRunId"  # nests a run under another in the MLflow UI
    SWEEP_NAME = "kd.sweep_name"  # a sweep's parent run
    SWEEP = "kd.sweep"  # a trial's run: its sweep
    TRIAL_ID = "kd.trial_id"
    SWEEP_PATH = "kd.sweep.path"
    SWEEP_PARAMS = "kd.sweep.params"
    MAX_CONCURRENT = "kd.sweep.max_concurrent_trials"
    STOPPED_EARLY = "kd.sweep.stopped_early"
    STOPPED_AT_STEP = "kd.sweep.stopped_at_step"
    BEST_TRIAL = "kd.sweep.best_trial"
    BEST_RUN_ID = "kd.sweep.best_run_id"
    CHAMPION_RUN_ID = "kd.sweep.champion_run_id"
    CHAMPION_VERSION = "kd.sweep.champion_version"
    CHAMPION_URI = "kd.sweep.champion_uri"
    CHECKPOINT_SHA256 = "kd.checkpoint_sha256.step_"  # + the step: a checkpoint manifest's digest (run_guards.py)

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
    another run. Names checked by kd.configs (SafeName) never hit the refusal.
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


def absolute_tracking_uri(uri: str | None) -> str | None:
    """`uri` with a relative sqlite path or a plain local folder made absolute (`sqlite:///mlflow.db` means the
    working folder's mlflow.db in every process, also in Ray workers that run elsewhere); other URIs unchanged."""
    if not uri:
        return uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if ":" not in uri and (uri.startswith((".", "/", "~")) or "/" in uri):  # a plain local path (file store)
        return str(Path(uri).expanduser().resolve())
    return uri


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


def log_params(params: dict[str, Any], run_id: str | None = None, client=None) -> None:
    """MLflow params are strings ≤ 6000 chars; None becomes "None"; batches of 100. Into `run_id` through `client`
    (default: the process's active run, through MLflow's current tracking URI).

    A reopened run (a rerun of the same job) already holds params, and MLflow refuses to change one: params it
    holds with the same value are skipped, changed ones keep their first value and are named in a warning."""
    items = {k: str(v)[:6000] for k, v in params.items()}
    if run_id is None:
        run = mlflow.active_run()
        run_id = run.info.run_id if run is not None else None
    client = client or MlflowClient()
    old = client.get_run(run_id).data.params if run_id is not None else {}
    changed = sorted(k for k in items if k in old and old[k] != items[k])
    if changed:
        logger.warning("MLflow run %s keeps the params of its first run; changed since: %s", run_id,
                       ", ".join(f"{k} ({old[k]!r} → {items[k]!r})" for k in changed))
    new = [(k, v) for k, v in items.items() if k not in old]
    for i in range(0, len(new), 100):
        if run_id is None:  # no run yet: MLflow's fluent API starts one
            mlflow.log_params(dict(new[i : i + 100]))
        else:
            client.log_batch(run_id, params=[Param(k, v) for k, v in new[i : i + 100]])


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


def find_run(experiment: str, tags: dict[str, str], *, tracking_uri: str | None = None, client=None):
    """The newest run of `experiment` holding every one of `tags` (exact values), or None. Read-only, through an
    MlflowClient: it leaves the process's active run and experiment alone (the driver of a pipeline or a sweep has
    its own parent run open)."""
    client = client or MlflowClient(tracking_uri)
    found_experiment = client.get_experiment_by_name(experiment)
    if found_experiment is None:
        return None
    where = " and ".join(f"tags.`{k}` = {filter_literal(v)}" for k, v in tags.items())
    found = client.search_runs([found_experiment.experiment_id], filter_string=where,
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def create_run(experiment: str, run_name: str, tags: dict[str, str], *, params: dict | None = None, client=None):
    """A new run of `experiment` tagged kd.git_commit and `tags`, with `params` logged. Without `client` it is the
    process's active run (MLflow's fluent API: the experiment is the one `use_experiment` set) and an ActiveRun is
    returned; with one it is created through it (no active-run state: the caller's stage runtimes may start their
    own) and the Run is returned."""
    tags = {Tag.GIT_COMMIT: git_commit() or "unknown", **tags}
    if client is None:
        run = mlflow.start_run(run_name=run_name, tags=tags)
    else:
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    if params:
        log_params(params, run.info.run_id, client)
    return run


def find_or_create_run(experiment: str, key: dict[str, str], run_name: str, tags: dict[str, str] | None = None, *,
                       params: dict | None = None, client=None) -> tuple[Any, bool]:
    """(run, created): the newest run of `experiment` tagged `key`, reopened (RUNNING again), or a new one tagged
    `tags` and `key` with `params` logged (`create_run`; `client` as there). A rerun of a job, a restarted worker
    group, a resumed sweep or pipeline continue the run their first start made."""
    found = find_run(experiment, key, client=client)
    if found is None:
        return create_run(experiment, run_name, {**(tags or {}), **key}, params=params, client=client), True
    if client is None:
        return mlflow.start_run(run_id=found.info.run_id), False
    if found.info.status != "RUNNING":
        client.update_run(found.info.run_id, status="RUNNING")
    return found, False


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
    tags = dict(tags or {})
    if reuse:
        key = {Tag.JOB: tags.get(Tag.JOB, ""), Tag.RUN_NAME: name}
        run, _ = find_or_create_run(cfg.experiment, key, name, tags)
    else:
        run = create_run(cfg.experiment, name, tags)
    try:
        yield run
    except BaseException as exc:
        mlflow.end_run(run_status(exc))
        raise
    mlflow.end_run(run_status(None))
