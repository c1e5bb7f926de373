"""A teacher ensemble (members of any kind + their Combination), and the ensemble folder that stores one.

    t(q, p) = combination(t_1(q, p), …, t_M(q, p))        (kd/teachers/combine.py: mean or zscore)

The ensemble folder (what jobs.score_teachers writes beside its scores, and what evaluation loads) is one file,
`kd_ensemble.json`: {"format_version": 1, "members": [member specs], "combination": Combination.to_dict()}. Member
specs hold absolute local paths (hub names stay names) and, for a bm25 member, the sha256 of its corpus file: a
changed corpus would change the statistics the combination was fitted on, so loading refuses it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from kd.models.base import _check_pairs
from kd.teachers.checks import sha256_file
from kd.teachers.combine import Combination
from kd.teachers.members import freeze, load_member

ENSEMBLE_FILE = "kd_ensemble.json"
FORMAT_VERSION = 1


class TeacherEnsemble(nn.Module):
    """Members' scores combined by a Combination (None → mean with weights 1, the paper's T2)."""

    architecture = "ensemble"
    dual_encoder = False

    def __init__(self, members: Sequence[nn.Module], names: Sequence[str] | None = None,
                 combination: Combination | None = None):
        super().__init__()
        if not members:
            raise ValueError("a teacher ensemble needs at least one member")
        names = list(names) if names is not None else [f"teacher{i}" for i in range(len(members))]
        if len(names) != len(members) or len(set(names)) != len(names):
            raise ValueError(f"need one distinct name per member, got {names} for {len(members)} members")
        if combination is None:
            combination = Combination("mean", tuple(names), (1.0,) * len(names))
        if combination.names != tuple(names):
            raise ValueError(f"the combination is for members {list(combination.names)}, the ensemble has {names}")
        self.members = nn.ModuleList(freeze(m) for m in members)
        self.names = names
        self.combination = combination

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.parameters()), torch.device("cpu"))

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def member_scores(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """[M, B]: each member's raw score for each pair (on the ensemble's device)."""
        device = self.device
        return torch.stack([m.score(queries, passages).float().to(device) for m in self.members])

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """Combined scores [B] (float32; combined in float64)."""
        return self.combination(self.member_scores(queries, passages)).float()

    @torch.inference_mode()
    def predict_members(self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 64,
                        show_progress: bool = False) -> torch.Tensor:
        """[M, N] float32 on CPU: each member's `predict` (each batches by length itself)."""
        _check_pairs(queries, passages)
        return torch.stack([m.predict(queries, passages, batch_size=batch_size, show_progress=show_progress)
                            for m in self.members])

    def predict(self, queries: Sequence[str], passages: Sequence[str], batch_size: int = 64,
                show_progress: bool = False) -> torch.Tensor:
        """Combined scores [N], float32 on CPU (the members' float32 scores combined in float64)."""
        members = self.predict_members(queries, passages, batch_size=batch_size, show_progress=show_progress)
        return self.combination(members).float()

    def extra_repr(self) -> str:
        return f"names={self.names}, combination={self.combination.describe()}"


def portable_spec(spec: dict) -> dict:
    """A member spec as an ensemble folder keeps it: absolute local paths, a bm25 corpus with its sha256."""
    spec = dict(spec)
    if spec.get("kind") == "bm25":
        corpus = Path(spec["corpus"]).expanduser().resolve()
        digest = sha256_file(corpus)
        if spec.get("corpus_sha256") not in (None, digest):
            raise ValueError(f"teacher {spec['name']!r} (kind bm25): corpus {corpus} changed since it was scored "
                             f"(sha256 {digest[:12]}… ≠ {spec['corpus_sha256'][:12]}…)")
        spec.update(corpus=str(corpus), corpus_sha256=digest)
    elif spec.get("path") and Path(spec["path"]).expanduser().exists():
        spec["path"] = str(Path(spec["path"]).expanduser().resolve())
    return spec


def save_ensemble(folder: str | Path, specs: list[dict], combination: Combination) -> Path:
    """Write folder/kd_ensemble.json (atomically) for members `specs` (in combination.names order); returns the
    folder. Each spec's weight is the combination's."""
    names = tuple(s["name"] for s in specs)
    if names != combination.names:
        raise ValueError(f"member specs {list(names)} do not match the combination's {list(combination.names)}")
    members = [{**portable_spec(s), "weight": w} for s, w in zip(specs, combination.weights)]
    doc = {"format_version": FORMAT_VERSION, "members": members, "combination": combination.to_dict()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (ENSEMBLE_FILE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, folder / ENSEMBLE_FILE)
    return folder


def is_ensemble_folder(path: str | Path) -> bool:
    return (Path(str(path)).expanduser() / ENSEMBLE_FILE).is_file()


def read_ensemble(folder: str | Path) -> tuple[list[dict], Combination]:
    """(member specs, combination) of an ensemble folder, without loading any model."""
    file = Path(folder).expanduser() / ENSEMBLE_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: {folder} is not a teacher ensemble folder")
    doc = json.loads(file.read_text())
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {doc.get('format_version')!r}, this kd reads {FORMAT_VERSION}")
    return doc["members"], Combination.from_dict(doc["combination"])


def load_ensemble(folder: str | Path) -> TeacherEnsemble:
    """The TeacherEnsemble an ensemble folder stores (a bm25 member whose corpus changed is refused)."""
    specs, combination = read_ensemble(folder)
    members = [load_member(s) for s in specs]
    return TeacherEnsemble(members, [s["name"] for s in specs], combination)
