"""TREC runs and qrels (and BEIR's qrels TSV, which :func:`read_qrels` tells apart).

* TREC qrels: ``qid 0 docid grade`` (whitespace separated, integer grade).
* BEIR qrels TSV: ``query-id<TAB>corpus-id<TAB>score`` with one optional header line.
* TREC run: ``qid Q0 docid rank score tag`` (whitespace separated, finite score).

Order of a run is trec_eval's (:func:`ranked`): score descending, ties by docid descending.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import NamedTuple

from kd.data.formats.errors import (
    DUPLICATE_DOCUMENT,
    DUPLICATE_JUDGMENT,
    NON_FINITE_SCORE,
    NON_INTEGER_GRADE,
    NON_INTEGER_RANK,
    FormatError,
    PathLike,
    ReadStats,
    new_stats,
)
from kd.data.formats.lines import (
    Columns,
    check_nonempty,
    check_token,
    collect_unique,
    ident,
    integer,
    iter_records,
    open_input,
    open_text_w,
    raw,
    score,
)

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]

BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")


class Judgment(NamedTuple):
    qid: str
    docid: str
    grade: int


class RunLine(NamedTuple):
    qid: str
    docid: str
    rank: int
    score: float
    tag: str


TREC_QRELS = Columns("qid iter docid grade", (raw, raw, raw, integer(NON_INTEGER_GRADE, "grade")),
                     Judgment, sep=None, keep=(0, 2, 3))
BEIR_QRELS = Columns("query-id corpus-id score", (ident, ident, integer(NON_INTEGER_GRADE, "score", strip=True)),
                     Judgment, header=BEIR_QRELS_HEADER)
TREC_RUN = Columns("qid Q0 docid rank score tag", (raw, raw, raw, integer(NON_INTEGER_RANK, "rank"), score(), raw),
                   RunLine, sep=None, keep=(0, 2, 3, 4, 5))


# --------------------------------------------------------------------------------------------
# qrels
# --------------------------------------------------------------------------------------------


def iter_trec_qrels(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> Iterator[Judgment]:
    """Stream judgments from a TREC qrels file (``qid iter docid grade``, whitespace separated)."""
    return iter_records(path, TREC_QRELS, strict=strict, stats=stats, what="judgments")


def iter_beir_qrels(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> Iterator[Judgment]:
    """Stream judgments from a BEIR qrels TSV (``query-id corpus-id score``, optional header).

    Only line 1 may be the header; a header line anywhere else is ``"duplicate header"``.
    """
    return iter_records(path, BEIR_QRELS, strict=strict, stats=stats, what="judgments")


def _collect_qrels(judgments: Iterator[Judgment], path: PathLike, stats: ReadStats, strict: bool) -> Qrels:
    return collect_unique((((j.qid, j.docid), j.grade) for j in judgments), path, stats, strict, DUPLICATE_JUDGMENT,
                          lambda k: f"query {k[0]!r} document {k[1]!r} judged twice", nested=True)


def read_trec_qrels(path: PathLike, *, strict: bool = True, stats: ReadStats | None = None) -> Qrels:
    """Load a TREC qrels file as ``{qid: {docid: grade}}``; a repeated (qid, docid) is bad."""
    stats = new_stats(stats, path)
    return _collect_qrels(iter_trec_qrels(path, strict=strict, stats=stats), path, stats, strict)


def read_beir_qrels(path: PathLike, *, strict: bool = True, stats: ReadStats | None = None) -> Qrels:
    """Load a BEIR qrels TSV as ``{qid: {docid: grade}}``; a repeated (qid, docid) is bad."""
    stats = new_stats(stats, path)
    return _collect_qrels(iter_beir_qrels(path, strict=strict, stats=stats), path, stats, strict)


def read_qrels(path: PathLike, *, strict: bool = True, stats: ReadStats | None = None) -> Qrels:
    """Load qrels in either format, detected from the first line.

    BEIR if the first line is the BEIR header or has exactly 3 tab-separated fields, TREC
    otherwise.  Used for MS MARCO ``qrels.*.tsv`` (TREC, tab separated) and BEIR ``qrels/*.tsv``.
    """
    check_nonempty(path)
    with open_input(path) as f:
        first = f.readline().decode("utf-8", errors="replace").rstrip("\r\n")
    fields = first.split("\t")
    is_beir = tuple(x.strip().lower() for x in fields) == BEIR_QRELS_HEADER or len(fields) == 3
    return (read_beir_qrels if is_beir else read_trec_qrels)(path, strict=strict, stats=stats)


def write_trec_qrels(path: PathLike, qrels: Mapping[str, Mapping[str, int]]) -> int:
    """Write ``qid 0 docid grade`` lines (queries and documents in sorted order)."""
    n = 0
    with open_text_w(path) as f:
        for qid in sorted(qrels):
            for docid in sorted(qrels[qid]):
                check_token(path, n + 1, "query id", qid)
                check_token(path, n + 1, "document id", docid)
                f.write(f"{qid} 0 {docid} {int(qrels[qid][docid])}\n")
                n += 1
    return n


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


def iter_trec_run(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> Iterator[RunLine]:
    """Stream ``qid Q0 docid rank score tag`` lines (whitespace separated, finite score)."""
    return iter_records(path, TREC_RUN, strict=strict, stats=stats, what="run lines")


def read_trec_run(path: PathLike, *, strict: bool = True, stats: ReadStats | None = None) -> Run:
    """Load a TREC run as ``{qid: {docid: score}}``.

    The rank column is validated but not used (as in trec_eval, order comes from the scores).
    A document listed twice for the same query is a bad line (``"duplicate document"``).
    """
    stats = new_stats(stats, path)
    lines = (((r.qid, r.docid), r.score) for r in iter_trec_run(path, strict=strict, stats=stats))
    return collect_unique(lines, path, stats, strict, DUPLICATE_DOCUMENT,
                          lambda k: f"query {k[0]!r} lists document {k[1]!r} twice", nested=True)


def ranked(docs: Mapping[str, float], k: int | None = None) -> list[tuple[str, float]]:
    """``docs`` sorted for ranking: score descending, ties by docid descending (string order).

    This is trec_eval's own ordering (it re-sorts by score and breaks ties by docno in
    descending ``strcmp`` order), so a run written in this order and re-evaluated by
    trec_eval / pytrec_eval sees exactly the ranking used everywhere in this package.
    """
    items = sorted(docs.items(), key=lambda kv: kv[0], reverse=True)  # docid desc ...
    items.sort(key=lambda kv: kv[1], reverse=True)  # ... then stable sort by score desc
    return items if k is None else items[:k]


def write_trec_run(
    path: PathLike,
    run: Mapping[str, Mapping[str, float]],
    *,
    tag: str = "kd",
    k: int | None = None,
) -> int:
    """Write a run as ``qid Q0 docid rank score tag``; returns the number of lines.

    Queries in sorted order; per query documents ordered by :func:`ranked` (score desc, ties by
    docid desc, trec_eval's rule), truncated to the top ``k``.  Scores are written with
    ``repr`` (shortest round-trip form), so reading the file back gives the same floats.
    Non-finite scores and ids containing whitespace raise :class:`FormatError`.
    """
    check_token(path, 0, "tag", tag)
    n = 0
    with open_text_w(path) as f:
        for qid in sorted(run, key=str):
            for rank, (docid, s) in enumerate(ranked(run[qid], k), 1):
                n += 1
                s = float(s)
                if not math.isfinite(s):
                    raise FormatError(f"non-finite score {s} for query {qid!r} document {docid!r}",
                                      path=path, line=n, reason=NON_FINITE_SCORE)
                check_token(path, n, "query id", str(qid))
                check_token(path, n, "document id", str(docid))
                f.write(f"{qid} Q0 {docid} {rank} {s!r} {tag}\n")
    return n
