"""Student initialisation (seed 003, seed 002): keep a subset of a teacher's layers, or start from another model.

Layer indices are 0-based. Named schemes for keeping n of a teacher's L layers:
    top-bottom  ⌈n/2⌉ lowest + ⌊n/2⌋ highest      (12 → 4: {0, 1, 10, 11}; 2: {0, 11}; the paper's best)
    uniform     one layer per block of L/n, near the block's middle (12 → 4: {1, 4, 7, 10})
    bottom      {0, …, n−1}                        top     {L−n, …, L−1}
    middle      n consecutive layers centred in the stack (12 → 4: {4, …, 7})
or an explicit index list (kept in the given order; must be increasing and in range).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

from torch import nn

from kd.models import BertDot, Ranker
from kd.models import backbone as bb

from kd.configs.catalog import LAYER_SCHEMES as SCHEMES


def select_layers(scheme: str, n: int, total: int) -> list[int]:
    """Indices of the n layers a named scheme keeps out of `total`."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown layer scheme {scheme!r}; known: {SCHEMES} (or give an explicit index list)")
    if not 1 <= n <= total:
        raise ValueError(f"number of layers to keep must be in [1, {total}], got {n}")
    if scheme == "bottom":
        return list(range(n))
    if scheme == "top":
        return list(range(total - n, total))
    if scheme == "middle":
        start = (total - n) // 2
        return list(range(start, start + n))
    if scheme == "top-bottom":
        low = (n + 1) // 2
        return list(range(low)) + list(range(total - (n - low), total))
    block = total / n  # uniform
    offset = int((block - 1) // 2)
    return [int(i * block) + offset for i in range(n)]


def resolve_layers(layers: str | Sequence[int], total: int, n: int | None = None) -> list[int]:
    """A scheme name (+ n) or an explicit index list → validated index list."""
    if isinstance(layers, str):
        if n is None:
            raise ValueError(f"layer scheme {layers!r} needs a number of layers to keep")
        return select_layers(layers, n, total)
    idx = [int(i) for i in layers]
    if not idx:
        raise ValueError("explicit layer list is empty")
    bad = [i for i in idx if not 0 <= i < total]
    if bad:
        raise ValueError(f"layer indices {bad} out of range for a {total}-layer model (valid: 0..{total - 1})")
    if any(b <= a for a, b in zip(idx, idx[1:])):
        raise ValueError(f"layer indices must be strictly increasing, got {idx}")
    return idx


def subset_encoder_layers(encoder: nn.Module, indices: Sequence[int]) -> nn.Module:
    """A deep copy of an HF encoder that keeps only `indices` of its layers, in that order."""
    total = bb.num_layers(encoder)
    idx = resolve_layers(list(indices), total)
    new = copy.deepcopy(encoder)
    bb.set_layer_list(new, [bb.layer_list(new)[i] for i in idx])
    return new


def layer_subset_student(teacher: Ranker, layers: str | Sequence[int], n: int | None = None) -> Ranker:
    """A copy of a teacher model (any architecture with an encoder: heads, projections included) with a layer subset."""
    if teacher.encoder is None:
        raise ValueError(f"{teacher.architecture!r} has no Transformer encoder to take layers from")
    idx = resolve_layers(layers, bb.num_layers(teacher.encoder), n)
    student = copy.deepcopy(teacher)
    bb.set_layer_list(student.encoder, [bb.layer_list(student.encoder)[i] for i in idx])
    if "split_layer" in student.options and student.options["split_layer"] > len(idx):
        raise ValueError(f"PreTTR split_layer={student.options['split_layer']} exceeds the {len(idx)} kept layers")
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()
    return student


def truncate_layers(model: Ranker, k: int) -> Ranker:
    """Keep the first k layers of a model's backbone (TinyBERT-style small students from a general model)."""
    return layer_subset_student(model, "bottom", k)


def other_model_student(backbone: str | Path, teacher_dim: int, **options) -> BertDot:
    """Seed 003 (b): another pretrained encoder + pooling (mean unless given) + a Linear projection to the teacher's
    embedding width, added only when the widths differ (as in the paper)."""
    options = {"pooling": "mean", "normalize": False, **options}
    student = BertDot.from_backbone(backbone, **options)
    if bb.hidden_size(student.encoder) != teacher_dim:
        student = BertDot(student.encoder, student.tokenizer, **{**student.options, "projection_dim": teacher_dim})
    return student
