"""Join id-based training files (teacher scores, id triples) with query and passage text.

Lookups are any ``Mapping`` from id to text: a plain dict (queries, BEIR corpora via
:func:`kd.data.formats.corpus_texts`), or :class:`kd.data.texts.TsvTextIndex`, a compact
memory-mapped index over an ``id<TAB>text`` file such as MS MARCO's 8.8M-passage
``collection.tsv``; :func:`kd.data.texts.load_queries` / :func:`~kd.data.texts.load_passages`
pick the reader from the file name (all three are importable from here too).

Passages given as BEIR documents (``{"title", "text"}`` dicts or :class:`BeirDoc`) are turned
into text with :func:`kd.data.formats.doc_text`: ``title + title_sep + text`` when a title
exists (``use_title=True``, ``title_sep=" "`` by default).

Unknown ids: in strict mode the first one raises :class:`FormatError` naming the file and line
(reason ``"unknown query id"`` / ``"unknown passage id"``); in lenient mode the record is skipped
and counted in :class:`JoinStats` (missing occurrences and distinct ids, per kind) and a warning
is logged when the iteration ends.

Duplicates: a record whose ``(qid, pos_pid, neg_pid)`` an earlier record already had is counted
in :attr:`JoinStats.duplicates` (first one's line in ``first_duplicate_line``) and reported in the
summary and the warning, in both modes.  It is kept: a repeated triple is valid training data that
weighs twice, which the user should know about, not lose.
"""

from __future__ import annotations

import logging
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from kd.data.formats import (
    UNKNOWN_PASSAGE_ID,
    UNKNOWN_QUERY_ID,
    BeirDoc,
    FormatError,
    PathLike,
    ReadStats,
    TeacherScores,
    doc_text,
    iter_teacher_scores,
    iter_triples,
)
from kd.data.texts import TsvTextIndex, load_passages, load_queries  # re-exported: kd.data.join names them

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# joins
# --------------------------------------------------------------------------------------------


class JoinedTriple(NamedTuple):
    """A training triple with text; scores are ``None`` for plain id triples."""

    query: str
    pos: str
    neg: str
    pos_score: float | None
    neg_score: float | None
    qid: str
    pos_pid: str
    neg_pid: str


@dataclass
class JoinStats:
    """Outcome of a join: records in, records joined, missing ids (occurrences and distinct)."""

    path: str | None = None
    rows: int = 0
    joined: int = 0
    missing_query: int = 0
    missing_passage: int = 0
    missing_query_ids: set = field(default_factory=set)
    missing_passage_ids: set = field(default_factory=set)
    duplicates: int = 0  # records repeating an earlier record's (qid, pos_pid, neg_pid); kept
    first_duplicate_line: int | None = None
    read: ReadStats = field(default_factory=ReadStats)

    @property
    def skipped(self) -> int:
        return self.rows - self.joined

    def summary(self) -> str:
        dup = ""
        if self.duplicates:
            dup = (f"; {self.duplicates} duplicate record(s) repeating an earlier (qid, pos_pid, neg_pid), kept "
                   f"(first at line {self.first_duplicate_line})")
        return (
            f"{self.path}: joined {self.joined} of {self.rows} records; "
            f"missing query ids: {self.missing_query} occurrence(s) of {len(self.missing_query_ids)} id(s); "
            f"missing passage ids: {self.missing_passage} occurrence(s) of {len(self.missing_passage_ids)} id(s)"
            + dup
        )

    def log(self) -> None:
        if self.missing_query or self.missing_passage or self.duplicates:
            logger.warning("join: %s", self.summary())
        else:
            logger.info("join: %s", self.summary())


def _text_of(value: Any, use_title: bool, title_sep: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (Mapping, BeirDoc)):
        return doc_text(value, use_title=use_title, sep=title_sep)
    raise TypeError(f"passage lookup returned {type(value).__name__}, expected str or a BEIR document")


def _records(source: Any, kind: str, strict: bool, read_stats: ReadStats) -> tuple[Iterable, str | None]:
    """Normalise a source into an iterable of records with a ``line`` and the file path."""
    if isinstance(source, (str, os.PathLike)):
        if kind == "scores":
            return iter_teacher_scores(source, strict=strict, stats=read_stats), str(source)
        return _numbered_triples(source, strict, read_stats), str(source)
    if isinstance(source, TeacherScores):
        return iter(source), source.path
    return source, None


def _numbered_triples(path: PathLike, strict: bool, read_stats: ReadStats) -> Iterator[tuple]:
    for t in iter_triples(path, strict=strict, stats=read_stats):
        # read_stats.lines is the line just yielded (the generator is paused on it)
        yield (*t, read_stats.lines)


def _join(
    records: Iterable,
    queries: Mapping,
    passages: Mapping,
    *,
    with_scores: bool,
    strict: bool,
    stats: JoinStats,
    use_title: bool,
    title_sep: str,
) -> Iterator[JoinedTriple]:
    path = stats.path
    keys, lines = array("q"), array("q")  # 16 bytes per record for the duplicate count (640 MB at 40M)
    for i, rec in enumerate(records):
        stats.rows += 1
        if with_scores:
            pos_s, neg_s, qid, pid, nid = rec[0], rec[1], rec[2], rec[3], rec[4]
            line = rec[5] if len(rec) > 5 else i + 1
        else:
            qid, pid, nid = rec[0], rec[1], rec[2]
            pos_s = neg_s = None
            line = rec[3] if len(rec) > 3 else i + 1
        qid, pid, nid = str(qid), str(pid), str(nid)
        keys.append(hash((qid, pid, nid)))
        lines.append(line)
        q = queries.get(qid)
        if q is None:
            stats.missing_query += 1
            stats.missing_query_ids.add(qid)
            if strict:
                raise FormatError(f"{UNKNOWN_QUERY_ID}: {qid!r} is not in the queries",
                                  path=path, line=line, reason=UNKNOWN_QUERY_ID)
            continue
        p = passages.get(pid)
        n = passages.get(nid)
        if p is None or n is None:
            missing = [x for x, v in ((pid, p), (nid, n)) if v is None]
            stats.missing_passage += len(missing)
            stats.missing_passage_ids.update(missing)
            if strict:
                raise FormatError(f"{UNKNOWN_PASSAGE_ID}: {missing[0]!r} is not in the collection",
                                  path=path, line=line, reason=UNKNOWN_PASSAGE_ID)
            continue
        stats.joined += 1
        yield JoinedTriple(
            _text_of(q, True, title_sep), _text_of(p, use_title, title_sep), _text_of(n, use_title, title_sep),
            None if pos_s is None else float(pos_s), None if neg_s is None else float(neg_s), qid, pid, nid,
        )
    stats.duplicates, stats.first_duplicate_line = _duplicates(keys, lines)
    stats.log()


def _duplicates(keys: array, lines: array) -> tuple[int, int | None]:
    """How many records repeat an earlier record's key, and the line of the first such repeat.

    Keys are 64-bit hashes of ``(qid, pos_pid, neg_pid)`` (one process, so consistent): sorted
    with numpy instead of a set of tuples, which would hold every id string alive (gigabytes for
    the 40M-line teacher files).  Two distinct triples sharing a hash (odds ~n^2/2^65: 4e-5 at 40M
    records) would count as one duplicate; nothing is dropped because of it.
    """
    if len(keys) < 2:
        return 0, None
    k = np.frombuffer(keys, dtype=np.int64)
    order = np.argsort(k, kind="stable")  # stable: among equal keys, file order
    repeat = np.flatnonzero(k[order][1:] == k[order][:-1]) + 1
    if not len(repeat):
        return 0, None
    return len(repeat), int(np.frombuffer(lines, dtype=np.int64)[order[repeat]].min())


def _join_entry(kind: str, name: str, doc: str) -> Callable[..., Iterator[JoinedTriple]]:
    """The public join for one kind of source (``"scores"``: teacher scores, ``"triples"``: id
    triples): both take the same arguments, written once here."""

    def join(
        source: PathLike | TeacherScores | Iterable[tuple],
        queries: Mapping[str, str],
        passages: Mapping[str, Any],
        *,
        strict: bool = True,
        stats: JoinStats | None = None,
        use_title: bool = True,
        title_sep: str = " ",
    ) -> Iterator[JoinedTriple]:
        stats = stats if stats is not None else JoinStats()
        records, path = _records(source, kind, strict, stats.read)
        stats.path = path
        return _join(records, queries, passages, with_scores=kind == "scores", strict=strict, stats=stats,
                     use_title=use_title, title_sep=title_sep)

    join.__name__ = join.__qualname__ = name
    join.__doc__ = doc
    return join


join_teacher_scores = _join_entry("scores", "join_teacher_scores", """Yield :class:`JoinedTriple` (texts + teacher scores) for a teacher-score file.

    ``source`` is a path (read with the per-line validated reader, so every record knows its
    line), a :class:`TeacherScores` (row ``i`` reported as line ``first_line + i``), or an
    iterable of ``(pos_score, neg_score, qid, pos_pid, neg_pid[, line])`` tuples.
    Pass ``stats=JoinStats()`` to read the counts after the iteration.
    """)

join_triples = _join_entry("triples", "join_triples", """Yield :class:`JoinedTriple` (scores ``None``) for an id-triples file or iterable of
    ``(qid, pos_pid, neg_pid[, line])`` tuples; same missing-id handling as
    :func:`join_teacher_scores`.""")


__all__ = [
    "JoinStats",
    "JoinedTriple",
    "TsvTextIndex",
    "join_teacher_scores",
    "join_triples",
    "load_passages",
    "load_queries",
]
