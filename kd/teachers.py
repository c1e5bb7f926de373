"""Teachers: a cross-encoder, a bi-encoder, and an ensemble whose score is the mean of its members' scores.

Seed 000's T2 teacher is the arithmetic mean of three cross-encoders' raw scores; T1 is a single one. Teachers are
frozen Rankers (same `score`/`predict` surface as students), so anything that scores with a student scores with a
teacher too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from kd.models import BertDot, HFCrossEncoder, Ranker
from kd.models.base import CONFIG_NAME, _check_pairs


def _freeze(model: Ranker) -> Ranker:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _is_kd_folder(name_or_path: str | Path) -> bool:
    return (Path(str(name_or_path)).expanduser() / CONFIG_NAME).is_file()


def load_cross_encoder_teacher(name_or_path: str | Path, max_length: int = 512) -> Ranker:
    """A saved kd cross-encoder folder (e.g. our trained BERT_CAT), or any HF sequence-classification model."""
    if _is_kd_folder(name_or_path):
        model = Ranker.from_pretrained(name_or_path)
        if model.dual_encoder:
            raise ValueError(f"{name_or_path} holds a {model.architecture!r} dual encoder, not a cross-encoder")
    else:
        model = HFCrossEncoder.from_backbone(name_or_path, max_length=max_length)
    return _freeze(model)


def load_bi_encoder_teacher(name_or_path: str | Path | None = None, **options) -> BertDot:
    """A saved kd BERT_DOT folder, or any HF/sentence-transformers encoder (pooling read from its folder)."""
    if name_or_path is not None and _is_kd_folder(name_or_path):
        model = Ranker.from_pretrained(name_or_path)
        if not isinstance(model, BertDot):
            raise ValueError(f"{name_or_path} holds a {model.architecture!r} model, not a bi-encoder (bert_dot)")
    else:
        model = BertDot.from_backbone(name_or_path, **options)
    return _freeze(model)


class TeacherEnsemble(nn.Module):
    """Score = mean of the members' raw scores; the members' own scores stay available.

        t(q, p) = 1/M Σ_m t_m(q, p)
    """

    def __init__(self, members: Sequence[Ranker], names: Sequence[str] | None = None):
        super().__init__()
        if not members:
            raise ValueError("a teacher ensemble needs at least one member")
        names = list(names) if names is not None else [f"teacher{i}" for i in range(len(members))]
        if len(names) != len(members) or len(set(names)) != len(names):
            raise ValueError(f"need one distinct name per member, got {names} for {len(members)} members")
        self.members = nn.ModuleList(_freeze(m) for m in members)
        self.names = names

    def member_scores(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """[M, B]: each member's raw score for each pair."""
        return torch.stack([m.score(queries, passages).float() for m in self.members])

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        return self.member_scores(queries, passages).mean(0)

    @torch.inference_mode()
    def predict(
        self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 64, show_progress: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(ensemble scores [N], member scores [M, N]) on CPU; each member batches by length itself."""
        _check_pairs(queries, passages)
        members = torch.stack(
            [m.predict(queries, passages, batch_size=batch_size, show_progress=show_progress) for m in self.members]
        )
        return members.mean(0), members


def load_teacher(path: str | Path, kind: str = "cross", max_length: int = 512) -> Ranker:
    """One teacher by kind: "cross" (cross-encoder) or "bi" (bi-encoder)."""
    if kind == "cross":
        return load_cross_encoder_teacher(path, max_length=max_length)
    if kind == "bi":
        return load_bi_encoder_teacher(path)
    raise ValueError(f"teacher kind must be 'cross' or 'bi', got {kind!r}")

