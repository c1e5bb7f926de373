"""Registered models as MLflow pyfunc: `mlflow models serve -m models:/name@alias` scores (query, passage) rows."""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

ARTIFACT_KEY = "kd_model"


class KDRanker(mlflow.pyfunc.PythonModel):
    """Input: a frame with `query` and `passage` columns; output: one float score per row."""

    def load_context(self, context):
        from kd.models import Ranker

        self.model = Ranker.from_pretrained(context.artifacts[ARTIFACT_KEY])

    def predict(self, context, model_input, params=None):
        missing = {"query", "passage"} - set(model_input.columns)
        if missing:
            raise ValueError(f"input needs columns 'query' and 'passage'; missing {sorted(missing)}")
        batch_size = int((params or {}).get("batch_size", 64))
        scores = self.model.predict(
            [str(q) for q in model_input["query"]], [str(p) for p in model_input["passage"]], batch_size=batch_size
        )
        return np.asarray(scores, dtype=np.float32)


# what `mlflow models serve` and pyfunc.predict accept: two string columns, one float per row, an optional batch size
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "query"), ColSpec("string", "passage")]),
    outputs=Schema([ColSpec("float")]),
    params=ParamSchema([ParamSpec("batch_size", "long", 64)]),
)


def log_ranker(folder: str | Path, registered_name: str | None = None, artifact_name: str = "model"):
    """Log a saved kd model folder as a pyfunc (kd's code included) and optionally register it."""
    import kd

    return mlflow.pyfunc.log_model(
        name=artifact_name,
        python_model=KDRanker(),
        artifacts={ARTIFACT_KEY: str(folder)},
        signature=SIGNATURE,
        code_paths=[str(Path(kd.__file__).parent)],
        pip_requirements=_requirements(),
        registered_model_name=registered_name,
    )


def _requirements() -> list[str]:
    from importlib.metadata import version

    reqs = []
    for pkg in ("torch", "transformers", "safetensors", "numpy", "pandas", "pyyaml", "pydantic", "tqdm"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except Exception:  # noqa: BLE001 - a missing optional package is simply not pinned
            reqs.append(pkg)
    return reqs


def download_ranker_folder(model_uri: str, dst: str | Path | None = None, tracking_uri: str | None = None) -> Path:
    """Download a logged/registered kd model (`models:/name@alias`, `runs:/…`) and return its HF-format folder.

    `tracking_uri`: the server to ask (also as the registry); default: MLflow's current tracking URI."""
    import contextlib

    import yaml
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    # MLflow resolves models:/ URIs (registered and logged models) against the *global* URIs, whatever
    # download_artifacts(tracking_uri=...) says: point them at the server for this call only
    with _use_tracking_uri(tracking_uri) if tracking_uri else contextlib.nullcontext():
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst) if dst else None,
                                                         tracking_uri=tracking_uri))
    spec = yaml.safe_load((local / "MLmodel").read_text())
    try:
        rel = spec["flavors"]["python_function"]["artifacts"][ARTIFACT_KEY]["path"]
    except (KeyError, TypeError):
        raise ValueError(f"{model_uri} is not a kd ranker (its MLmodel has no '{ARTIFACT_KEY}' artifact)") from None
    return local / rel
