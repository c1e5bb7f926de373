"""BM25 first stage with the ``bm25s`` package.

Text processing (the settings that reproduce BEIR's BM25 numbers with bm25s): lower-casing,
bm25s' regex tokenizer, bm25s' English stopword list, and the Snowball English stemmer from
PyStemmer.  BEIR documents are indexed as ``title + " " + text`` (see
:func:`kd.data.formats.doc_text`; configurable with ``use_title`` / ``title_sep``).  Scoring:
bm25s defaults, ``method="lucene"``, ``k1=1.5``, ``b=0.75``.

Measured on BEIR SciFact test (300 queries) with :func:`kd.metrics.evaluate`:
nDCG@10 = 0.6863, Recall@100 = 0.9127 (see ``tests/test_mining_bm25.py``).

Only documents with a positive score (i.e. sharing at least one term with the query) are
returned, as Lucene does; a query whose terms are all stopwords or out of vocabulary therefore
gets an empty result list, and such queries are counted in :attr:`BM25Index.last_empty` and
logged.  Ties are broken by docid (the run is ordered with :func:`kd.data.formats.ranked`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kd.data.formats import PathLike, Run, doc_text, load_beir, write_trec_run

logger = logging.getLogger(__name__)


def _stemmer(name: str | None):
    if name is None:
        return None
    import Stemmer  # PyStemmer

    return Stemmer.Stemmer(name)


class BM25Index:
    """A bm25s index over a corpus (``{docid: text}`` or BEIR ``{docid: {"title", "text"}}``)."""

    def __init__(
        self,
        corpus: Mapping[str, Any],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str | Sequence[str] | None = "en",
        stemmer: str | None = "english",
        use_title: bool = True,
        title_sep: str = " ",
        show_progress: bool = True,
    ) -> None:
        import bm25s

        if not corpus:
            raise ValueError("corpus is empty: nothing to index")
        self.doc_ids: list[str] = [str(d) for d in corpus]
        texts = [doc_text(corpus[d], use_title=use_title, sep=title_sep) for d in corpus]
        self.stopwords = stopwords
        self._stemmer = _stemmer(stemmer)
        self.show_progress = show_progress
        tokens = bm25s.tokenize(texts, lower=True, stopwords=stopwords, stemmer=self._stemmer,
                                show_progress=show_progress)
        self.retriever = bm25s.BM25(k1=k1, b=b, method=method)
        self.retriever.index(tokens, show_progress=show_progress)
        self.last_empty: list[str] = []

    def __len__(self) -> int:
        return len(self.doc_ids)

    def search(
        self,
        queries: Mapping[str, str],
        top_k: int = 1000,
        *,
        n_threads: int = 0,
        show_progress: bool | None = None,
    ) -> Run:
        """Retrieve the top ``top_k`` documents per query: ``{qid: {docid: score}}``.

        ``top_k`` larger than the corpus is clamped.  ``n_threads=0`` uses bm25s' single
        process path (deterministic and fast enough for BEIR-sized corpora); ``-1`` = all cores.
        """
        import bm25s

        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if not queries:
            raise ValueError("no queries to search")
        show = self.show_progress if show_progress is None else show_progress
        qids = [str(q) for q in queries]
        qtok = bm25s.tokenize([queries[q] for q in queries], lower=True, stopwords=self.stopwords,
                              stemmer=self._stemmer, show_progress=show, return_ids=False)
        k = min(top_k, len(self.doc_ids))
        docs, scores = self.retriever.retrieve(qtok, k=k, show_progress=show, n_threads=n_threads)
        run: Run = {}
        self.last_empty = []
        for i, qid in enumerate(qids):
            row = {self.doc_ids[int(j)]: float(s) for j, s in zip(docs[i], scores[i]) if s > 0}
            if not row:
                self.last_empty.append(qid)
            run[qid] = row
        if self.last_empty:
            logger.warning(
                "BM25: %d of %d queries matched no document (all terms stopwords/unknown), e.g. %s",
                len(self.last_empty), len(qids), self.last_empty[:5],
            )
        return run


def bm25_search(
    corpus: Mapping[str, Any],
    queries: Mapping[str, str],
    top_k: int = 1000,
    **kwargs: Any,
) -> Run:
    """One-shot :class:`BM25Index` build + search (``kwargs`` go to the index)."""
    show = kwargs.get("show_progress", True)
    return BM25Index(corpus, **kwargs).search(queries, top_k, show_progress=show)


def bm25_beir(
    folder: PathLike,
    split: str = "test",
    *,
    out_path: PathLike | None = None,
    top_k: int = 1000,
    tag: str = "bm25",
    judged_only: bool = True,
    **kwargs: Any,
) -> Run:
    """BM25 over a BEIR folder (title + text), optionally written as a TREC run.

    ``judged_only`` (default) searches only the queries that have qrels in ``split``, as BEIR
    evaluation does; ``False`` searches every query in ``queries.jsonl``.
    """
    ds = load_beir(folder, split, require_qrels=judged_only)
    queries = ds.judged_queries() if judged_only else ds.queries
    if not queries:
        raise ValueError(f"{Path(folder)}: no queries to search for split {split!r}")
    run = bm25_search(ds.corpus, queries, top_k, **kwargs)
    if out_path is not None:
        n = write_trec_run(out_path, run, tag=tag, k=top_k)
        logger.info("BM25: wrote %d lines for %d queries to %s", n, len(run), out_path)
    return run


__all__ = ["BM25Index", "bm25_beir", "bm25_search"]
