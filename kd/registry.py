"""Find a ranker by name and get back something that ranks: `kd.load("models:/<name>@<alias>")`.

    import kd
    ranker = kd.load("models:/scifact-bert-dot@champion")     # or models:/name/3, runs:/<id>/model, a kd folder,
    scores = ranker.rerank("what causes fever", passages)       #    an HF / sentence-transformers name or folder
    q = ranker.encode_queries(["what causes fever"])            # dual encoders (bert_dot, colbert) only
    ranker.architecture, ranker.version, ranker.uri

Registry URIs are resolved against `tracking_uri` (else $MLFLOW_TRACKING_URI, else MLflow's default), checked first
so that a missing name, alias or version fails with a message naming what was looked for and where (`RegistryError`),
then downloaded once into a cache keyed by the immutable model version (`$KD_CACHE_DIR`, default ~/.cache/kd/models).
Local folders and hub names go through kd.evaluation.load_ranker unchanged. MLflow is imported only when a registry
URI is used; this module imports neither Ray nor DeepSpeed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from kd.models import Ranker

MODEL_URI_PREFIXES = ("models:/", "runs:/")
DUAL_ENCODERS = ("bert_dot", "colbert")


class RegistryError(LookupError):
    """A model URI that cannot be resolved; the message names what was looked for and the tracking URI."""

    def __init__(self, message: str, *, looked_for: str = "", tracking_uri: str = ""):
        super().__init__(message)
        self.looked_for = looked_for
        self.tracking_uri = tracking_uri


class NotADualEncoder(TypeError):
    """encode_queries / encode_docs on a model that scores pairs jointly (cross-encoders, PreTTR, TK)."""


# ================================================================================================ resolving
@dataclass
class ModelRef:
    """Where a model argument points. `kind`: registered | logged | run | local | hub."""

    uri: str
    kind: str
    tracking_uri: str | None = None
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    source: str | None = None
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    created: int | None = None

    @property
    def version_uri(self) -> str | None:
        return f"models:/{self.name}/{self.version}" if self.name and self.version else None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [], {})}


def is_model_uri(uri: str) -> bool:
    return str(uri).startswith(MODEL_URI_PREFIXES)


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
        try:
            client.get_run(run_id)
        except Exception as e:  # noqa: BLE001 - reported with the URIs
            if _not_found(e):
                raise RegistryError(f"run {run_id!r} (from {uri}) not found at tracking URI {turi}",
                                    looked_for=uri, tracking_uri=turi) from None
            raise _unreachable(e, uri, turi) from None
        return ModelRef(uri=uri, kind="run", tracking_uri=turi, run_id=run_id, source=uri)

    name, version, alias = parse_models_uri(uri)
    if version is None and alias is None:  # models:/m-<id>: a logged model
        try:
            logged = client.get_logged_model(name)
        except Exception as e:  # noqa: BLE001 - reported with the URIs
            if _not_found(e):
                raise RegistryError(f"logged model {name!r} (from {uri}) not found at tracking URI {turi}",
                                    looked_for=uri, tracking_uri=turi) from None
            raise _unreachable(e, uri, turi) from None
        return ModelRef(uri=uri, kind="logged", tracking_uri=turi, run_id=logged.source_run_id, source=uri)
    try:
        registered = client.get_registered_model(name)
    except Exception as e:  # noqa: BLE001 - reported with the URIs
        if _not_found(e):
            known = _registered_names(client)
            raise RegistryError(
                f"no registered model named {name!r} (looked up for {uri}) in the model registry at {turi}; "
                + (f"registered models there: {known}" if known else "that registry has no registered models"),
                looked_for=uri, tracking_uri=turi) from None
        raise _unreachable(e, uri, turi) from None
    aliases = dict(getattr(registered, "aliases", {}) or {})
    if alias is not None:
        if alias not in aliases:
            try:  # older servers may not list aliases on the registered model
                mv = client.get_model_version_by_alias(name, alias)
            except Exception as e:  # noqa: BLE001 - reported with the URIs
                if not _not_found(e):
                    raise _unreachable(e, uri, turi) from None
                shown = ", ".join(f"@{a} → v{v}" for a, v in sorted(aliases.items())) or "none"
                raise RegistryError(
                    f"registered model {name!r} has no alias {alias!r} (looked up for {uri}) in the model registry "
                    f"at {turi}; its aliases: {shown}", looked_for=uri, tracking_uri=turi) from None
        else:
            mv = client.get_model_version(name, str(aliases[alias]))
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
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in (ref.name or ref.kind))
    root = _cache_root(cache_dir)
    target = root / f"{label}-v{ref.version}-{key}" if ref.version else root / f"{label}-{key}"
    if (target / "kd_config.json").is_file():
        return target
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        try:
            folder = download_ranker_folder(_artifact_location(ref), tmp / "download", tracking_uri=ref.tracking_uri)
        except ValueError as e:  # the artifact is not a kd ranker
            raise RegistryError(str(e), looked_for=ref.uri, tracking_uri=ref.tracking_uri or "") from None
        if target.exists():  # another process won the race
            return target
        # folder lies inside tmp: download_ranker_folder refuses an MLmodel naming a path outside the download
        os.replace(folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ================================================================================================== loading
def _pick_device(device: str | None):
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load(uri: str | Path, *, tracking_uri: str | None = None, device: str | None = "auto",
         cache_dir: str | Path | None = None, options: dict | None = None) -> "LoadedRanker":
    """A model argument → a ready `LoadedRanker` (eval mode, on `device`).

    `uri`: `models:/<name>@<alias>`, `models:/<name>/<version>` (or `/latest`), `models:/m-<id>`, `runs:/<id>/<path>`,
    a saved kd folder (any architecture), a teacher-ensemble folder (kd_ensemble.json, from jobs.score_teachers:
    `rerank` / `score` give its combined score, as in evaluation; it is not a dual encoder), or an HF /
    sentence-transformers name or folder (a BERT_DOT bi-encoder; `options` are its BertDot options).
    """
    from kd.evaluation import load_ranker

    ref = resolve(str(uri), tracking_uri)
    model = load_ranker(ref.source if ref.kind in ("local", "hub") else ref.uri, options=options,
                        resolve_uri=lambda _: fetch(ref, cache_dir))
    model.to(_pick_device(device))
    model.eval()
    return LoadedRanker(model, ref)


class LoadedRanker:
    """A ranker found by URI: `rerank` for every architecture, `encode_queries` / `encode_docs` for dual encoders.

    `rerank` and `score` go through `Ranker.predict` (length-sorted batches), the same path as the registered pyfunc
    (`mlflow models serve`), so served scores and these are the same numbers.
    """

    def __init__(self, model: "Ranker", ref: ModelRef | None = None):
        self.model = model
        self.ref = ref or ModelRef(uri="<in memory>", kind="local")

    # ----------------------------------------------------------------------------------------------- identity
    @property
    def architecture(self) -> str:
        return self.model.architecture

    @property
    def is_dual_encoder(self) -> bool:
        return self.model.architecture in DUAL_ENCODERS

    @property
    def uri(self) -> str:
        return self.ref.uri

    @property
    def name(self) -> str | None:
        return self.ref.name

    @property
    def version(self) -> str | None:
        return self.ref.version

    @property
    def alias(self) -> str | None:
        return self.ref.alias

    @property
    def tags(self) -> dict[str, str]:
        return self.ref.tags

    @property
    def device(self):
        return self.model.device

    def to(self, device) -> "LoadedRanker":
        self.model.to(_pick_device(device) if isinstance(device, str) else device)
        return self

    def info(self) -> dict[str, Any]:
        return {**self.ref.to_dict(), "architecture": self.architecture, "dual_encoder": self.is_dual_encoder,
                "parameters": sum(p.numel() for p in self.model.parameters())}

    def __repr__(self) -> str:
        where = f"{self.name} v{self.version}" if self.version else self.ref.source or self.uri
        return f"LoadedRanker({self.architecture}, {where}, uri={self.uri!r})"

    # ---------------------------------------------------------------------------------------------- scoring
    def score(self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 64) -> "np.ndarray":
        """Scores of aligned (query, passage) rows, float32 — what the served pyfunc returns for the same rows."""
        import numpy as np

        queries, passages = [str(q) for q in queries], [str(p) for p in passages]
        if len(queries) != len(passages):
            raise ValueError(f"got {len(queries)} queries but {len(passages)} passages")
        if not queries:
            return np.zeros(0, dtype=np.float32)
        return self.model.predict(queries, passages, batch_size=batch_size).numpy().astype(np.float32)

    def rerank(self, query: str, passages: Sequence[str], batch_size: int = 64) -> "np.ndarray":
        """One query against its candidate passages → one score per passage, in the passages' order."""
        if not isinstance(query, str):
            raise TypeError(f"rerank takes one query string (got {type(query).__name__}); score aligned "
                            "(query, passage) rows with .score(queries, passages)")
        if isinstance(passages, str):
            passages = [passages]
        return self.score([query] * len(passages), list(passages), batch_size=batch_size)

    def rank(self, query: str, passages: Sequence[str], top_k: int | None = None,
             batch_size: int = 64) -> list[tuple[int, float]]:
        """(passage index, score) best first; ties by index."""
        scores = self.rerank(query, passages, batch_size=batch_size).tolist()
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(i, scores[i]) for i in (order if top_k is None else order[:top_k])]

    # --------------------------------------------------------------------------------------------- encoding
    def _check_dual(self, what: str) -> None:
        if not self.is_dual_encoder:
            raise NotADualEncoder(
                f"{what}: {self.uri} is a {self.architecture!r} model, which scores (query, passage) pairs jointly; "
                f"only dual encoders ({', '.join(DUAL_ENCODERS)}) encode queries and documents separately — use "
                ".rerank(query, passages)")

    def _encode(self, texts: Sequence[str], kind: str, batch_size: int):
        import numpy as np
        import torch

        texts = [str(t) for t in ([texts] if isinstance(texts, str) else texts)]
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        fn = self.model.encode_queries if kind == "queries" else self.model.encode_docs
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))  # little padding per batch
        out: list[Any] = [None] * len(texts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for s in range(0, len(order), batch_size):
                    idx = order[s : s + batch_size]
                    emb = fn([texts[i] for i in idx])
                    if isinstance(emb, tuple):  # ColBERT: token vectors + mask → one [tokens, dim] array per text
                        vecs, mask = emb
                        for j, i in enumerate(idx):
                            out[i] = vecs[j][mask[j].bool()].float().cpu().numpy()
                    else:
                        for j, i in enumerate(idx):
                            out[i] = emb[j].float().cpu().numpy()
        finally:
            self.model.train(was_training)
        if self.architecture == "colbert":
            return out
        dim = getattr(self.model, "embedding_dim", None)
        return np.stack(out).astype(np.float32) if out else np.zeros((0, dim or 0), dtype=np.float32)

    def encode_queries(self, queries: Sequence[str], batch_size: int = 64):
        """bert_dot: float32 [n, d]; colbert: a list of [query tokens (+ [MASK]s), dim] arrays."""
        self._check_dual("encode_queries")
        return self._encode(queries, "queries", batch_size)

    def encode_docs(self, passages: Sequence[str], batch_size: int = 64):
        """bert_dot: float32 [n, d]; colbert: a list of [passage tokens, dim] arrays."""
        self._check_dual("encode_docs")
        return self._encode(passages, "docs", batch_size)
