"""PreTTR: precomputed representations of the passage for the lower layers (MacAvaney et al.; seed 000's student).

Layers 1..k encode `[CLS] q [SEP]` and `p [SEP]` separately (same weights; the passage's position ids are offset by
the padded query length, its token type is 1), layers k+1..L run on the concatenation; `s = w · h_CLS` (no bias).
`split_layer` = k ∈ [0, L] is configurable (paper: 3 of 6). With k = 0 nothing is split and, for an unpadded pair,
the model is exactly BERT_CAT's joint encoding with a bias-free head.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd.models import backbone as bb
from kd.models.base import Ranker, tokenize_texts


class PreTTR(Ranker):
    architecture = "prettr"

    def __init__(
        self, encoder, tokenizer, *, split_layer: int = 3, max_query_length: int = 30, max_passage_length: int = 200
    ):
        layers = bb.num_layers(encoder)
        if not 0 <= split_layer <= layers:
            raise ValueError(f"split_layer must be in [0, {layers}] for a {layers}-layer backbone, got {split_layer}")
        super().__init__(
            encoder, tokenizer, split_layer=split_layer,
            max_query_length=max_query_length, max_passage_length=max_passage_length,
        )
        self.classifier = nn.Linear(bb.hidden_size(encoder), 1, bias=False)

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        q = tokenize_texts(self.tokenizer, queries, self.options["max_query_length"])  # [CLS] q [SEP]
        # `p [SEP]`: the passage's own [CLS] is dropped (the query part carries the only [CLS]).
        d = tokenize_texts(self.tokenizer, passages, self.options["max_passage_length"] + 1)
        return {
            "q_input_ids": q["input_ids"], "q_attention_mask": q["attention_mask"],
            "d_input_ids": d["input_ids"][:, 1:], "d_attention_mask": d["attention_mask"][:, 1:],
        }

    def encode_passages_partial(self, d_input_ids, d_attention_mask, query_length: int) -> torch.Tensor:
        """Passage representations after layer k (what PreTTR precomputes and stores at indexing time)."""
        positions = torch.arange(d_input_ids.shape[1], device=d_input_ids.device) + query_length
        hidden = bb.embed(
            self.encoder, d_input_ids, token_type_ids=torch.ones_like(d_input_ids),
            position_ids=positions.unsqueeze(0).expand_as(d_input_ids),
        )
        return bb.run_layers(self.encoder, hidden, d_attention_mask, 0, self.options["split_layer"])

    def forward(self, q_input_ids, q_attention_mask, d_input_ids, d_attention_mask) -> torch.Tensor:
        k = self.options["split_layer"]
        q_len = q_input_ids.shape[1]
        q_pos = torch.arange(q_len, device=q_input_ids.device).unsqueeze(0).expand_as(q_input_ids)
        hq = bb.embed(self.encoder, q_input_ids, token_type_ids=torch.zeros_like(q_input_ids), position_ids=q_pos)
        hq = bb.run_layers(self.encoder, hq, q_attention_mask, 0, k)
        hd = self.encode_passages_partial(d_input_ids, d_attention_mask, q_len)
        hidden = torch.cat([hq, hd], dim=1)
        mask = torch.cat([q_attention_mask, d_attention_mask], dim=1)
        hidden = bb.run_layers(self.encoder, hidden, mask, k, bb.num_layers(self.encoder))
        return self.classifier(hidden[:, 0]).squeeze(-1)
