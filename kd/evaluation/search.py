"""Top-k inner-product search over a corpus written as shards (kd/evaluation/shards.py), merged exactly.

The ranking is a total order: score descending, ties by docid descending (trec_eval's rule, `kd.data.ranked`). Per
shard, FAISS's exact inner-product k-NN (`faiss.knn`, the routine `IndexFlatIP.search` runs, on the memory-mapped
shard: no copy into an index) returns the top `top_k + slack` scores; FAISS orders tied scores arbitrarily, so
when the `top_k`-th score still equals the last one fetched the tie may continue past the cut, and that query is
searched again with twice the depth until the tie group is whole. Each shard's candidates are then exactly its top
`top_k` in the total order, and the running top `top_k` merged with them (`np.lexsort` on (-score, tie rank)) is
exactly the corpus's top `top_k`: the same run as one index over the whole corpus, whatever the shard size.
Scores are the same floats too: FAISS's BLAS inner products do not depend on where a document sits in the index.

Memory: one shard's embeddings plus, per query, 2 x (top_k + slack) candidates; nothing grows with the corpus
except the tie ranks (8 bytes a document). HNSW (approximate) is searched as one index over the whole corpus
(`ShardSet.load_all`): per-shard graphs would change its results.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from kd.data.formats import Run
from kd.evaluation.checks import EvaluationError


def tie_ranks(docids: Sequence[str]) -> np.ndarray:
    """rank[i] = position of docids[i] in descending docid order: the tie-break of `kd.data.ranked`."""
    order = sorted(range(len(docids)), key=docids.__getitem__, reverse=True)
    rank = np.empty(len(docids), dtype=np.int64)
    rank[order] = np.arange(len(docids), dtype=np.int64)
    return rank


def _knn(q: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    return faiss.knn(q, np.ascontiguousarray(xb, dtype=np.float32), k, metric=faiss.METRIC_INNER_PRODUCT)


def _total_order(scores: np.ndarray, idx: np.ndarray, tie: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first `k` candidates by (score desc, tie rank asc); idx -1 (no candidate) sorts last."""
    key = np.where(idx >= 0, tie[np.maximum(idx, 0)], np.iinfo(np.int64).max)
    neg = np.where(idx >= 0, -scores, np.inf)
    order = np.lexsort((key, neg), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(idx, order, 1)


def shard_topk(q: np.ndarray, xb: np.ndarray, top_k: int, tie: np.ndarray, *,
               slack: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`top_k` of one shard per query in the total order (scores, local positions); `tie` = the tie
    ranks of the shard's rows. Queries whose tie group reaches the fetched depth are searched again deeper."""
    n = xb.shape[0]
    k = min(top_k + slack, n)
    scores, idx = _knn(q, xb, k)
    cut = min(top_k, k) - 1
    todo = np.flatnonzero(scores[:, cut] == scores[:, -1]) if k < n else np.empty(0, dtype=np.int64)
    depth = k
    while todo.size:
        depth = min(2 * depth, n)
        s2, i2 = _knn(q[todo], xb, depth)
        scores[todo], idx[todo] = _total_order(s2, i2, tie, k)
        todo = todo[s2[:, cut] == s2[:, -1]] if depth < n else todo[:0]
    return _total_order(scores, idx, tie, min(top_k, k))


def merge_topk(best: tuple[np.ndarray, np.ndarray] | None, new: tuple[np.ndarray, np.ndarray], tie: np.ndarray,
               top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """The running top-k (scores, corpus rows) merged with a shard's, in the total order."""
    if best is not None:
        new = (np.concatenate([best[0], new[0]], axis=1), np.concatenate([best[1], new[1]], axis=1))
    return _total_order(new[0], new[1], tie, top_k)


def check_dims(query_emb: np.ndarray, dim: int) -> np.ndarray:
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != dim:
        raise EvaluationError(f"query embeddings have {q.shape[-1]} dimensions but the document index {dim}: "
                              "query and document encoders must share the embedding space")
    return q


def search_shards(shards: Iterable[tuple[np.ndarray, np.ndarray]], query_emb: np.ndarray, docids: Sequence[str],
                  top_k: int, *, slack: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over (corpus rows, embeddings) shards: (scores, corpus rows), each [n_queries,
    min(top_k, n_docs)], rows in the total order. One shard is resident at a time (the iterator's)."""
    tie = tie_ranks(docids)
    best = None
    for rows, emb in shards:
        q = check_dims(query_emb, emb.shape[1])
        s, local = shard_topk(q, emb, top_k, tie[rows], slack=slack)
        best = merge_topk(best, (s, rows[local]), tie, top_k)
        del rows, emb  # before the next shard is read: one resident at a time
    if best is None:
        raise ValueError("no shard to search")
    return best


def search_index(index, query_emb: np.ndarray, docids: Sequence[str], top_k: int,
                 *, slack: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of one FAISS index over the whole corpus (HNSW; positions = corpus rows), ties at the cut broken by
    docid among the `top_k + slack` hits fetched: (scores, corpus rows) as `search_shards` returns them."""
    q = check_dims(query_emb, index.d)
    scores, idx = index.search(q, min(top_k + slack, index.ntotal))
    return _total_order(scores, idx.astype(np.int64), tie_ranks(docids), top_k)


def to_run(scores: np.ndarray, rows: np.ndarray, qids: Sequence[str], docids: Sequence[str]) -> Run:
    """(scores, corpus rows) per query → a Run, each query's documents in ranking order."""
    return {str(qid): {docids[r]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
            for i, qid in enumerate(qids)}
