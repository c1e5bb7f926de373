"""BEIR folders: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (read by :func:`kd.data.formats.read_qrels`).

Each JSONL line is one JSON object; a line that is not one, or lacks ``_id`` / ``text``, or has a
non-string title/text, or an empty id, is a bad line named by file and line, as in every reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from kd.data.formats.errors import (
    DUPLICATE_ID,
    EMPTY_ID,
    INVALID_JSON,
    MISSING_FIELD,
    MISSING_FILE,
    UNKNOWN_DOCUMENT_ID,
    UNKNOWN_QUERY_ID,
    MissingFileError,
    PathLike,
    ReadStats,
    bad,
    new_stats,
)
from kd.data.formats.lines import collect_unique, iter_lines, iter_records
from kd.data.formats.trec import Qrels, read_qrels


class BeirDoc(NamedTuple):
    docid: str
    title: str
    text: str


@dataclass(frozen=True)
class JsonLines:
    """A BEIR ``.jsonl`` line format for :func:`~kd.data.formats.lines.iter_records`: one JSON object
    per line with ``_id`` and ``text`` (and an optional string ``title``); the record is
    ``make(id, obj)`` with the id stripped."""

    make: Callable[[str, dict], Any]
    required: tuple[str, ...] = ("_id", "text")

    def record(self, text: str, lineno: int, path: PathLike, stats: ReadStats, strict: bool) -> Any:
        """The record of one decoded line, or ``None`` (bad line counted or raised)."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            return bad(stats, strict, path, lineno, INVALID_JSON, str(e))
        if not isinstance(obj, dict):
            return bad(stats, strict, path, lineno, INVALID_JSON, f"expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in self.required if k not in obj or obj[k] is None]
        if missing:
            return bad(stats, strict, path, lineno, MISSING_FIELD, f"missing {', '.join(missing)}")
        if not isinstance(obj.get("text", ""), str) or not isinstance(obj.get("title") or "", str):
            return bad(stats, strict, path, lineno, MISSING_FIELD, "title/text must be strings")
        docid = str(obj["_id"]).strip()
        if not docid:
            return bad(stats, strict, path, lineno, EMPTY_ID)
        return self.make(docid, obj)


BEIR_CORPUS = JsonLines(lambda docid, obj: BeirDoc(docid, obj.get("title") or "", obj["text"]))
BEIR_QUERIES = JsonLines(lambda qid, obj: (qid, obj["text"]))


def iter_beir_corpus(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> Iterator[BeirDoc]:
    """Stream ``corpus.jsonl``: ``{"_id", "title"?, "text"}`` per line (missing/null title -> "")."""
    return iter_records(path, BEIR_CORPUS, strict=strict, stats=stats, what="documents")


def read_beir_corpus(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> dict[str, dict[str, str]]:
    """Load ``corpus.jsonl`` as BEIR's ``{docid: {"title": ..., "text": ...}}``; duplicate ids are bad."""
    stats = new_stats(stats, path)
    docs = ((d.docid, {"title": d.title, "text": d.text}) for d in iter_beir_corpus(path, strict=strict, stats=stats))
    return collect_unique(docs, path, stats, strict, DUPLICATE_ID, lambda d: f"document id {d!r} already defined")


def read_beir_queries(
    path: PathLike, *, strict: bool = True, stats: ReadStats | None = None
) -> dict[str, str]:
    """Load ``queries.jsonl`` as ``{qid: text}``; duplicate ids are bad."""
    stats = new_stats(stats, path)
    queries = iter_records(path, BEIR_QUERIES, strict=strict, stats=stats, what="queries")
    return collect_unique(queries, path, stats, strict, DUPLICATE_ID, lambda q: f"query id {q!r} already defined")


def doc_text(doc: Mapping[str, str] | BeirDoc | str, *, use_title: bool = True, sep: str = " ") -> str:
    """The text indexed / scored for a BEIR document: ``title + sep + text`` when a title exists.

    A plain string is returned unchanged.  With ``use_title=False`` only the body is used.
    """
    if isinstance(doc, str):
        return doc
    if isinstance(doc, BeirDoc):
        title, text = doc.title, doc.text
    else:
        title, text = doc.get("title") or "", doc.get("text") or ""
    if use_title and title.strip():
        return f"{title}{sep}{text}" if text else title
    return text


def corpus_texts(
    corpus: Mapping[str, Mapping[str, str] | str], *, use_title: bool = True, sep: str = " "
) -> dict[str, str]:
    """``{docid: doc_text(doc)}`` for a BEIR corpus dict (see :func:`doc_text`)."""
    return {docid: doc_text(doc, use_title=use_title, sep=sep) for docid, doc in corpus.items()}


@dataclass
class BeirDataset:
    """A loaded BEIR folder (``qrels`` is ``None`` when the split file is absent and not required)."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: Qrels | None
    path: str
    split: str | None

    def texts(self, *, use_title: bool = True, sep: str = " ") -> dict[str, str]:
        return corpus_texts(self.corpus, use_title=use_title, sep=sep)

    def judged_queries(self) -> dict[str, str]:
        """The queries that have qrels in the loaded split (BEIR evaluates only those)."""
        if self.qrels is None:
            return {}
        return {q: t for q, t in self.queries.items() if q in self.qrels}


def load_beir(
    folder: PathLike, split: str | None = "test", *, strict: bool = True, require_qrels: bool = True
) -> BeirDataset:
    """Load ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` from a BEIR folder.

    ``corpus.jsonl`` / ``queries.jsonl`` may be gzipped (``.jsonl.gz``).  A missing folder or file
    raises :class:`MissingFileError` naming it, before anything is read.  In strict mode qrels that
    reference a query or document id absent from the folder raise :class:`FormatError` naming the
    qrels file and line ("unknown id" in the join of qrels and corpus); in lenient mode such
    judgments are dropped and counted (warning logged).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError("not a BEIR folder (no such directory)", path=folder, reason=MISSING_FILE)
    corpus_path, queries_path = _beir_member(folder, "corpus.jsonl"), _beir_member(folder, "queries.jsonl")
    qpath = None if split is None else folder / "qrels" / f"{split}.tsv"
    if require_qrels and qpath is not None and not qpath.is_file():
        raise MissingFileError(f"no qrels for split {split!r} in the BEIR folder", path=qpath, reason=MISSING_FILE)
    corpus = read_beir_corpus(corpus_path, strict=strict)
    queries = read_beir_queries(queries_path, strict=strict)
    qrels = None
    if qpath is not None and qpath.is_file():
        qrels = _check_qrels_ids(qpath, read_qrels(qpath, strict=strict), queries, corpus, strict)
    return BeirDataset(corpus, queries, qrels, str(folder), split)


def _beir_member(folder: Path, name: str) -> Path:
    """``folder/name``, or its ``.gz`` when only that exists; :class:`MissingFileError` naming
    ``folder/name`` when neither does."""
    path = folder / name
    if path.is_file():
        return path
    gz = folder / (name + ".gz")
    if gz.is_file():
        return gz
    raise MissingFileError(f"missing from the BEIR folder (which needs corpus.jsonl, queries.jsonl and "
                           f"qrels/<split>.tsv)", path=path, reason=MISSING_FILE)


def _check_qrels_ids(path: Path, qrels: Qrels, queries: Mapping, corpus: Mapping, strict: bool) -> Qrels:
    """Judgments of ids absent from the folder: raised (strict) or dropped and counted, by qrels line."""
    stats = ReadStats(path=str(path))
    unknown = [(q, d) for q, docs in qrels.items() for d in docs if q not in queries or d not in corpus]
    if not unknown:
        return qrels
    # locate the line of each offending judgment (rare path: re-scan the file)
    line_of: dict[tuple[str, str], int] = {}
    for lineno, text in iter_lines(path, ReadStats(), False):
        f = text.split("\t") if "\t" in text else text.split()
        key = (f[0].strip(), f[-2].strip()) if len(f) >= 3 else None
        if key is not None:
            line_of.setdefault(key, lineno)
    for q, d in sorted(unknown, key=lambda qd: line_of.get(qd, 0)):
        reason = UNKNOWN_QUERY_ID if q not in queries else UNKNOWN_DOCUMENT_ID
        what = f"query id {q!r}" if q not in queries else f"document id {d!r}"
        bad(stats, strict, path, line_of.get((q, d)), reason, f"{what} not in the BEIR folder")
        del qrels[q][d]
        if not qrels[q]:
            del qrels[q]
    stats.records = sum(len(v) for v in qrels.values())
    stats.log()
    return qrels
