"""Teacher members: a cross-encoder, a bi-encoder or BM25, loaded frozen from a member spec.

Cross- and bi-encoders load through the one model loader (kd.models.loader.load_ranker, kind "cross" / "bi"); BM25
is built from its corpus's statistics (kd.teachers.bm25).

Members are frozen rankers with the students' `score` / `predict` surface, so anything that scores with a student
scores with a teacher too. A member spec is `kd.configs.TeacherSpec.model_dump()` (kd/teachers/checks.py).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from kd.models import BertDot, Ranker
from kd.models.loader import load_ranker
from kd.teachers.checks import check_member, member_label


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_cross_encoder_teacher(name_or_path: str | Path, max_length: int = 512) -> Ranker:
    """A saved kd cross-encoder folder (e.g. our trained BERT_CAT), or any HF sequence-classification model."""
    return freeze(load_ranker(name_or_path, kind="cross", max_length=max_length))


def load_bi_encoder_teacher(name_or_path: str | Path | None = None, **options) -> BertDot:
    """A saved kd BERT_DOT folder, or any HF/sentence-transformers encoder (pooling read from its folder)."""
    return freeze(load_ranker(name_or_path, kind="bi", options=options))


def load_teacher(path: str | Path, kind: str = "cross", max_length: int = 512) -> Ranker:
    """One model teacher by kind: "cross" (cross-encoder) or "bi" (bi-encoder); `load_member` takes bm25 too."""
    if kind not in ("cross", "bi"):
        raise ValueError(f"teacher kind must be 'cross' or 'bi', got {kind!r}")
    return freeze(load_ranker(path, kind=kind, max_length=max_length))


def load_member(spec: dict) -> nn.Module:
    """The frozen member a spec names (any kind), after `check_member`'s checks.

    A bm25 spec that carries `corpus_sha256` (an ensemble folder's) is refused before indexing when its corpus
    file changed: the scores were defined by the old statistics.
    """
    check_member(spec)
    kind = spec.get("kind", "cross")
    if kind == "bm25":
        from kd.teachers.bm25 import BM25Member, CorpusChanged

        try:
            member = BM25Member.from_corpus(spec["corpus"], use_title=spec.get("use_title", True),
                                            k1=spec.get("k1", 1.5), b=spec.get("b", 0.75),
                                            expected_sha256=spec.get("corpus_sha256"))
        except CorpusChanged as e:
            raise ValueError(f"{member_label(spec)}: corpus {spec['corpus']} changed since the ensemble was "
                             f"scored ({e}); its BM25 statistics differ") from None
        return freeze(member)
    return load_teacher(spec["path"], kind, spec.get("max_length", 512))
