"""Teacher-score files (Margin-MSE T1 / T2): ``pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid``.

This module holds the record types, the per-line validated reader (:data:`TEACHER` columns) and
the writer; :mod:`kd.data.formats.teacher_arrow` reads the same files columnar with pyarrow and
falls back on :data:`TEACHER` for any block it cannot vouch for, so both paths accept the same
lines with the same values and name the same bad lines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np

from kd.data.formats.errors import NON_FINITE_SCORE, SCORE_OUT_OF_RANGE, FormatError, PathLike, ReadStats, short
from kd.data.formats.lines import BadField, Columns, Field, ident, iter_records, open_text_w, score

# Largest |score| accepted in a teacher-score file (reason "score out of range").  Teacher scores are
# ranker outputs: cross-encoder logits (|s| of order 10), dot products of embeddings (order 10-100 even
# unnormalised), BM25 (order 10 for real queries); real ones stay far below 1e4.  A larger magnitude is
# a broken file (a column of ids read as scores, exponentiated logits, a unit bug), and it is harmful
# as well as wrong: Margin-MSE squares the margin, and (1e30)^2 overflows float32 (max 3.4e38) to inf,
# so one such line makes the loss inf/NaN.  1e4 keeps squared margins below 4e8, exact enough in float32.
MAX_ABS_TEACHER_SCORE = 1e4

TEACHER_COLUMNS = ("pos_score", "neg_score", "qid", "pos_pid", "neg_pid")

IdMode = Literal["auto", "int", "str"]

_OUT_OF_RANGE = (f"|score| above {MAX_ABS_TEACHER_SCORE:g} is no ranker's score "
                 "(see MAX_ABS_TEACHER_SCORE in kd.data.formats)")


class TeacherScore(NamedTuple):
    """One line of a teacher file (validated path): ids as strings, scores as floats."""

    pos_score: float
    neg_score: float
    qid: str
    pos_pid: str
    neg_pid: str
    line: int


@dataclass
class TeacherScores:
    """Columnar teacher scores: five equally long numpy arrays.

    Ids are ``int64`` when every id in the file is a canonical decimal integer (MS MARCO), else
    ``object`` arrays of ``str``; see ``ids=`` of :func:`read_teacher_scores`.  ``first_line``
    is the 1-based line number of row 0 (chunks of a streamed file); in strict mode row ``i``
    is line ``first_line + i``.
    """

    pos_score: np.ndarray
    neg_score: np.ndarray
    qid: np.ndarray
    pos_pid: np.ndarray
    neg_pid: np.ndarray
    path: str | None = None
    first_line: int = 1

    def __len__(self) -> int:
        return len(self.pos_score)

    @property
    def margin(self) -> np.ndarray:
        """Signed teacher margin ``pos_score - neg_score``."""
        return self.pos_score - self.neg_score

    def __iter__(self) -> Iterator[TeacherScore]:
        for i in range(len(self)):
            yield self.row(i)

    def row(self, i: int) -> TeacherScore:
        return TeacherScore(
            float(self.pos_score[i]), float(self.neg_score[i]),
            str(self.qid[i]), str(self.pos_pid[i]), str(self.neg_pid[i]),
            self.first_line + i,
        )

    @staticmethod
    def concat(parts: list[TeacherScores]) -> TeacherScores:
        if not parts:
            raise ValueError("no chunks to concatenate")
        if len(parts) == 1:
            return parts[0]
        cols = {c: np.concatenate([getattr(p, c) for p in parts]) for c in TEACHER_COLUMNS}
        return TeacherScores(**cols, path=parts[0].path, first_line=parts[0].first_line)


def teacher_score(label: str) -> Field:
    """A finite score with ``|score| <= MAX_ABS_TEACHER_SCORE`` (see there for why), else a bad line."""
    finite = score(label)

    def parse(s: str) -> float:
        v = finite(s)
        if abs(v) > MAX_ABS_TEACHER_SCORE:
            raise BadField(SCORE_OUT_OF_RANGE, f"{label} {short(s)}: {_OUT_OF_RANGE}")
        return v

    return parse


TEACHER = Columns(" ".join(TEACHER_COLUMNS), (teacher_score("pos_score"), teacher_score("neg_score"), ident, ident, ident),
                  TeacherScore, with_line=True)


def iter_teacher_scores(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> Iterator[TeacherScore]:
    """Per-line validated reader of a teacher file: yields :class:`TeacherScore` records.

    Slower (~1M lines/s) than :func:`read_teacher_scores`, but streams with O(1) memory and
    carries the line number on every record.
    """
    return iter_records(path, TEACHER, strict=strict, stats=stats, what="teacher-score lines")


def write_teacher_scores(
    path: PathLike,
    scores: TeacherScores | Iterable[tuple[float, float, Any, Any, Any]],
    *,
    chunk_rows: int = 1 << 16,
) -> int:
    """Write ``pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid`` lines.

    Accepts a :class:`TeacherScores` or an iterable of 5-tuples (extra trailing fields, like
    :class:`TeacherScore`'s ``line``, are ignored).  Scores are written with ``repr`` of the
    Python float (round-trips exactly); NaN/inf scores raise :class:`FormatError` naming the
    record, and so do scores the readers would refuse (``|score| > MAX_ABS_TEACHER_SCORE``).
    Returns the number of lines written.
    """
    rows: Iterable[tuple] = scores if not isinstance(scores, TeacherScores) else _teacher_rows(scores, chunk_rows)
    n = 0
    buf: list[str] = []
    with open_text_w(path) as f:
        for r in rows:
            n += 1
            if len(r) < 5:
                raise FormatError(f"record {n} has {len(r)} fields, expected 5", path=path, line=n)
            pos, neg = float(r[0]), float(r[1])
            if not (math.isfinite(pos) and math.isfinite(neg)):
                raise FormatError(f"non-finite score in record {n}: {pos}, {neg}", path=path, line=n,
                                  reason=NON_FINITE_SCORE)
            if max(abs(pos), abs(neg)) > MAX_ABS_TEACHER_SCORE:
                raise FormatError(f"score out of range in record {n}: {pos}, {neg}: {_OUT_OF_RANGE}",
                                  path=path, line=n, reason=SCORE_OUT_OF_RANGE)
            ids = (str(r[2]), str(r[3]), str(r[4]))
            for x in ids:
                if not x or "\t" in x or "\n" in x or "\r" in x:
                    raise FormatError(f"id {x!r} of record {n} is empty or contains a tab/newline", path=path, line=n)
            buf.append(f"{pos!r}\t{neg!r}\t{ids[0]}\t{ids[1]}\t{ids[2]}\n")
            if len(buf) >= chunk_rows:
                f.write("".join(buf))
                buf.clear()
        f.write("".join(buf))
    return n


def _teacher_rows(ts: TeacherScores, chunk_rows: int) -> Iterator[tuple]:
    for s in range(0, len(ts), chunk_rows):
        e = s + chunk_rows
        yield from zip(
            ts.pos_score[s:e].tolist(), ts.neg_score[s:e].tolist(),
            ts.qid[s:e].tolist(), ts.pos_pid[s:e].tolist(), ts.neg_pid[s:e].tolist(),
        )
