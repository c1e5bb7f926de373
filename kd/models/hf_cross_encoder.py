"""Any HF sequence-classification model as a cross-encoder (a teacher, or a student kept in its own format).

    s(q, p) = z_0                 when the head has one label (MS MARCO cross-encoders)
    s(q, p) = z_1 − z_0           when it has two (the log-odds of "relevant"; monotone in softmax(z)[1])
Raw logits are never squashed: Margin-MSE learns from their scale.
`unpadded` ("auto" | true | false, kd.models.unpadded): a BertForSequenceClassification's logits computed on the
packed real tokens (other HF classes stay padded under "auto"; true is an error for them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from kd.models import backbone as bb
from kd.models import unpadded as up
from kd.models.base import Ranker
from kd.models.bert_cat import pretokenize_pairs, tokenize_pairs


class HFCrossEncoder(Ranker):
    architecture = "hf_cross_encoder"

    def __init__(self, model, tokenizer, *, max_length: int = 512, unpadded: str | bool = "auto"):
        labels = model.config.num_labels
        if labels not in (1, 2):
            raise ValueError(f"a cross-encoder needs 1 or 2 output labels, the model has {labels}")
        self._unpadded_reason = up.sequence_classification_reason(model)
        super().__init__(model, tokenizer, max_length=max_length,
                         unpadded=up.validate(unpadded, self._unpadded_reason))

    @classmethod
    def from_backbone(cls, name_or_path: str | Path | None = None, **options) -> "HFCrossEncoder":
        path = bb.resolve(name_or_path or bb.default_backbone())
        model = AutoModelForSequenceClassification.from_pretrained(path)
        return cls(model, AutoTokenizer.from_pretrained(path), **options)

    @classmethod
    def _from_saved(cls, saved: dict, tokenizer) -> "HFCrossEncoder":
        cfg = dict(saved["backbone_config"])
        config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        return cls(AutoModelForSequenceClassification.from_config(config), tokenizer, **saved["options"])

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        return tokenize_pairs(self.tokenizer, queries, passages, self.options["max_length"])

    def pretokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict:
        return pretokenize_pairs(self.tokenizer, queries, passages, self.options["max_length"])

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        if up.active(self.options["unpadded"], self._unpadded_reason, self):
            z = up.sequence_classification_logits(self.encoder, input_ids, attention_mask, token_type_ids)
        else:
            kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
            z = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        return z[:, 0] if z.shape[1] == 1 else z[:, 1] - z[:, 0]
