"""BERT_DOT: a bi-encoder with one shared encoder (seed 000), also the query-encoder student of seed 003.

    s(q, p) = pool(q) · pool(p),   pool ∈ {h_CLS, mean of token vectors (padding excluded)}

optionally followed by a Linear compression/projection (off by default) and L2 normalisation (off by default;
sentence-transformers bi-encoders such as all-MiniLM-L6-v2 declare it, and it is then read from their folder).
`unpadded` ("auto" | true | false, kd.models.unpadded): the token vectors computed on the packed real tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from kd.models import backbone as bb
from kd.models import unpadded as up
from kd.models.base import Ranker, _check_pairs, masked_mean, pad_features, tokenize_texts
from kd.progress import Progress

POOLINGS = ("cls", "mean")


class BertDot(Ranker):
    architecture = "bert_dot"
    dual_encoder = True

    def __init__(
        self,
        encoder,
        tokenizer,
        *,
        pooling: str = "cls",
        normalize: bool = False,
        projection_dim: int | None = None,
        max_query_length: int = 30,
        max_passage_length: int = 200,
        unpadded: str | bool = "auto",
    ):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self._unpadded_reason = up.unsupported_reason(encoder)
        super().__init__(
            encoder, tokenizer, pooling=pooling, normalize=normalize, projection_dim=projection_dim,
            max_query_length=max_query_length, max_passage_length=max_passage_length,
            unpadded=up.validate(unpadded, self._unpadded_reason),
        )
        hidden = bb.hidden_size(encoder)
        self.projection = nn.Linear(hidden, projection_dim) if projection_dim else None

    @classmethod
    def from_backbone(cls, name_or_path: str | Path | None = None, **options) -> "BertDot":
        """As `Ranker.from_backbone`; pooling/normalize default to what a sentence-transformers folder declares."""
        path = name_or_path or bb.default_backbone()
        declared_pooling, declared_normalize = bb.sentence_transformers_pooling(path)
        if options.get("pooling") is None:
            options["pooling"] = declared_pooling or "cls"
        if options.get("normalize") is None:
            options["normalize"] = declared_normalize
        return super().from_backbone(path, **options)

    @property
    def embedding_dim(self) -> int:
        return self.options["projection_dim"] or bb.hidden_size(self.encoder)

    def embed(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        """[B, L] token ids → [B, d] embeddings."""
        if up.active(self.options["unpadded"], self._unpadded_reason, self):
            h, packing = up.encode_packed(self.encoder, input_ids, attention_mask, token_type_ids)
            if self.options["pooling"] == "cls":
                pooled = up.first_tokens(h, packing)
            else:
                pooled = masked_mean(up.scatter(h, packing), attention_mask)
        else:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            pooled = hidden[:, 0] if self.options["pooling"] == "cls" else masked_mean(hidden, attention_mask)
        if self.projection is not None:
            pooled = self.projection(pooled)
        if self.options["normalize"]:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def _encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        batch = tokenize_texts(self.tokenizer, texts, max_length)
        return self.embed(**{k: v.to(self.device) for k, v in batch.items()})

    def encode_queries(self, queries: Sequence[str]) -> torch.Tensor:
        return self._encode(queries, self.options["max_query_length"])

    def encode_docs(self, passages: Sequence[str]) -> torch.Tensor:
        return self._encode(passages, self.options["max_passage_length"])

    @torch.inference_mode()
    def encode_unique(self, texts: Sequence[str], max_length: int, batch_size: int = 64,
                      progress: Progress | None = None) -> torch.Tensor:
        """[N, d] embeddings (CPU float32) of texts, tokenized once and batched by exact token count."""
        features = dict(self.tokenizer(list(texts), truncation=True, max_length=max_length))
        features.pop("attention_mask", None)
        lengths = np.fromiter(map(len, features["input_ids"]), np.int64, len(texts))
        order = np.argsort(lengths, kind="stable")
        pad_ids = {"input_ids": self.tokenizer.pad_token_id or 0}
        out = torch.empty(len(texts), self.embedding_dim, dtype=torch.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = pad_features(features, idx, lengths, pad_ids)
            out[torch.from_numpy(idx)] = self.embed(**{k: v.to(self.device) for k, v in batch.items()}).float().cpu()
            if progress is not None:
                progress.update(len(idx))
        return out

    @torch.inference_mode()
    def predict(
        self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> torch.Tensor:
        """Scores [N] (CPU float32) of aligned pairs. A bi-encoder's score is the inner product of two independent
        encodings, so each distinct query and passage is encoded once: re-ranking 100 candidates encodes the query
        once, and a teacher scoring triples encodes a query shared by its triples once."""
        _check_pairs(queries, passages)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        was_training = self.training
        self.eval()
        try:
            uq, up = list(dict.fromkeys(queries)), list(dict.fromkeys(passages))
            progress = Progress(f"encoding ({self.architecture})", len(uq) + len(up), unit="texts",
                                enabled=show_progress)
            q = self.encode_unique(uq, self.options["max_query_length"], batch_size, progress)
            d = self.encode_unique(up, self.options["max_passage_length"], batch_size, progress)
            progress.close()
        finally:
            self.train(was_training)
        qi, pi = {t: i for i, t in enumerate(uq)}, {t: i for i, t in enumerate(up)}
        return (q[[qi[t] for t in queries]] * d[[pi[t] for t in passages]]).sum(-1)

    def score_triples(self, queries, positives, negatives) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.encode_queries(queries)
        d = self.encode_docs(list(positives) + list(negatives))
        return (q * d[: len(q)]).sum(-1), (q * d[len(q) :]).sum(-1)

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        q = tokenize_texts(self.tokenizer, queries, self.options["max_query_length"])
        d = tokenize_texts(self.tokenizer, passages, self.options["max_passage_length"])
        return {**{f"q_{k}": v for k, v in q.items()}, **{f"d_{k}": v for k, v in d.items()}}

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        q = self.embed(**{k[2:]: v for k, v in batch.items() if k.startswith("q_")})
        d = self.embed(**{k[2:]: v for k, v in batch.items() if k.startswith("d_")})
        return (q * d).sum(-1)
