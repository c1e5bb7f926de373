"""The student zoo: one file per architecture, the name → class registry, and the one model loader.

Adding an architecture = one file + one line in MODELS. Loading any model argument (kd folder, HF /
sentence-transformers name, teacher ensemble, registry URI through a resolver) is kd/models/loader.py.
"""
from __future__ import annotations

from pathlib import Path

from kd.models.base import Ranker
from kd.models.bert_cat import BertCat
from kd.models.bert_dot import BertDot
from kd.models.colbert import ColBERT
from kd.models.hf_cross_encoder import HFCrossEncoder
from kd.models.loader import load_model, load_ranker, load_spec
from kd.models.prettr import PreTTR
from kd.models.tinybert_cat import CrossEncoderKDOutput, TinyBertCat
from kd.models.tk import TK

MODELS: dict[str, type[Ranker]] = {
    cls.architecture: cls for cls in (BertCat, BertDot, ColBERT, PreTTR, TK, TinyBertCat, HFCrossEncoder)
}
STUDENTS = ("bert_cat", "bert_dot", "colbert", "prettr", "tk", "tinybert_cat")


def get_model_class(name: str) -> type[Ranker]:
    if name not in MODELS:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def build_student(architecture: str, backbone: str | Path | None = None, **options) -> Ranker:
    """A new student of the named architecture on a pretrained backbone (hub name or path)."""
    return get_model_class(architecture).from_backbone(backbone, **options)


__all__ = [
    "MODELS", "STUDENTS", "Ranker", "BertCat", "BertDot", "ColBERT", "PreTTR", "TK", "TinyBertCat", "HFCrossEncoder",
    "CrossEncoderKDOutput", "get_model_class", "build_student", "load_model",
    "load_ranker", "load_spec",
]
