"""Sections several jobs share: where runs are tracked (MLflow) and where id → text comes from."""
from __future__ import annotations

from kd.configs.base import Strict
from kd.configs.fields import ExistingFile


class MLflowConfig(Strict):
    """Where runs are tracked. tracking_uri None → $MLFLOW_TRACKING_URI, else MLflow's default local store."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "kd"
    run_name: str | None = None
    # where a *new* experiment stores artifacts; None: the server's default, or <db folder>/mlartifacts for a
    # sqlite:/// URI (MLflow's own default there is ./mlruns relative to whichever process creates the experiment)
    artifact_location: str | None = None


class TextSource(Strict):
    """Id → text: queries (queries.jsonl or id<TAB>text TSV) and passages (corpus.jsonl or collection TSV)."""

    queries: ExistingFile
    passages: ExistingFile
    use_title: bool = True
