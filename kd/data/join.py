"""Join id-based training files (teacher scores, id triples) with query and passage text.

Lookups are any ``Mapping`` from id to text: a plain dict (queries, BEIR corpora via
:func:`kd.data.formats.corpus_texts`), or :class:`TsvTextIndex`, a compact memory-mapped index
over an ``id<TAB>text`` file such as MS MARCO's 8.8M-passage ``collection.tsv`` (only offsets
live in memory; the text is read from the page cache on access and the index pickles cheaply to
worker processes).

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
import mmap
import os
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from kd.data.formats import (
    DUPLICATE_ID,
    EMPTY_ID,
    UNKNOWN_PASSAGE_ID,
    UNKNOWN_QUERY_ID,
    WRONG_COLUMNS,
    BeirDoc,
    FormatError,
    PathLike,
    ReadStats,
    TeacherScores,
    _bad,
    _canonical_int,
    _check_nonempty,
    _decode_line,
    _finish,
    _open_input,
    _progress,
    corpus_texts,
    doc_text,
    iter_teacher_scores,
    iter_triples,
    read_beir_corpus,
    read_beir_queries,
    read_id_text,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# memory-mapped id -> text index
# --------------------------------------------------------------------------------------------


class TsvTextIndex(Mapping[str, str]):
    """Read-only ``Mapping`` over an ``id<TAB>text`` file, keeping only offsets in memory.

    Built by one validated pass over the file (same rules and ``strict`` behaviour as
    :func:`kd.data.formats.read_id_text`, duplicate ids included).  When every id is a
    canonical decimal integer (MS MARCO) the keys are a sorted ``int64`` array searched with
    ``numpy.searchsorted`` (~20 bytes per passage: 180 MB for MS MARCO); otherwise a dict from
    id to row.  Lookups accept ``str`` or ``int`` keys.  Texts are decoded on access.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        strict: bool = True,
        stats: ReadStats | None = None,
        show_progress: bool = True,
    ) -> None:
        self.path = str(path)
        stats = stats if stats is not None else ReadStats()
        stats.path = self.path
        self.stats = stats
        if self.path.endswith(".gz"):
            raise ValueError(f"{self.path}: TsvTextIndex needs an uncompressed file (it memory-maps it)")
        _check_nonempty(path)
        ids: list[str] = []
        offsets: list[int] = []
        lengths: list[int] = []
        size = os.path.getsize(path)
        bar = _progress(size, f"indexing {Path(path).name}", show_progress, unit="B")
        try:
            with _open_input(path) as f:
                pos = f.tell()  # 3 after a byte-order mark: offsets are into the file as it is
                for lineno, raw in enumerate(f, 1):
                    stats.lines += 1
                    start = pos
                    pos += len(raw)
                    if lineno % 65536 == 0:
                        bar.update(pos - bar.n)
                    text = _decode_line(raw, lineno, path, stats, strict)  # the line rules of every reader
                    if text is None:
                        continue
                    body = raw.rstrip(b"\r\n")
                    n_tabs = body.count(b"\t")
                    if n_tabs != 1:
                        _bad(stats, strict, path, lineno, WRONG_COLUMNS,
                             f"expected 2 tab-separated columns (id, text), got {n_tabs + 1}")
                        continue
                    tab = body.index(b"\t")
                    pid = text.split("\t", 1)[0].strip()
                    if not pid:
                        _bad(stats, strict, path, lineno, EMPTY_ID)
                        continue
                    ids.append(pid)
                    offsets.append(start + tab + 1)
                    lengths.append(len(body) - tab - 1)
        finally:
            bar.close()
        if stats.lines == 0:  # only a byte-order mark
            raise FormatError("empty file", path=path, reason="empty file")
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._lengths = np.asarray(lengths, dtype=np.int64)
        self._int_keys: np.ndarray | None = None
        self._order: np.ndarray | None = None
        self._dict: dict[str, int] | None = None
        int_ids = [_canonical_int(x) for x in ids]
        if ids and all(v is not None for v in int_ids):
            keys = np.asarray(int_ids, dtype=np.int64)
            order = np.argsort(keys, kind="stable")
            sk = keys[order]
            dup = np.flatnonzero(sk[1:] == sk[:-1])
            if len(dup):
                keep = np.ones(len(keys), dtype=bool)
                for d in dup:  # later occurrence (in file order) is the duplicate
                    row = order[d + 1]
                    _bad(stats, strict, path, self._line_of(row), DUPLICATE_ID, f"id {ids[row]!r} already defined")
                    keep[row] = False
                keys, self._offsets, self._lengths = keys[keep], self._offsets[keep], self._lengths[keep]
                order = np.argsort(keys, kind="stable")
                sk = keys[order]
            self._int_keys, self._order = sk, order
        else:
            d: dict[str, int] = {}
            keep_rows = []
            for row, pid in enumerate(ids):
                if pid in d:
                    _bad(stats, strict, path, self._line_of(row), DUPLICATE_ID, f"id {pid!r} already defined")
                    continue
                d[pid] = len(keep_rows)
                keep_rows.append(row)
            if len(keep_rows) != len(ids):
                self._offsets, self._lengths = self._offsets[keep_rows], self._lengths[keep_rows]
            self._dict = d
        stats.records = len(self._offsets)
        _finish(stats, "id/text lines")
        self._mm: mmap.mmap | None = None
        self._file = None

    # -- helpers ------------------------------------------------------------------------
    def _line_of(self, row: int) -> int:
        """1-based line number of a row (error path only: counts newlines up to its offset)."""
        with open(self.path, "rb") as f:
            return f.read(int(self._offsets[row])).count(b"\n") + 1

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            self._file = open(self.path, "rb")  # noqa: SIM115
            self._mm = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        return self._mm

    def _row(self, key: Any) -> int | None:
        if self._int_keys is not None:
            if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
                k = int(key)
            else:
                k = _canonical_int(str(key))
                if k is None:
                    return None
            i = int(np.searchsorted(self._int_keys, k))
            if i < len(self._int_keys) and self._int_keys[i] == k:
                return int(self._order[i])
            return None
        assert self._dict is not None
        return self._dict.get(str(key))

    # -- Mapping protocol ---------------------------------------------------------------
    def __getitem__(self, key: Any) -> str:
        row = self._row(key)
        if row is None:
            raise KeyError(key)
        off, n = int(self._offsets[row]), int(self._lengths[row])
        return self._map()[off: off + n].decode("utf-8")

    def __contains__(self, key: object) -> bool:
        return self._row(key) is not None

    def __len__(self) -> int:
        return len(self._offsets)

    def __iter__(self) -> Iterator[str]:
        if self._int_keys is not None:
            # file order
            inv = np.empty_like(self._order)
            inv[self._order] = np.arange(len(self._order))
            for r in range(len(self._order)):
                yield str(int(self._int_keys[inv[r]]))
        else:
            assert self._dict is not None
            yield from self._dict

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_mm"] = None
        state["_file"] = None
        return state

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# convenience loaders
# --------------------------------------------------------------------------------------------


def load_queries(path: PathLike, *, strict: bool = True) -> dict[str, str]:
    """Queries from ``queries.jsonl`` (BEIR) or an ``id<TAB>text`` TSV (MS MARCO)."""
    if str(path).endswith((".jsonl", ".jsonl.gz")):
        return read_beir_queries(path, strict=strict)
    return read_id_text(path, strict=strict)


def load_passages(
    path: PathLike,
    *,
    strict: bool = True,
    in_memory: bool = False,
    use_title: bool = True,
    title_sep: str = " ",
    show_progress: bool = True,
) -> Mapping[str, str]:
    """Passages as an id -> text mapping.

    ``corpus.jsonl`` (BEIR): a dict of ``title + title_sep + text`` (see :func:`doc_text`).
    ``id<TAB>text`` TSV: a :class:`TsvTextIndex` (or a dict with ``in_memory=True``).
    """
    if str(path).endswith((".jsonl", ".jsonl.gz")):
        return corpus_texts(read_beir_corpus(path, strict=strict), use_title=use_title, sep=title_sep)
    if in_memory or str(path).endswith(".gz"):
        return read_id_text(path, strict=strict)
    return TsvTextIndex(path, strict=strict, show_progress=show_progress)


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


def join_teacher_scores(
    source: PathLike | TeacherScores | Iterable[tuple],
    queries: Mapping[str, str],
    passages: Mapping[str, Any],
    *,
    strict: bool = True,
    stats: JoinStats | None = None,
    use_title: bool = True,
    title_sep: str = " ",
) -> Iterator[JoinedTriple]:
    """Yield :class:`JoinedTriple` (texts + teacher scores) for a teacher-score file.

    ``source`` is a path (read with the per-line validated reader, so every record knows its
    line), a :class:`TeacherScores` (row ``i`` reported as line ``first_line + i``), or an
    iterable of ``(pos_score, neg_score, qid, pos_pid, neg_pid[, line])`` tuples.
    Pass ``stats=JoinStats()`` to read the counts after the iteration.
    """
    stats = stats if stats is not None else JoinStats()
    records, path = _records(source, "scores", strict, stats.read)
    stats.path = path
    return _join(records, queries, passages, with_scores=True, strict=strict, stats=stats,
                 use_title=use_title, title_sep=title_sep)


def join_triples(
    source: PathLike | Iterable[tuple],
    queries: Mapping[str, str],
    passages: Mapping[str, Any],
    *,
    strict: bool = True,
    stats: JoinStats | None = None,
    use_title: bool = True,
    title_sep: str = " ",
) -> Iterator[JoinedTriple]:
    """Yield :class:`JoinedTriple` (scores ``None``) for an id-triples file or iterable of
    ``(qid, pos_pid, neg_pid[, line])`` tuples; same missing-id handling as
    :func:`join_teacher_scores`."""
    stats = stats if stats is not None else JoinStats()
    records, path = _records(source, "triples", strict, stats.read)
    stats.path = path
    return _join(records, queries, passages, with_scores=False, strict=strict, stats=stats,
                 use_title=use_title, title_sep=title_sep)


__all__ = [
    "JoinStats",
    "JoinedTriple",
    "TsvTextIndex",
    "join_teacher_scores",
    "join_triples",
    "load_passages",
    "load_queries",
]
