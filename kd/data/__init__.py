"""Data formats (kd.data.formats), id -> text lookups (kd.data.texts) and joins (kd.data.join),
triple mining (kd.data.mining) and a BM25 first stage (kd.data.bm25).

Plain Python / numpy / pyarrow / bm25s: nothing here imports ray, mlflow or deepspeed.
The BM25 module (bm25s, PyStemmer) is imported lazily on first use of its names.
"""

from __future__ import annotations

from typing import Any

from kd.data.formats import (
    BEIR_QRELS_HEADER,
    TEACHER_COLUMNS,
    BeirDataset,
    BeirDoc,
    FormatError,
    Judgment,
    MissingFileError,
    Qrels,
    ReadStats,
    Run,
    RunLine,
    TeacherScore,
    TeacherScores,
    Triple,
    corpus_texts,
    doc_text,
    iter_beir_corpus,
    iter_beir_qrels,
    iter_id_text,
    iter_teacher_score_chunks,
    iter_teacher_scores,
    iter_trec_qrels,
    iter_trec_run,
    iter_triples,
    load_beir,
    ranked,
    read_beir_corpus,
    read_beir_qrels,
    read_beir_queries,
    read_collection_tsv,
    read_id_text,
    read_qrels,
    read_queries_tsv,
    read_teacher_scores,
    read_trec_qrels,
    read_trec_run,
    write_id_text,
    write_teacher_scores,
    write_trec_qrels,
    write_trec_run,
    write_triples,
)
from kd.data.join import JoinedTriple, JoinStats, join_teacher_scores, join_triples
from kd.data.mining import (
    CandidateList,
    CandidateResult,
    MiningResult,
    MiningStats,
    candidate_lists,
    mine_triples,
    query_rng,
)
from kd.data.texts import TsvTextIndex, load_passages, load_queries

_LAZY = {"BM25Index", "bm25_search", "bm25_beir"}


def __getattr__(name: str) -> Any:  # PEP 562: keep bm25s out of `import kd.data`
    if name in _LAZY:
        from kd.data import bm25

        return getattr(bm25, name)
    raise AttributeError(f"module 'kd.data' has no attribute {name!r}")


__all__ = [
    "BEIR_QRELS_HEADER",
    "TEACHER_COLUMNS",
    "BM25Index",
    "BeirDataset",
    "BeirDoc",
    "CandidateList",
    "CandidateResult",
    "FormatError",
    "JoinStats",
    "JoinedTriple",
    "Judgment",
    "MiningResult",
    "MiningStats",
    "MissingFileError",
    "Qrels",
    "ReadStats",
    "Run",
    "RunLine",
    "TeacherScore",
    "TeacherScores",
    "Triple",
    "TsvTextIndex",
    "bm25_beir",
    "bm25_search",
    "candidate_lists",
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
    "join_teacher_scores",
    "join_triples",
    "load_beir",
    "load_passages",
    "load_queries",
    "mine_triples",
    "query_rng",
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
