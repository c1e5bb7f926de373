"""Shared argument validation for the loss modules (torch only).

Every check raises with a message naming the offending argument, so a wrong call
fails at the loss rather than deep inside a torch kernel or, worse, silently
broadcasts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_float(name: str, x: object) -> torch.Tensor:
    """``x`` must be a non-empty floating-point tensor (``TypeError`` / ``ValueError``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); an empty batch has no loss")
    return x


def check_pair(name_a: str, a: object, name_b: str, b: object) -> None:
    """Both float and non-empty, with identical shape and dtype (no silent broadcasting)."""
    check_float(name_a, a)
    check_float(name_b, b)
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.dtype != b.dtype:
        raise TypeError(f"{name_a} and {name_b} must have the same dtype, got {a.dtype} and {b.dtype}")


def check_same(names: Sequence[str], tensors: Sequence[object]) -> None:
    """Pairwise :func:`check_pair` of every tensor against the first."""
    for name, t in zip(names[1:], tensors[1:]):
        check_pair(names[0], tensors[0], name, t)


def check_ndim(name: str, x: torch.Tensor, ndim: int, layout: str) -> None:
    """``x`` must have ``ndim`` dimensions; ``layout`` (e.g. ``"[B, n]"``) goes into the message."""
    if x.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")


def check_temperature(temperature: float, name: str = "temperature") -> float:
    """A softmax temperature must be a finite number > 0."""
    t = float(temperature)
    if not t > 0 or t == float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}")
    return t


def check_labels(name: str, labels: object, batch: int) -> torch.Tensor:
    """Class labels: an integer tensor of shape [B]."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer (class index) tensor, got dtype {labels.dtype}")
    if labels.shape != (batch,):
        raise ValueError(f"{name} must have shape [B] = ({batch},), got {tuple(labels.shape)}")
    return labels


def check_length(name: str, seq: object, expected: int) -> Sequence[torch.Tensor]:
    """A list/tuple of tensors of an exact length."""
    if isinstance(seq, torch.Tensor) or not isinstance(seq, Sequence):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(seq).__name__}")
    if len(seq) != expected:
        raise ValueError(f"{name} must hold {expected} tensors, got {len(seq)}")
    return seq
