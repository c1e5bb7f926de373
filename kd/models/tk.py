"""TK (Transformer-Kernel) ranking model (Hofstätter et al.; seed 000's most efficient student).

    e = word-piece embeddings (initialised from the backbone's; the paper used GloVe 300-d)
    h = α·e + (1−α)·ctx(e + pos)        ctx = 2-layer Transformer encoder, α learned (init 0.5)
    M_ij = cos(h_i^q, h_j^p)
    K_k(M_ij) = exp(−(M_ij − μ_k)² / 2σ²),  μ = 1.0, 0.9, 0.7, …, −0.9 (11 kernels), σ = 0.1
    φ_k = Σ_{i ∈ q} log(max(1e-10, Σ_j K_k(M_ij) · mask_j))      (padded query terms excluded)
    s = w · φ   (no bias)
Word pieces are taken without [CLS]/[SEP]. Only the backbone's embedding matrix is used, not its layers.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from kd.models import backbone as bb
from kd.models.base import Ranker


def kernel_means(n_kernels: int) -> list[float]:
    """μ = 1.0 (exact match) then n−1 bins centred at 0.9, 0.7, … (TK/KNRM convention; 11 → 1.0, 0.9, …, −0.9)."""
    if n_kernels < 2:
        raise ValueError(f"TK needs at least 2 kernels, got {n_kernels}")
    step = 2.0 / (n_kernels - 1)
    return [1.0] + [1.0 - step / 2 - i * step for i in range(n_kernels - 1)]


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class TK(Ranker):
    architecture = "tk"

    def __init__(
        self,
        encoder,
        tokenizer,
        *,
        vocab_size: int | None = None,
        embedding_dim: int | None = None,
        num_layers: int = 2,
        num_heads: int = 8,
        ff_dim: int = 100,
        n_kernels: int = 11,
        sigma: float = 0.1,
        dropout: float = 0.0,
        train_embeddings: bool = True,
        max_query_length: int = 30,
        max_passage_length: int = 200,
    ):
        if encoder is not None:
            source = bb.word_embeddings(encoder).weight.detach()
            vocab_size, embedding_dim = source.shape
        elif vocab_size is None or embedding_dim is None:
            raise ValueError("TK needs a backbone encoder or vocab_size and embedding_dim")
        if embedding_dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the embedding size {embedding_dim}")
        super().__init__(
            None, tokenizer, vocab_size=vocab_size, embedding_dim=embedding_dim, num_layers=num_layers,
            num_heads=num_heads, ff_dim=ff_dim, n_kernels=n_kernels, sigma=sigma, dropout=dropout,
            train_embeddings=train_embeddings, max_query_length=max_query_length,
            max_passage_length=max_passage_length,
        )
        pad = tokenizer.pad_token_id
        self.embeddings = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad)
        if encoder is not None:
            self.embeddings.weight.data.copy_(source)
        self.embeddings.weight.requires_grad_(train_embeddings)
        layer = nn.TransformerEncoderLayer(
            embedding_dim, num_heads, dim_feedforward=ff_dim, dropout=dropout, batch_first=True
        )
        self.contextualizer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        # shape (1,), not a 0-d scalar: DeepSpeed's start-up broadcast views every parameter as bytes, which a 0-d
        # tensor cannot do ("self.dim() cannot be 0 to view Float as Byte")
        self.mixer = nn.Parameter(torch.full((1,), 0.5))
        self.register_buffer("mu", torch.tensor(kernel_means(n_kernels)).view(1, 1, 1, -1), persistent=False)
        self.kernel_weights = nn.Linear(n_kernels, 1, bias=False)
        nn.init.uniform_(self.kernel_weights.weight, -0.014, 0.014)  # TK's init

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "mixer"
        if key in state_dict and state_dict[key].dim() == 0:  # folders saved while the mixer was 0-d
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @classmethod
    def _from_saved(cls, saved: dict, tokenizer) -> "TK":
        return cls(None, tokenizer, **saved["options"])

    def _tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        out = self.tokenizer(
            list(texts), add_special_tokens=False, padding=True, truncation=True, max_length=max_length,
            return_tensors="pt", return_token_type_ids=False,
        )
        if out["input_ids"].shape[1] == 0:  # every text empty: one padded slot so shapes stay valid
            b = len(texts)
            out = {"input_ids": torch.full((b, 1), self.tokenizer.pad_token_id), "attention_mask": torch.zeros(b, 1)}
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"].long()}

    def tokenize(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        q = self._tokenize(queries, self.options["max_query_length"])
        d = self._tokenize(passages, self.options["max_passage_length"])
        return {"q_input_ids": q["input_ids"], "q_mask": q["attention_mask"],
                "d_input_ids": d["input_ids"], "d_mask": d["attention_mask"]}

    def contextualize(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.embeddings(input_ids)
        pos = sinusoidal_positions(e.shape[1], e.shape[2], e.device).to(e.dtype)
        ctx = self.contextualizer(e + pos, src_key_padding_mask=~mask.bool())
        h = self.mixer * e + (1 - self.mixer) * ctx
        return h * mask.unsqueeze(-1).to(h.dtype)

    def forward(self, q_input_ids, q_mask, d_input_ids, d_mask) -> torch.Tensor:
        q = nn.functional.normalize(self.contextualize(q_input_ids, q_mask), dim=-1, eps=1e-10)
        d = nn.functional.normalize(self.contextualize(d_input_ids, d_mask), dim=-1, eps=1e-10)
        match = torch.bmm(q, d.transpose(1, 2)).unsqueeze(-1)  # [B, Lq, Ld, 1]
        sigma = self.options["sigma"]
        kernels = torch.exp(-((match - self.mu) ** 2) / (2 * sigma**2))
        kernels = kernels * d_mask[:, None, :, None].to(kernels.dtype)
        per_term = torch.log(torch.clamp(kernels.sum(2), min=1e-10))  # [B, Lq, K]
        features = (per_term * q_mask.unsqueeze(-1).to(per_term.dtype)).sum(1)  # [B, K]
        return self.kernel_weights(features).squeeze(-1)
