"""Distillation losses (torch only) and their name → class registry.

Every loss is an ``nn.Module`` with class attributes ``name`` (registry key), ``kind``
(``"pairwise" | "pointwise" | "listwise" | "logits" | "tinybert" | "embedding"``, i.e. which
inputs ``forward`` takes) and ``requires_teacher``, so a config validator can check that a
training mode and a loss fit together.
"""

from __future__ import annotations

from torch import nn

from .embedding_alignment import EmbeddingAlignmentLoss
from .listwise_kl import ListwiseKLLoss
from .margin_mse import MarginMSELoss
from .pointwise_mse import PointwiseMSELoss
from .ranknet import RankNetLoss
from .standard_kd import StandardKDLoss
from .tinybert import SimplifiedTinyBERTLoss

KINDS = ("pairwise", "pointwise", "listwise", "logits", "tinybert", "embedding")

LOSSES: dict[str, type[nn.Module]] = {
    cls.name: cls
    for cls in (
        MarginMSELoss,
        PointwiseMSELoss,
        ListwiseKLLoss,
        RankNetLoss,
        StandardKDLoss,
        SimplifiedTinyBERTLoss,
        EmbeddingAlignmentLoss,
    )
}


def get_loss(name: str, **kwargs) -> nn.Module:
    """Instantiate the loss registered as ``name`` with ``kwargs`` (``ValueError`` if unknown)."""
    try:
        cls = LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}") from None
    return cls(**kwargs)


__all__ = [
    "KINDS",
    "LOSSES",
    "get_loss",
    "EmbeddingAlignmentLoss",
    "ListwiseKLLoss",
    "MarginMSELoss",
    "PointwiseMSELoss",
    "RankNetLoss",
    "SimplifiedTinyBERTLoss",
    "StandardKDLoss",
]
