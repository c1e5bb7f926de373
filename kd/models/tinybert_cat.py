"""A TinyBERT-style cross-encoder (seed 002): 2-class logits on h_CLS, exposing what layer-wise KD needs.

    z = W · h_CLS([CLS] q [SEP] p [SEP]) + b ∈ R²,   relevance score = softmax(z)[1]

`forward_kd` also returns every layer's pre-softmax attention scores A^m = Q·Kᵀ/√d_head ([B, H, L, L], padding not
masked) and the hidden states H^0..H^M (H^0 = embedding output), the inputs of the Simplified TinyBERT loss. The
head is a plain Linear in training and inference alike (the public code's ReLU-only-in-training defect is avoided).
`unpadded` ("auto" | true | false, kd.models.unpadded): `logits` / `forward` compute h_CLS on the packed real tokens;
`forward_kd` stays padded (its losses compare [B, H, L, L] attention maps and [B, L, d] states position by position).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from kd.models import backbone as bb
from kd.models import unpadded as up
from kd.models.base import Ranker
from kd.models.bert_cat import pretokenize_pairs, tokenize_pairs


@dataclass
class CrossEncoderKDOutput:
    logits: torch.Tensor  # [B, 2]
    attentions: list[torch.Tensor]  # M × [B, H, L, L], pre-softmax
    hidden_states: list[torch.Tensor]  # (M + 1) × [B, L, d]
    attention_mask: torch.Tensor  # [B, L]


class TinyBertCat(Ranker):
    architecture = "tinybert_cat"

    def __init__(self, encoder, tokenizer, *, max_length: int = 256, unpadded: str | bool = "auto"):
        self._unpadded_reason = up.unsupported_reason(encoder)
        super().__init__(encoder, tokenizer, max_length=max_length,
                         unpadded=up.validate(unpadded, self._unpadded_reason))
        self.classifier = nn.Linear(bb.hidden_size(encoder), 2)

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize_pairs(self.tokenizer, queries, passages, self.options["max_length"])

    def pretokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict:
        return pretokenize_pairs(self.tokenizer, queries, passages, self.options["max_length"])

    def logits(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        if up.active(self.options["unpadded"], self._unpadded_reason, self):
            return self.classifier(up.cls_hidden(self.encoder, input_ids, attention_mask, token_type_ids))
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.classifier(hidden.last_hidden_state[:, 0])

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        return self.logits(input_ids, attention_mask, token_type_ids).softmax(-1)[:, 1]

    def forward_kd(self, input_ids, attention_mask, token_type_ids=None) -> CrossEncoderKDOutput:
        out = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
            output_hidden_states=True,
        )
        hidden_states = list(out.hidden_states)
        attentions = [bb.attention_scores(layer, h) for layer, h in zip(bb.layer_list(self.encoder), hidden_states)]
        logits = self.classifier(out.last_hidden_state[:, 0])
        return CrossEncoderKDOutput(logits, attentions, hidden_states, attention_mask)
