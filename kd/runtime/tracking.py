"""MLflow tracking helpers (runs, params, teacher identities)."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any, Iterator

import mlflow

from kd.config import MLflowConfig


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


def log_params(params: dict[str, Any]) -> None:
    """MLflow params are strings ≤ 6000 chars; None becomes "None"; batches of 100."""
    items = [(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


def use_experiment(cfg: MLflowConfig) -> None:
    """Point MLflow at cfg's tracking URI and experiment, creating it with a stable artifact location."""
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


@contextlib.contextmanager
def mlflow_run(cfg: MLflowConfig, run_name: str, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """A run in cfg.experiment (or nothing when tracking is disabled)."""
    if not cfg.enabled:
        yield None
        return
    use_experiment(cfg)
    all_tags = {"kd.git_commit": git_commit() or "unknown", **(tags or {})}
    with mlflow.start_run(run_name=cfg.run_name or run_name, tags=all_tags) as run:
        yield run
