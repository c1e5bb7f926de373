"""Registered models as MLflow pyfunc: `mlflow models serve -m models:/name@alias` scores (query, passage) rows.

The pyfunc is logged as *models-from-code* (`python_model=` the path of kd/runtime/pyfunc_model.py, which calls
`mlflow.models.set_model(KDRanker())`): the artifact holds that file, kd's code and the HF-format model folder, and
no cloudpickled `python_model.pkl`, so `mlflow models serve` and `mlflow.pyfunc.load_model` import the project's code
and never unpickle. Versions logged before that (with a .pkl) still load through `kd.load`, which reads only the model
folder; MLflow itself serves them only while MLFLOW_ALLOW_PICKLE_DESERIALIZATION allows it.
"""
from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

ARTIFACT_KEY = "kd_model"
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # the models-from-code file MLflow stores and runs
ARTIFACT_FIELD = f"flavors.python_function.artifacts.{ARTIFACT_KEY}.path"  # where the MLmodel names the kd folder


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
    """Log a saved kd model folder as a models-from-code pyfunc (kd's code included) and optionally register it.

    `python_model` is a file path, not a KDRanker instance: MLflow copies the file into the artifact and runs it when
    the model is loaded, instead of cloudpickling an object that every later load would have to unpickle."""
    import kd

    return mlflow.pyfunc.log_model(
        name=artifact_name,
        python_model=str(MODEL_CODE),
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
    if dst is not None:  # the caller moves what this returns: it must lie in the folder the caller gave
        inside_artifact(Path(dst), str(local), f"{model_uri}: the downloaded artifact")
    spec = yaml.safe_load((local / "MLmodel").read_text())
    try:
        rel = spec["flavors"]["python_function"]["artifacts"][ARTIFACT_KEY]["path"]
    except (KeyError, TypeError):
        raise ValueError(f"{model_uri} is not a kd ranker (its MLmodel has no '{ARTIFACT_KEY}' artifact)") from None
    return inside_artifact(local, rel, f"{model_uri}: its MLmodel field {ARTIFACT_FIELD}")


def inside_artifact(root: Path, rel: object, what: str) -> Path:
    """`root / rel`, resolved, refused (ValueError naming `what` and the value) unless it stays inside `root`.

    An MLmodel is data from the artifact store, not from this process: an absolute path or one climbing out with `..`
    (or a symlink leading out) made kd.runtime.registry.fetch `os.replace` a folder from outside the artifact into its
    cache. Links inside the folder must stay inside too, or loading would read files from elsewhere."""
    base = Path(root).resolve()
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError(f"{what} = {rel!r} is not a path inside the artifact")
    path = (base / rel).resolve()
    if not path.is_relative_to(base):
        raise ValueError(f"{what} = {rel!r} points outside the downloaded artifact {base} (to {path}); refusing to "
                         "load it: a model's files must lie inside its own artifact")
    if path.is_dir():
        for link in (p for p in path.rglob("*") if p.is_symlink()):
            if not link.resolve().is_relative_to(base):
                raise ValueError(f"{what} = {rel!r}: {link.relative_to(path)} is a link to {link.resolve()}, outside "
                                 f"the downloaded artifact {base}; refusing to load it")
    return path
