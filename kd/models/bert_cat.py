"""BERT_CAT: the all-to-all cross-encoder of Hofstätter et al. (seed 000).

    s(q, p) = w · h_CLS([CLS] q [SEP] p [SEP]) + b

The pair is truncated jointly to max_query_length + max_passage_length word pieces (paper: 30 + 200).
`unpadded` ("auto" | true | false, kd.models.unpadded): h_CLS computed on the packed real tokens (varlen attention).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kd.models import backbone as bb
from kd.models import unpadded as up
from kd.models.base import Ranker


def tokenize_pairs(tokenizer, queries: Sequence[str], passages: Sequence[str], max_length: int) -> dict:
    """`[CLS] q [SEP] p [SEP]` with joint (longest-first) truncation; shared by the cross-encoders."""
    return tokenizer(
        list(queries), list(passages), padding=True, truncation="longest_first", max_length=max_length,
        return_tensors="pt",
    )


def pretokenize_pairs(tokenizer, queries: Sequence[str], passages: Sequence[str], max_length: int) -> dict:
    """`tokenize_pairs` without padding or tensors: one id list per pair (for Ranker.predict's exact sort)."""
    enc = tokenizer(list(queries), list(passages), truncation="longest_first", max_length=max_length)
    return {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}


class BertCat(Ranker):
    architecture = "bert_cat"

    def __init__(self, encoder, tokenizer, *, max_query_length: int = 30, max_passage_length: int = 200,
                 unpadded: str | bool = "auto"):
        self._unpadded_reason = up.unsupported_reason(encoder)
        super().__init__(encoder, tokenizer, max_query_length=max_query_length, max_passage_length=max_passage_length,
                         unpadded=up.validate(unpadded, self._unpadded_reason))
        self.classifier = nn.Linear(bb.hidden_size(encoder), 1)

    def _max_length(self) -> int:
        return self.options["max_query_length"] + self.options["max_passage_length"] + 3

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize_pairs(self.tokenizer, queries, passages, self._max_length())

    def pretokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict:
        return pretokenize_pairs(self.tokenizer, queries, passages, self._max_length())

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        if up.active(self.options["unpadded"], self._unpadded_reason, self):
            return self.classifier(up.cls_hidden(self.encoder, input_ids, attention_mask, token_type_ids)).squeeze(-1)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return self.classifier(hidden.last_hidden_state[:, 0]).squeeze(-1)
