"""Streaming readers and writers for the IR file formats the project consumes.

Formats (one module each)
-------------------------
* :mod:`~kd.data.formats.id_text`: MS MARCO collection / queries TSV, ``id<TAB>text`` (exactly two columns).
* :mod:`~kd.data.formats.trec`: TREC qrels ``qid 0 docid grade`` (whitespace separated, integer grade);
  BEIR qrels TSV ``query-id<TAB>corpus-id<TAB>score`` with one optional header line; TREC run
  ``qid Q0 docid rank score tag`` (whitespace separated).
* :mod:`~kd.data.formats.triples`: id triples, ``qid<TAB>pos_pid<TAB>neg_pid``.
* :mod:`~kd.data.formats.teacher`: teacher scores (Margin-MSE T1/T2 files),
  ``pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid``; :mod:`~kd.data.formats.teacher_arrow`
  reads them columnar with pyarrow.
* :mod:`~kd.data.formats.beir`: BEIR folders, ``corpus.jsonl`` (``_id``, ``title``, ``text``),
  ``queries.jsonl`` (``_id``, ``text``), ``qrels/<split>.tsv``.

Every delimited format is a :class:`~kd.data.formats.lines.Columns` spec (separator, one parser per
column, the record it makes), BEIR's JSON lines a :class:`~kd.data.formats.beir.JsonLines`; both are
read by the one per-line reader :func:`~kd.data.formats.lines.iter_records` (:mod:`~kd.data.formats.lines`
also opens files and holds the line rules).  :mod:`~kd.data.formats.errors` holds
:class:`FormatError`, :class:`ReadStats` and the reasons.

Error policy
------------
Every reader takes ``strict: bool = True``.  In strict mode the first bad line raises
:class:`FormatError` (a ``ValueError``) whose message names the file, the 1-based line number
and what was wrong.  In lenient mode (``strict=False``) bad lines are skipped and *counted* per
reason in a :class:`ReadStats` object (pass your own with ``stats=`` to see it); when anything
was skipped a ``logging`` warning with the counts is emitted at the end of the file.  Nothing is
dropped silently.  Whole-file problems (an empty file, a file in which no line was valid) raise
in both modes.

Line endings ``\\n`` and ``\\r\\n`` are accepted; files are UTF-8; a ``.gz`` suffix is read and
written through :mod:`gzip`.  A blank line is a bad line (reason ``"blank line"``).  Every reader opens
its file through :func:`~kd.data.formats.lines.open_input`, which skips a leading UTF-8 byte-order mark
(Notepad, Excel's "CSV UTF-8" and PowerShell write one); a byte-order mark at the start of any later
line (files concatenated with ``cat``) is a bad line (reason ``"misplaced byte-order mark"``), since it
would otherwise become part of an id.  A missing input file raises :class:`MissingFileError`, a
:class:`FormatError` that is also a ``FileNotFoundError``.

Large files
-----------
Nothing here builds a pandas frame.  Per-line readers are generators.  Teacher-score files (40M
lines for the published files) have a fast columnar path, :func:`read_teacher_scores` /
:func:`iter_teacher_score_chunks`, which reads the file in large byte blocks and parses each block
with ``pyarrow.csv`` into numpy arrays; a block in which pyarrow (or the finiteness / id checks)
finds anything wrong is re-parsed by the exact per-line validator, so errors carry the same file
and line information as the slow path and lenient mode counts the same reasons.
"""

from __future__ import annotations

from kd.data.formats.beir import (
    BeirDataset,
    BeirDoc,
    corpus_texts,
    doc_text,
    iter_beir_corpus,
    load_beir,
    read_beir_corpus,
    read_beir_queries,
)
from kd.data.formats.errors import (
    BLANK_LINE,
    DUPLICATE_DOCUMENT,
    DUPLICATE_HEADER,
    DUPLICATE_ID,
    DUPLICATE_JUDGMENT,
    EMPTY_ID,
    INVALID_JSON,
    INVALID_UTF8,
    MISPLACED_BOM,
    MISSING_FIELD,
    MISSING_FILE,
    NON_FINITE_SCORE,
    NON_INTEGER_GRADE,
    NON_INTEGER_ID,
    NON_INTEGER_RANK,
    NON_NUMERIC_SCORE,
    SCORE_OUT_OF_RANGE,
    UNKNOWN_DOCUMENT_ID,
    UNKNOWN_PASSAGE_ID,
    UNKNOWN_QUERY_ID,
    WRONG_COLUMNS,
    FormatError,
    MissingFileError,
    PathLike,
    ReadStats,
    logger,  # noqa: F401  (kd.data.formats.logger, as before the split; not in __all__)
)
from kd.data.formats.id_text import (
    iter_id_text,
    read_collection_tsv,
    read_id_text,
    read_queries_tsv,
    write_id_text,
)
from kd.data.formats.lines import UTF8_BOM
from kd.data.formats.teacher import (
    MAX_ABS_TEACHER_SCORE,
    TEACHER_COLUMNS,
    IdMode,
    TeacherScore,
    TeacherScores,
    iter_teacher_scores,
    write_teacher_scores,
)
from kd.data.formats.teacher_arrow import iter_teacher_score_chunks, read_teacher_scores
from kd.data.formats.trec import (
    BEIR_QRELS_HEADER,
    Judgment,
    Qrels,
    Run,
    RunLine,
    iter_beir_qrels,
    iter_trec_qrels,
    iter_trec_run,
    ranked,
    read_beir_qrels,
    read_qrels,
    read_trec_qrels,
    read_trec_run,
    write_trec_qrels,
    write_trec_run,
)
from kd.data.formats.triples import Triple, iter_triples, write_triples

__all__ = [
    "BEIR_QRELS_HEADER",
    "BLANK_LINE",
    "DUPLICATE_DOCUMENT",
    "DUPLICATE_HEADER",
    "DUPLICATE_ID",
    "DUPLICATE_JUDGMENT",
    "EMPTY_ID",
    "INVALID_JSON",
    "INVALID_UTF8",
    "MAX_ABS_TEACHER_SCORE",
    "MISPLACED_BOM",
    "MISSING_FIELD",
    "MISSING_FILE",
    "NON_FINITE_SCORE",
    "NON_INTEGER_GRADE",
    "NON_INTEGER_ID",
    "NON_INTEGER_RANK",
    "NON_NUMERIC_SCORE",
    "SCORE_OUT_OF_RANGE",
    "TEACHER_COLUMNS",
    "UNKNOWN_DOCUMENT_ID",
    "UNKNOWN_PASSAGE_ID",
    "UNKNOWN_QUERY_ID",
    "UTF8_BOM",
    "WRONG_COLUMNS",
    "BeirDataset",
    "BeirDoc",
    "FormatError",
    "IdMode",
    "Judgment",
    "MissingFileError",
    "PathLike",
    "Qrels",
    "ReadStats",
    "Run",
    "RunLine",
    "TeacherScore",
    "TeacherScores",
    "Triple",
    "corpus_texts",
    "doc_text",
    "iter_beir_corpus",
    "iter_beir_qrels",
    "iter_id_text",
    "iter_teacher_score_chunks",
    "iter_teacher_scores",
    "iter_trec_qrels",
    "iter_trec_run",
    "iter_triples",
    "load_beir",
    "ranked",
    "read_beir_corpus",
    "read_beir_qrels",
    "read_beir_queries",
    "read_collection_tsv",
    "read_id_text",
    "read_qrels",
    "read_queries_tsv",
    "read_teacher_scores",
    "read_trec_qrels",
    "read_trec_run",
    "write_id_text",
    "write_teacher_scores",
    "write_trec_qrels",
    "write_trec_run",
    "write_triples",
]
