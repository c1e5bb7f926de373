"""ColBERT: late interaction over token vectors (seed 000's ColBERT student).

    s(q, p) = Σ_{i ∈ q} max_{j ∈ p} (W e_i) · (W e_j)

W = Linear(hidden → dim) with bias (dim = hidden size when `dim` is None). Padded passage positions are excluded
from the max, padded query positions from the sum. Queries are augmented with `n_mask_tokens` [MASK] tokens
(released model: 8) that are attended and take part in the sum. The [MASK] tokens are placed right after each
query's own `[SEP]`, before any padding, so a query's score never depends on the other queries in its batch.
`unpadded` ("auto" | true | false, kd.models.unpadded): token vectors computed on the packed real tokens (vectors at
padded positions are then W·0 + b instead of W·h_pad + b; both are excluded from the score).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd.models import backbone as bb
from kd.models import unpadded as up
from kd.models.base import Ranker, tokenize_texts


def augment_queries(batch: dict[str, torch.Tensor], n: int, pad_id: int, mask_id: int) -> dict[str, torch.Tensor]:
    """Insert n [MASK] tokens after each query's last real token (attended, before the padding); token types all 0.
    Shared by ColBERT's own tokenisation and the prepared-folder collation (kd/data/collate.py)."""
    if n == 0:
        return batch
    ids, mask = batch["input_ids"], batch["attention_mask"]
    b, length = ids.shape
    lengths = mask.sum(1)
    new_len = length + n
    positions = torch.arange(new_len).unsqueeze(0)
    real = positions < lengths.unsqueeze(1)
    masks = (positions >= lengths.unsqueeze(1)) & (positions < (lengths + n).unsqueeze(1))
    new_ids = torch.full((b, new_len), pad_id, dtype=ids.dtype)
    new_ids[real] = ids[mask.bool()]
    new_ids[masks] = mask_id
    out = {"input_ids": new_ids, "attention_mask": (real | masks).to(mask.dtype)}
    if "token_type_ids" in batch:
        out["token_type_ids"] = torch.zeros_like(new_ids)
    return out


class ColBERT(Ranker):
    architecture = "colbert"
    dual_encoder = True

    def __init__(
        self,
        encoder,
        tokenizer,
        *,
        dim: int | None = 128,
        n_mask_tokens: int = 8,
        max_query_length: int = 30,
        max_passage_length: int = 200,
        unpadded: str | bool = "auto",
    ):
        if n_mask_tokens < 0:
            raise ValueError(f"n_mask_tokens must be >= 0, got {n_mask_tokens}")
        if n_mask_tokens and tokenizer.mask_token_id is None:
            raise ValueError("query augmentation needs a tokenizer with a [MASK] token")
        self._unpadded_reason = up.unsupported_reason(encoder)
        super().__init__(
            encoder, tokenizer, dim=dim, n_mask_tokens=n_mask_tokens,
            max_query_length=max_query_length, max_passage_length=max_passage_length,
            unpadded=up.validate(unpadded, self._unpadded_reason),
        )
        hidden = bb.hidden_size(encoder)
        self.compression = nn.Linear(hidden, dim or hidden)

    def _vectors(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        if up.active(self.options["unpadded"], self._unpadded_reason, self):
            return self.compression(up.last_hidden_state(self.encoder, input_ids, attention_mask, token_type_ids))
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.compression(hidden.last_hidden_state)

    def _augment(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return augment_queries(batch, self.options["n_mask_tokens"], self.tokenizer.pad_token_id or 0,
                               self.tokenizer.mask_token_id)

    def _tokenize_queries(self, queries: Sequence[str]) -> dict[str, torch.Tensor]:
        return self._augment(tokenize_texts(self.tokenizer, queries, self.options["max_query_length"]))

    def _tokenize_docs(self, passages: Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize_texts(self.tokenizer, passages, self.options["max_passage_length"])

    def encode_queries(self, queries: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token vectors [B, Lq, dim] and their mask [B, Lq] (padding 0)."""
        batch = {k: v.to(self.device) for k, v in self._tokenize_queries(queries).items()}
        return self._vectors(**batch), batch["attention_mask"]

    def encode_docs(self, passages: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = {k: v.to(self.device) for k, v in self._tokenize_docs(passages).items()}
        return self._vectors(**batch), batch["attention_mask"]

    def score_triples(self, queries, positives, negatives) -> tuple[torch.Tensor, torch.Tensor]:
        q, q_mask = self.encode_queries(queries)
        d, d_mask = self.encode_docs(list(positives) + list(negatives))
        n = len(queries)
        return (self.late_interaction(q, q_mask, d[:n], d_mask[:n]),
                self.late_interaction(q, q_mask, d[n:], d_mask[n:]))

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        q, d = self._tokenize_queries(queries), self._tokenize_docs(passages)
        return {**{f"q_{k}": v for k, v in q.items()}, **{f"d_{k}": v for k, v in d.items()}}

    @staticmethod
    def late_interaction(q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
        """Σ_i max_j q_i·d_j with padded doc positions out of the max and padded query positions out of the sum."""
        sim = torch.einsum("bqh,bdh->bqd", q, d)
        sim = sim.masked_fill(~d_mask.bool().unsqueeze(1), torch.finfo(sim.dtype).min)
        best = sim.max(-1).values
        return (best * q_mask.to(best.dtype)).sum(-1)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        q_in = {k[2:]: v for k, v in batch.items() if k.startswith("q_")}
        d_in = {k[2:]: v for k, v in batch.items() if k.startswith("d_")}
        return self.late_interaction(
            self._vectors(**q_in), q_in["attention_mask"], self._vectors(**d_in), d_in["attention_mask"]
        )
