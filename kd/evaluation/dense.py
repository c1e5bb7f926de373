"""The `dense` task: a BEIR folder's corpus encoded into embedding shards, the judged queries searched over them.

The corpus is encoded in the fixed, length-sorted batches of `plan_batches` (kd/evaluation/encoding.py), by the
runner's corpus encoder (in-process, or Ray Data actors from kd.runtime.evaluation), which writes the embeddings as
pieces into <output_dir>/_embeddings/<digest>/ (kd/evaluation/shards.py); the driver never gathers them. The judged
queries are encoded by the (query) model and searched shard by shard (`compute.shard_size` documents each, exact
inner product, top-k merged exactly: kd/evaluation/search.py), so the driver holds one shard at a time and the run is
the one a single `IndexFlatIP` over the whole corpus gives. `index: hnsw` (approximate) builds one HNSW graph over the
whole corpus in the driver instead. The documents may come from another encoder (`doc_path`, seed 003: the
teacher's index with a distilled query encoder).
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from kd.evaluation.checks import EvaluationError
from kd.evaluation.encoding import encode_texts, is_single_vector
from kd.evaluation.inputs import BeirInputs
from kd.evaluation.results import TaskResult, eval_metrics
from kd.evaluation.search import search_index, search_shards, to_run
from kd.evaluation.shards import ShardSet
from kd.models import Ranker

if TYPE_CHECKING:  # pragma: no cover
    from kd.evaluation.runner import TaskRunner


def build_index(emb: np.ndarray, kind: str = "flat", *, hnsw_m: int = 32, ef_search: int = 512,
                ef_construction: int = 200):
    """Exact inner-product index (`flat`) or an HNSW graph with inner-product metric (`hnsw`) over embeddings in
    memory (the dense task builds only the HNSW one: its flat search runs on shards, `search_corpus`)."""
    import faiss

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] == 0:
        raise ValueError(f"cannot index embeddings of shape {emb.shape}")
    d = emb.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}; known: flat, hnsw")
    index.add(emb)
    return index


def doc_encoder_spec(spec: Mapping[str, Any]) -> dict:
    """The document side of a model spec: `doc_path` with `doc_options` when given (the query model's options and
    layer subset do not apply to it), else the query model itself."""
    spec = dict(spec)
    if spec.get("doc_path"):
        return {"name": f"{spec['name']}:docs", "path": spec["doc_path"], "options": spec.get("doc_options") or {},
                "layers": None, "num_layers": None}
    return {k: spec.get(k) for k in ("name", "path", "options", "layers", "num_layers")}


def search_corpus(shards: ShardSet, query_emb: np.ndarray, docids: list[str], task,
                  shard_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, corpus rows) of the task's top-k per query: exact, shard by shard (`flat`), or one HNSW graph over
    the whole corpus (`hnsw`: approximate, so it cannot be sharded without changing its results)."""
    if task.index == "hnsw":
        index = build_index(shards.load_all(), "hnsw", hnsw_m=task.hnsw_m, ef_search=task.hnsw_ef_search)
        return search_index(index, query_emb, docids, task.top_k)
    return search_shards(shards.shards(shard_size), query_emb, docids, task.top_k)


def dense_task(runner: "TaskRunner", task, spec, model: Ranker, inputs: BeirInputs) -> TaskResult:
    if not is_single_vector(model):
        raise EvaluationError(f"model {spec.name!r} is a {model.architecture!r}: the dense task needs a "
                              "single-vector bi-encoder (bert_dot); evaluate other architectures with the rerank "
                              "task")
    cfg = runner.cfg
    t0 = time.perf_counter()
    texts_by_id = inputs.ds.texts(use_title=task.use_title)
    docids = list(texts_by_id)
    texts = [texts_by_id[d] for d in docids]
    queries = inputs.queries
    shards = runner.corpus_embeddings(spec, model, task.beir, docids, texts, task.use_title)
    t_enc = time.perf_counter()
    qids = sorted(queries)
    qemb = encode_texts(model, [queries[q] for q in qids], kind="queries", batch_size=cfg.compute.batch_size,
                        precision=cfg.compute.precision)
    shard_size = cfg.compute.shard_size
    run = to_run(*search_corpus(shards, qemb, docids, task, shard_size), qids, docids)
    t_search = time.perf_counter()
    metrics, res = eval_metrics(run, inputs.ds.qrels, cfg.metrics_for(task), cfg.relevance_for(task),
                                run_source=f"dense run of {spec.name}", qrels_source=inputs.qrels_source)
    info = {"n_queries": res.n_queries, "n_docs": len(docids), "dim": shards.dim, "index": task.index,
            "top_k": task.top_k, "relevance_level": cfg.relevance_for(task),
            "pieces": len(shards.names), "shards": 1 if task.index == "hnsw" else shards.count_shards(shard_size),
            "doc_encoder": spec.doc_path or spec.path, "query_encoder": spec.path,
            "seconds_corpus": t_enc - t0, "seconds_search": t_search - t_enc,
            "seconds": time.perf_counter() - t0, **runner.precision_info()}
    return runner.write(TaskResult(spec.name, "dense", task.name, metrics, info), run, task.top_k)
