"""The model registry, one module: find a ranker by URI and fetch it once (`resolve`, `fetch`, `load` behind
`kd.load`), and publish a registered version (`publish_version`: its tags, then its alias).

    import kd
    ranker = kd.load("models:/scifact-bert-dot@champion")     # or models:/name/3, runs:/<id>/model, a kd folder,
    scores = ranker.rerank("what causes fever", passages)       #    an HF / sentence-transformers name or folder
    q = ranker.encode_queries(["what causes fever"])            # dual encoders (bert_dot, colbert) only
    ranker.architecture, ranker.version, ranker.uri

Registry URIs are resolved against `tracking_uri` (else $MLFLOW_TRACKING_URI, else MLflow's default), checked first
so that a missing name, alias or version fails with a message naming what was looked for and where (`RegistryError`),
then downloaded once into a cache keyed by the immutable model version (`$KD_CACHE_DIR`, default ~/.cache/kd/models).
Local folders and hub names go through kd.models.loader.load_ranker unchanged. MLflow is imported only when a registry
URI is used (so `kd.load` of a folder, and `import kd.registry`, stay MLflow-free); what `load` returns is
kd/loaded.py's LoadedRanker.

A registered version can carry its ONNX export (`attach_export`, `kd export --model models:/… --register`: run
artifacts and a version tag); `kd.load(uri, format="onnx", quantize=None | "int8")` loads that instead.

Versions are registered by jobs.distill (`log_ranker(..., registered_name=)`: the best student), jobs.sweep (the
champion trial's model, `mlflow.register_model`) and the pipeline's register stage (a copy of the chosen student's
version); each then tags the version and moves the alias through `publish_version`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from kd.configs.catalog import MODEL_URI_PREFIXES, is_model_uri
from kd.loaded import LoadedRanker, ModelRef

if TYPE_CHECKING:  # pragma: no cover
    from kd.configs.distill import DistillConfig


class RegistryError(LookupError):
    """A model URI that cannot be resolved; the message names what was looked for and the tracking URI."""

    def __init__(self, message: str, *, looked_for: str = "", tracking_uri: str = ""):
        super().__init__(message)
        self.looked_for = looked_for
        self.tracking_uri = tracking_uri


# ================================================================================================ resolving
def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` → (name, None, alias); `models:/name/3` or `/latest` → (name, "3", None);
    `models:/m-<id>` (an MLflow 3 logged model) → ("m-<id>", None, None)."""
    if not uri.startswith("models:/"):
        raise ValueError(f"not a models:/ URI: {uri!r}")
    rest = uri[len("models:/"):].strip("/")
    if not rest:
        raise RegistryError(f"{uri!r}: no model name; use models:/<name>@<alias> or models:/<name>/<version>",
                            looked_for=uri)
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if not name or not alias or "/" in alias:
            raise RegistryError(f"{uri!r}: expected models:/<name>@<alias>", looked_for=uri)
        return name, None, alias
    if "/" in rest:
        name, version = rest.rsplit("/", 1)
        if not (version.isdigit() or version.lower() == "latest"):
            raise RegistryError(f"{uri!r}: the version must be a number or 'latest' (stages are deprecated in "
                                "MLflow 3; use an alias: models:/<name>@<alias>)", looked_for=uri)
        return name, version.lower() if version.lower() == "latest" else version, None
    if rest.startswith("m-"):
        return rest, None, None
    raise RegistryError(f"{uri!r}: give a version or an alias: models:/{rest}@<alias> or models:/{rest}/<version>",
                        looked_for=uri)


def _tracking_uri(tracking_uri: str | None) -> str:
    import mlflow

    return tracking_uri or mlflow.get_tracking_uri()  # MLflow's own order: set_tracking_uri, $MLFLOW_TRACKING_URI


def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _not_found(e: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    if not isinstance(e, MlflowException):
        return False
    code = getattr(e, "error_code", "")
    return code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(e).lower() \
        or "does not exist" in str(e).lower()


def _unreachable(e: Exception, uri: str, tracking_uri: str) -> RegistryError:
    return RegistryError(f"cannot look up {uri} in the model registry at {tracking_uri}: {str(e).splitlines()[0]}",
                         looked_for=uri, tracking_uri=tracking_uri)


def _registered_names(client, limit: int = 20) -> list[str]:
    try:
        return sorted(m.name for m in client.search_registered_models(max_results=limit))
    except Exception:  # noqa: BLE001 - only used to enrich an error message
        return []



def _ask(call: Callable[[], Any], uri: str, turi: str, missing: Callable[[], str]) -> Any:
    """`call()`, the registry's "not found" answer raised as RegistryError(`missing()`), any other error as
    "cannot look up <uri>"."""
    try:
        return call()
    except Exception as e:  # noqa: BLE001 - reported with the URIs
        if _not_found(e):
            raise RegistryError(missing(), looked_for=uri, tracking_uri=turi) from None
        raise _unreachable(e, uri, turi) from None


def resolve(uri: str, tracking_uri: str | None = None) -> ModelRef:
    """Check that a model argument exists and say what it is (no download). Raises RegistryError, naming the
    registered model / alias / version / run looked for and the tracking URI, when it does not."""
    uri = str(uri)
    if not is_model_uri(uri):
        path = Path(uri).expanduser()
        if path.exists():
            return ModelRef(uri=uri, kind="local", source=str(path.resolve()))
        if uri.startswith((".", "/", "~")):
            raise FileNotFoundError(f"model folder not found: {uri}")
        return ModelRef(uri=uri, kind="hub", source=uri)

    turi = _tracking_uri(tracking_uri)
    client = _client(turi)
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/"):].split("/", 1)[0]
        _ask(lambda: client.get_run(run_id), uri, turi,
             lambda: f"run {run_id!r} (from {uri}) not found at tracking URI {turi}")
        return ModelRef(uri=uri, kind="run", tracking_uri=turi, run_id=run_id, source=uri)
    name, version, alias = parse_models_uri(uri)
    if version is None and alias is None:  # models:/m-<id>: a logged model
        logged = _ask(lambda: client.get_logged_model(name), uri, turi,
                      lambda: f"logged model {name!r} (from {uri}) not found at tracking URI {turi}")
        return ModelRef(uri=uri, kind="logged", tracking_uri=turi, run_id=logged.source_run_id, source=uri)
    return _registered(uri, name, version, alias, client, turi)


def _registered(uri: str, name: str, version: str | None, alias: str | None, client, turi: str) -> ModelRef:
    """`models:/name@alias`, `models:/name/<version>` or `/latest`: the registered version it names."""

    def no_such_model() -> str:
        known = _registered_names(client)
        return (f"no registered model named {name!r} (looked up for {uri}) in the model registry at {turi}; "
                + (f"registered models there: {known}" if known else "that registry has no registered models"))

    registered = _ask(lambda: client.get_registered_model(name), uri, turi, no_such_model)
    aliases = dict(getattr(registered, "aliases", {}) or {})
    if alias is not None and alias in aliases:
        mv = client.get_model_version(name, str(aliases[alias]))
    elif alias is not None:  # older servers may not list aliases on the registered model
        shown = ", ".join(f"@{a} → v{v}" for a, v in sorted(aliases.items())) or "none"
        mv = _ask(lambda: client.get_model_version_by_alias(name, alias), uri, turi,
                  lambda: f"registered model {name!r} has no alias {alias!r} (looked up for {uri}) in the model "
                          f"registry at {turi}; its aliases: {shown}")
    else:
        from kd.runtime.tracking import filter_literal

        versions = sorted((int(v.version) for v in client.search_model_versions(f"name={filter_literal(name)}")))
        if version == "latest":
            if not versions:
                raise RegistryError(f"registered model {name!r} has no versions (looked up for {uri}) at {turi}",
                                    looked_for=uri, tracking_uri=turi)
            version = str(versions[-1])
        if int(version) not in versions:
            raise RegistryError(
                f"registered model {name!r} has no version {version} (looked up for {uri}) in the model registry "
                f"at {turi}; its versions: {versions or 'none'}", looked_for=uri, tracking_uri=turi)
        mv = client.get_model_version(name, version)
    return ModelRef(
        uri=uri, kind="registered", tracking_uri=turi, name=name, version=str(mv.version), alias=alias,
        run_id=mv.run_id, source=mv.source, tags=dict(mv.tags or {}), created=mv.creation_timestamp,
        aliases=sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
    )


# ============================================================================================ fetching, loading


def _cache_root(cache_dir: str | Path | None) -> Path:
    root = cache_dir or os.environ.get("KD_CACHE_DIR") or Path.home() / ".cache" / "kd" / "models"
    return Path(root).expanduser()


def _artifact_location(ref: ModelRef) -> str:
    """Where the model's files are: the registered version's / logged model's storage, or the runs:/ URI."""
    if ref.kind == "registered":
        return _client(ref.tracking_uri).get_model_version_download_uri(ref.name, ref.version)
    if ref.kind == "logged":
        return _client(ref.tracking_uri).get_logged_model(ref.uri[len("models:/"):].strip("/")).artifact_location
    return ref.uri


def fetch(ref: ModelRef, cache_dir: str | Path | None = None) -> Path:
    """The local HF-format folder of a resolved model (downloaded once per immutable model version)."""
    if ref.kind in ("local", "hub"):
        return Path(ref.source)
    from kd.runtime.pyfunc import download_ranker_folder

    # a registered version never changes; the key also covers a registry that was recreated under the same URI
    download_uri = ref.version_uri or ref.uri
    key_src = json.dumps([ref.tracking_uri, download_uri, ref.source, ref.run_id, ref.created])
    key = hashlib.sha256(key_src.encode()).hexdigest()[:20]
    root = _cache_root(cache_dir)
    target = root / f"{_label(ref)}-v{ref.version}-{key}" if ref.version else root / f"{_label(ref)}-{key}"

    def download(dst: Path) -> Path:
        try:
            return download_ranker_folder(_artifact_location(ref), dst, tracking_uri=ref.tracking_uri)
        except ValueError as e:  # the artifact is not a kd ranker
            raise RegistryError(str(e), looked_for=ref.uri, tracking_uri=ref.tracking_uri or "") from None

    return _cached(target, "kd_config.json", download)


def _label(ref: ModelRef) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in (ref.name or ref.kind))


def _cached(target: Path, marker: str, download: Callable[[Path], Path]) -> Path:
    """`target` once it holds `marker`; else `download(dst)` (a folder inside dst) moved there whole."""
    if (target / marker).is_file():
        return target
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        folder = download(tmp / "download")
        if target.exists():  # another process won the race
            return target
        # folder lies inside tmp: the downloaders refuse a path outside the download
        os.replace(folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target



def load(uri: str | Path, *, tracking_uri: str | None = None, device: str | None = "auto",
         cache_dir: str | Path | None = None, options: dict | None = None, format: str | None = None,
         quantize: str | None = None) -> LoadedRanker:
    """A model argument → a ready `LoadedRanker` (eval mode, on `device`).

    `uri`: `models:/<name>@<alias>`, `models:/<name>/<version>` (or `/latest`), `models:/m-<id>`, `runs:/<id>/<path>`,
    a saved kd folder (any architecture), a teacher-ensemble folder (kd_ensemble.json, from jobs.score_teachers:
    `rerank` / `score` give its combined score, as in evaluation; it is not a dual encoder), or an HF /
    sentence-transformers name or folder (a BERT_DOT bi-encoder; `options` are its BertDot options).
    `format="onnx"` (`quantize=None | "int8"`): the ONNX export attached to the registered version (`attach_export`,
    `kd export … --register`), served by onnxruntime on the CPU; an export folder is loaded as it is, without it.
    """
    from kd.models.loader import load_ranker, pick_device

    ref = resolve(str(uri), tracking_uri)
    if format is not None or quantize is not None:
        model = load_ranker(str(fetch_export(ref, format, quantize, cache_dir)), options=options)
        return LoadedRanker(model.eval(), ref)
    model = load_ranker(ref.source if ref.kind in ("local", "hub") else ref.uri, options=options,
                        resolve_uri=lambda _: fetch(ref, cache_dir))
    model.to(pick_device(device))
    model.eval()
    return LoadedRanker(model, ref)


# ======================================================================================= carrying ONNX exports
EXPORT_TAG = "kd.onnx"  # the version tag naming an attached export: kd.onnx (fp32), kd.onnx.int8
EXPORT_ARTIFACTS = "kd_onnx"  # under the version's run: kd_onnx/<name>-v<version>/<fp32|int8>-<graph sha256[:12]>


def export_tag(quantize: str | None) -> str:
    return EXPORT_TAG if quantize is None else f"{EXPORT_TAG}.{quantize}"


def attach_export(uri: str, folder: str | Path, *, tracking_uri: str | None = None) -> str:
    """Attach an ONNX export folder (kd export) to the registered version `uri` names; returns its runs:/ URI.

    A registered version's own files (its pyfunc artifact) are immutable, so the export is logged as artifacts of the
    run that produced the version, under a path naming the version, the variant and the graph's digest (a re-export
    never overwrites files another tag points at), and the version tag `kd.onnx` / `kd.onnx.int8` points at it;
    `load(uri, format="onnx"[, quantize="int8"])` follows that tag. Only an export of that very version is accepted
    (its manifest's source names it: `kd export --model models:/<name>/<version>` or an alias of it)."""
    from kd.export import read_manifest

    manifest = read_manifest(folder)  # every graph checked against its sha256 before anything is uploaded
    ref = resolve(str(uri), tracking_uri)
    if ref.kind != "registered":
        raise RegistryError(f"{uri}: only a registered version (models:/<name>@<alias> or /<version>) carries an "
                            "ONNX export", looked_for=str(uri), tracking_uri=ref.tracking_uri or "")
    source = manifest.get("source") or {}
    src = source.get("ref") or {}
    if (src.get("kind"), src.get("name"), src.get("version")) != ("registered", ref.name, ref.version):
        raise RegistryError(f"{folder} was exported from {source.get('model')!r}, not from {ref.version_uri}; attach "
                            f"an export of that version: kd export --model {ref.version_uri} --format onnx … "
                            "--register", looked_for=str(uri), tracking_uri=ref.tracking_uri or "")
    if not ref.run_id:
        raise RegistryError(f"{ref.version_uri} has no run to hold the export's files", looked_for=str(uri),
                            tracking_uri=ref.tracking_uri or "")
    quantize = (manifest.get("quantization") or {}).get("weights")
    path = f"{EXPORT_ARTIFACTS}/{_label(ref)}-v{ref.version}/{quantize or 'fp32'}-" \
           f"{manifest['graphs']['model']['sha256'][:12]}"
    client = _client(ref.tracking_uri)
    client.log_artifacts(ref.run_id, str(folder), artifact_path=path)
    value = f"runs:/{ref.run_id}/{path}"
    client.set_model_version_tag(ref.name, ref.version, export_tag(quantize), value)
    return value


def fetch_export(ref: ModelRef, format: str | None, quantize: str | None,
                 cache_dir: str | Path | None = None) -> Path:
    """The local folder of the ONNX export attached to a registered version (downloaded once per export)."""
    from kd.export import MANIFEST_FILE
    from kd.export.support import check_request
    from kd.runtime.pyfunc import inside_artifact

    if format != "onnx":
        raise ValueError(f"format={format!r}: give format='onnx' (the attached ONNX export, quantize=None | 'int8') "
                         "or no format (the PyTorch model)")
    check_request(format, quantize)
    tag = export_tag(quantize)
    if ref.kind != "registered":
        raise RegistryError(f"{ref.uri}: format={format!r} picks the ONNX export attached to a registered version; "
                            "an export folder (kd export --out DIR) is loaded as it is, without format",
                            looked_for=ref.uri, tracking_uri=ref.tracking_uri or "")
    value = ref.tags.get(tag, "")
    if not value.startswith(f"runs:/{ref.run_id}/{EXPORT_ARTIFACTS}/"):
        attached = sorted(k for k in ref.tags if k == EXPORT_TAG or k.startswith(f"{EXPORT_TAG}."))
        raise RegistryError(
            f"{ref.uri} (version {ref.version}) carries no {quantize or 'fp32'} ONNX export (version tag {tag}: "
            f"{value or 'absent'}; export tags: {attached or 'none'}); attach one: kd export --model "
            f"{ref.version_uri} --format onnx{' --quantize ' + quantize if quantize else ''} --out DIR --register",
            looked_for=ref.uri, tracking_uri=ref.tracking_uri or "")
    from mlflow.artifacts import download_artifacts

    def download(dst: Path) -> Path:
        local = download_artifacts(artifact_uri=value, dst_path=str(dst), tracking_uri=ref.tracking_uri)
        return inside_artifact(dst, str(local), f"{ref.uri}: the export {value}")

    key = hashlib.sha256(json.dumps([ref.tracking_uri, value, ref.created]).encode()).hexdigest()[:20]
    target = _cache_root(cache_dir) / f"{_label(ref)}-v{ref.version}-onnx-{quantize or 'fp32'}-{key}"
    return _cached(target, MANIFEST_FILE, download)


# ============================================================================================== publishing
def version_tags(cfg: "DistillConfig") -> dict[str, str]:
    """The tags of every version registered from a distill run (jobs.distill, a sweep's champion): the commit that
    trained it, its dataset, architecture and distillation mode."""
    from kd.runtime.tracking import git_commit

    return {"git_commit": git_commit() or "unknown", "dataset": cfg.registry.dataset_tag or "",
            "architecture": cfg.student.architecture, "mode": cfg.mode}


def publish_version(name: str, version: str, alias: str, tags: dict[str, Any], *, client=None) -> str:
    """Tag version `version` of the registered model `name` (values as strings), then point `alias` at it (whoever
    follows the alias finds the version tagged); returns `models:/<name>@<alias>`. `client`: default MLflow's
    current tracking URI."""
    from mlflow import MlflowClient

    client = client or MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, str(v))
    client.set_registered_model_alias(name, alias, version)
    return f"models:/{name}@{alias}"


def alias_version(name: str, alias: str, *, client=None) -> str | None:
    """The version `alias` of `name` points at, or None (no such model or alias)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return (client or MlflowClient()).get_model_version_by_alias(name, alias).version
    except MlflowException:
        return None
