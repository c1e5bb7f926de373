"""Scored triples on disk: every member's raw scores (members.parquet) → the combined teacher file + ensemble folder.

    members.parquet      qid, pos_pid, neg_pid, <name>_pos, <name>_neg (float32, one pair per member), in input
                         order; schema metadata kd.teachers = the member specs (portable: absolute paths, bm25
                         corpus sha256) and kd.combine = the method the scoring run used
    teacher_scores.tsv   pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid (the published Margin-MSE format;
                         scores are the combination, float64, written with repr)
    ensemble/            the ensemble folder (kd/teachers/ensemble.py): members + the fitted combination

`write_combined` is the one writer of the last two, used by jobs.score_teachers at assembly and by
`kd teachers combine` (`recombine`): the same member scores and combination give the same bytes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kd.teachers.combine import Combination
from kd.teachers.ensemble import portable_spec, save_ensemble

MEMBERS_FILE = "members.parquet"
SCORES_FILE = "teacher_scores.tsv"
ENSEMBLE_DIR = "ensemble"
ID_COLUMNS = ("qid", "pos_pid", "neg_pid")
SPECS_KEY, COMBINE_KEY = b"kd.teachers", b"kd.combine"
_LINES_PER_WRITE = 100_000


@dataclass
class MemberScores:
    """The content of members.parquet: ids of T triples and M members' raw scores [M, T] (float32 as stored)."""

    qid: list[str]
    pos_pid: list[str]
    neg_pid: list[str]
    names: tuple[str, ...]
    pos: np.ndarray
    neg: np.ndarray
    specs: list[dict] = field(default_factory=list)
    combine: str | None = None

    @classmethod
    def from_table(cls, table: pa.Table, source: str = "members table") -> "MemberScores":
        meta = table.schema.metadata or {}
        specs = json.loads(meta[SPECS_KEY]) if SPECS_KEY in meta else []
        combine = meta[COMBINE_KEY].decode() if COMBINE_KEY in meta else None
        cols = set(table.column_names)
        names = tuple(s["name"] for s in specs) or tuple(
            c[:-4] for c in table.column_names if c.endswith("_pos") and f"{c[:-4]}_neg" in cols)
        need = [*ID_COLUMNS, *(f"{n}_{side}" for n in names for side in ("pos", "neg"))]
        missing = [c for c in need if c not in cols]
        if missing or not names:
            raise ValueError(f"{source}: not a members table (missing columns {missing or 'of any member'}); "
                             f"it has {table.column_names}")
        ids = {c: [str(v) for v in table.column(c).to_pylist()] for c in ID_COLUMNS}
        pos = np.stack([table.column(f"{n}_pos").to_numpy() for n in names])
        neg = np.stack([table.column(f"{n}_neg").to_numpy() for n in names])
        return cls(ids["qid"], ids["pos_pid"], ids["neg_pid"], names, pos, neg, specs, combine)

    @classmethod
    def read(cls, path: str | Path) -> "MemberScores":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"members file not found: {path}")
        return cls.from_table(pq.read_table(path), str(path))

    def __len__(self) -> int:
        return len(self.qid)

    def all_scores(self) -> np.ndarray:
        """[M, 2T] float64: every member's score of every pair (positives, then negatives) — what zscore fits on."""
        return np.concatenate([self.pos, self.neg], axis=1).astype(np.float64)

    def fit(self, method: str, weights: dict[str, float] | None = None) -> Combination:
        """The combination of `method` over these scores; weights: the specs' (default 1), then `weights`."""
        unknown = sorted(set(weights or {}) - set(self.names))
        if unknown:
            raise ValueError(f"weights for unknown members {unknown}; the members are {list(self.names)}")
        stored = {s["name"]: float(s.get("weight", 1.0)) for s in self.specs}
        w = [float((weights or {}).get(n, stored.get(n, 1.0))) for n in self.names]
        return Combination.fit(method, self.names, self.all_scores(), w)


def with_metadata(table: pa.Table, specs: list[dict], combine: str) -> pa.Table:
    """The members table as members.parquet stores it (specs made portable: see kd/teachers/ensemble.py)."""
    meta = dict(table.schema.metadata or {})
    meta[SPECS_KEY] = json.dumps([portable_spec(s) for s in specs], sort_keys=True).encode()
    meta[COMBINE_KEY] = combine.encode()
    return table.replace_schema_metadata(meta)


def write_members(path: str | Path, table: pa.Table) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def write_combined(out_dir: str | Path, scores: MemberScores, combination: Combination) -> dict[str, str]:
    """out_dir/teacher_scores.tsv (combined scores, atomic) and out_dir/ensemble/ (needs the member specs)."""
    if combination.names != scores.names:
        raise ValueError(f"combination for {list(combination.names)}, scores of {list(scores.names)}")
    if not scores.specs:
        raise ValueError("the members table carries no member specs (kd.teachers metadata): cannot write the "
                         "ensemble folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pos = combination(scores.pos).tolist()
    neg = combination(scores.neg).tolist()
    tmp = out / (SCORES_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for start in range(0, len(pos), _LINES_PER_WRITE):
            end = start + _LINES_PER_WRITE
            f.write("".join(f"{p!r}\t{n!r}\t{q}\t{a}\t{b}\n" for p, n, q, a, b in zip(
                pos[start:end], neg[start:end], scores.qid[start:end], scores.pos_pid[start:end],
                scores.neg_pid[start:end])))
    os.replace(tmp, out / SCORES_FILE)
    save_ensemble(out / ENSEMBLE_DIR, scores.specs, combination)
    return {"scores": str(out / SCORES_FILE), "ensemble": str(out / ENSEMBLE_DIR)}


def recombine(members: str | Path, out_dir: str | Path, method: str | None = None,
              weights: dict[str, float] | None = None) -> tuple[Combination, dict[str, str]]:
    """Combine a members.parquet anew without rescoring (`kd teachers combine`); method None → the scoring run's."""
    scores = MemberScores.read(members)
    method = method or scores.combine
    if method is None:
        raise ValueError(f"{members} does not record its combination method: give one (mean or zscore)")
    combination = scores.fit(method, weights)
    return combination, write_combined(out_dir, scores, combination)
