"""The surface every student and teacher shares, and HF-style save/load.

A saved model is a folder:
    kd_config.json      {"architecture": <registry name>, "options": {...}, "backbone_config": {...HF config...}}
    model.safetensors   the whole state dict (encoder + heads)
    tokenizer files     written by the tokenizer's own save_pretrained
`Ranker.from_pretrained(folder)` reads the architecture name and builds the right class (registry in kd.models).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_file as st_save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from kd.models import backbone as bb
from kd.progress import Progress

CONFIG_NAME = "kd_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


class Ranker(nn.Module):
    """Base class: one relevance score per (query, passage).

    Subclasses set `architecture` (registry name), implement `tokenize(queries, passages) -> batch` and
    `forward(**batch) -> Tensor[B]`. Dual encoders set `dual_encoder = True` and add `encode_queries`/`encode_docs`.
    """

    architecture: ClassVar[str] = ""
    dual_encoder: ClassVar[bool] = False

    def __init__(self, encoder: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase, **options: Any):
        super().__init__()
        json.dumps(options)  # options must round-trip through kd_config.json
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.options = options

    # ------------------------------------------------------------------------------------------------ constructors
    @classmethod
    def from_backbone(cls, name_or_path: str | Path | None = None, **options: Any) -> "Ranker":
        """A new student on a pretrained HF encoder (hub name or path; default: the packaged all-MiniLM-L6-v2)."""
        encoder, tokenizer = bb.load_encoder(name_or_path or bb.default_backbone())
        return cls(encoder, tokenizer, **options)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "Ranker":
        """Load a folder written by `save_pretrained` (any architecture when called on `Ranker`)."""
        folder = Path(folder)
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} not found: {folder} is not a saved kd model")
        saved = json.loads(config_file.read_text())
        arch = saved.get("architecture")
        from kd.models import MODELS  # registry; imported here to avoid a cycle

        if arch not in MODELS:
            raise ValueError(f"{config_file}: unknown architecture {arch!r}; known: {sorted(MODELS)}")
        target = MODELS[arch]
        if cls is not Ranker and not issubclass(target, cls):
            raise ValueError(f"{config_file} holds a {arch!r} model, not a {cls.architecture!r}")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = target._from_saved(saved, tokenizer)
        st_load_model(model, str(folder / WEIGHTS_NAME), strict=True)
        model.eval()
        return model

    @classmethod
    def _from_saved(cls, saved: dict, tokenizer: PreTrainedTokenizerBase) -> "Ranker":
        """Build an instance with random weights in the saved shape (weights are loaded by the caller)."""
        encoder = bb.encoder_from_config(saved["backbone_config"])
        return cls(encoder, tokenizer, **saved["options"])

    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        saved = {
            "architecture": self.architecture,
            "format_version": FORMAT_VERSION,
            "options": self.options,
            "backbone_config": bb.encoder_config_dict(self.encoder) if self.encoder is not None else None,
        }
        (folder / CONFIG_NAME).write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
        # plain contiguous CPU copies: parameters may be views into an optimizer's flat buffer (DeepSpeed ZeRO)
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.state_dict().items()}
        st_save_file(state, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(folder)
        return folder

    # ---------------------------------------------------------------------------------------------------- scoring
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """Scores [B] for aligned (query, passage) pairs; gradients flow unless the caller disables them."""
        _check_pairs(queries, passages)
        batch = {k: v.to(self.device) for k, v in self.tokenize(queries, passages).items()}
        return self(**batch)

    def score_triples(
        self, queries: Sequence[str], positives: Sequence[str], negatives: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(s(q, p⁺), s(q, p⁻)) for a batch of triples; dual encoders override this to encode each query once."""
        scores = self.score(list(queries) + list(queries), list(positives) + list(negatives))
        return scores[: len(queries)], scores[len(queries) :]

    def pretokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, list[list[int]]] | None:
        """Unpadded features of every pair ({name: one id list per pair}) whose padded batches `forward` takes.

        Models that implement it (the cross-encoders) are tokenized once in `predict` and batched by exact token
        count; None (the default) → `predict` batches by character length and tokenizes each batch with `tokenize`.
        """
        return None

    @torch.inference_mode()
    def predict(
        self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> torch.Tensor:
        """Inference scores [N] (CPU float32) for many pairs: length-sorted batches so padding stays small.

        With `pretokenize` every pair is tokenized once and sorted by its exact token count, so each batch is padded
        only to its own longest pair; scores stay on the device until the end (no per-batch host sync).
        """
        _check_pairs(queries, passages)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        features = self.pretokenize(queries, passages)
        if features is None:
            lengths = np.fromiter((len(q) + len(p) for q, p in zip(queries, passages)), np.int64, len(queries))
        else:
            lengths = np.fromiter(map(len, features["input_ids"]), np.int64, len(queries))
            pad_ids = {"input_ids": self.tokenizer.pad_token_id or 0}
        order = np.argsort(lengths, kind="stable")
        device = self.device
        outs: list[torch.Tensor] = []
        was_training = self.training
        self.eval()
        try:
            progress = Progress(f"scoring ({self.architecture})", len(order), unit="pairs", enabled=show_progress)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                if features is None:
                    batch = self.tokenize([queries[i] for i in idx], [passages[i] for i in idx])
                else:
                    batch = pad_features(features, idx, lengths, pad_ids)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                outs.append(self(**batch).float())
                progress.update(len(idx))
        finally:
            self.train(was_training)
        progress.close()
        out = torch.empty(len(order), dtype=torch.float32)
        out[torch.from_numpy(order)] = torch.cat(outs).cpu()
        return out

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, options={self.options}"


def _check_pairs(queries: Sequence[str], passages: Sequence[str]) -> None:
    if isinstance(queries, str) or isinstance(passages, str):
        raise TypeError("queries and passages must be sequences of strings, not a single string")
    if len(queries) != len(passages):
        raise ValueError(f"got {len(queries)} queries but {len(passages)} passages; pairs must be aligned")
    if len(queries) == 0:
        raise ValueError("no (query, passage) pairs to score")


def pad_features(
    features: dict[str, list[list[int]]], idx: np.ndarray, lengths: np.ndarray, pad_ids: dict[str, int]
) -> dict[str, torch.Tensor]:
    """Rows `idx` of unpadded features → right-padded LongTensors [len(idx), longest] + `attention_mask`."""
    width = int(lengths[idx].max())
    mask = np.arange(width)[None, :] < lengths[idx][:, None]
    batch = {}
    for name, rows in features.items():
        if name == "attention_mask":
            continue
        arr = np.full((len(idx), width), pad_ids.get(name, 0), dtype=np.int64)
        for r, i in enumerate(idx):
            arr[r, : lengths[i]] = rows[i]
        batch[name] = torch.from_numpy(arr)
    batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
    return batch


def tokenize_texts(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors over non-padding positions: [B, L, d], [B, L] → [B, d]."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
