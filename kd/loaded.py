"""What `kd.load` returns: a `LoadedRanker` (a Ranker found by URI, folder or name, with `rerank` / `score` for every
architecture and `encode_queries` / `encode_docs` for dual encoders) and its `ModelRef` (where the model argument
pointed). Finding and fetching registry models: kd/runtime/registry.py. Imports neither torch nor MLflow at import
time (torch on first use).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from kd.teachers.checks import DUAL_ENCODERS

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from kd.models import Ranker


class NotADualEncoder(TypeError):
    """encode_queries / encode_docs on a model that scores pairs jointly (cross-encoders, PreTTR, TK)."""


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
        from kd.models.loader import pick_device

        self.model.to(pick_device(device) if isinstance(device, str) else device)
        return self

    def info(self) -> dict[str, Any]:
        return {**self.ref.to_dict(), "architecture": self.architecture, "dual_encoder": self.is_dual_encoder,
                "parameters": int(self.model.num_parameters())}  # an ONNX export: the exported model's

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
