"""Teachers: members of any kind (cross-encoder, bi-encoder, BM25), their combination, ensembles and their files.

    checks.py    check_member: can a member spec score? (cheap, no torch: config validation runs it)
    members.py   load_cross_encoder_teacher, load_bi_encoder_teacher, load_teacher, load_member (frozen members)
    bm25.py      BM25Member: bm25s-identical lexical scores for any (query, passage) pair from a corpus's statistics
    combine.py   Combination: mean (the paper's T2) or zscore (members standardised over the whole scored set)
    ensemble.py  TeacherEnsemble; the ensemble folder (kd_ensemble.json): save_ensemble, load_ensemble
    scores.py    members.parquet → teacher_scores.tsv + ensemble folder (the scoring job and `kd teachers combine`)

Names are imported on first use (PEP 562), so `kd.configs` can run `check_member` without importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "check_member": "checks", "sha256_file": "checks", "KINDS": "checks",
    "load_cross_encoder_teacher": "members", "load_bi_encoder_teacher": "members", "load_teacher": "members",
    "load_member": "members",
    "BM25Member": "bm25",
    "Combination": "combine", "METHODS": "combine",
    "TeacherEnsemble": "ensemble", "ENSEMBLE_FILE": "ensemble", "save_ensemble": "ensemble",
    "load_ensemble": "ensemble", "read_ensemble": "ensemble", "is_ensemble_folder": "ensemble",
    "MemberScores": "scores", "recombine": "scores", "write_combined": "scores", "MEMBERS_FILE": "scores",
    "SCORES_FILE": "scores", "ENSEMBLE_DIR": "scores",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"kd.teachers.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kd.teachers' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
