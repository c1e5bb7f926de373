"""Evaluation of rankers: dense retrieval, re-ranking, passage → document aggregation, efficiency (Ray/MLflow-free).

Tasks (driven by jobs/evaluate.py through kd.runtime.evaluation, or called directly):

* `run`        an existing TREC run as it is (baselines).
* `dense`      a BEIR folder: the corpus is encoded in fixed, length-sorted batches (`plan_batches`), the embeddings
               go into an exact inner-product FAISS index (`IndexFlatIP`; HNSW optional), the judged queries are
               encoded by the (query) model and the top-k is searched. The documents may come from another encoder
               (seed 003: the teacher's index with a distilled query encoder).
* `rerank`     a first-stage TREC run + texts: the model re-scores each query's top-k candidates (any architecture).
* `document`   documents split into word windows; passage scores aggregated to documents (MaxP, FirstP, SumP, AvgP,
               mean of the top-k passages).
* `efficiency` queries/s and latency p50/p95 of query encoding and re-ranking per batch size, after warm-up.

Determinism: corpus embeddings are computed batch by batch from a plan that depends only on the texts (sorted by
character length, ties by position), and are collected by document id into corpus order, so any number of workers
that run the same plan produce the same index. Rankings are ordered by score, ties by document id descending
(trec_eval's rule, as everywhere in kd).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd.data import FormatError, ranked
from kd.data.formats import UNKNOWN_DOCUMENT_ID, UNKNOWN_QUERY_ID, Qrels, Run, iter_trec_run
from kd.eval_models import ENSEMBLE, ensemble_info, ensemble_inputs, model_info, saved_architecture
from kd.metrics import EvalResult, evaluate
from kd.models import BertDot, Ranker
from kd.precision import resolve_precision
from kd.progress import Progress

logger = logging.getLogger(__name__)

MODEL_URI_PREFIXES = ("models:/", "runs:/")


class EvaluationError(FormatError):
    """Inputs that cannot be evaluated together (no shared queries, a model that cannot do the task, ...).

    A FormatError, so job entrypoints report it as a bad-input error (exit 2) with the message alone.
    """


# ====================================================================================================== models
def is_model_uri(path: str) -> bool:
    return str(path).startswith(MODEL_URI_PREFIXES)


def sentence_transformers_max_length(path: str | Path) -> int | None:
    """`max_seq_length` declared by a sentence-transformers folder (all-MiniLM-L6-v2: 256), else None."""
    from kd.models import backbone as bb

    try:
        folder = Path(bb.resolve(path))
    except FileNotFoundError:
        return None
    cfg = folder / "sentence_bert_config.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("max_seq_length")


def load_ranker(
    path: str | Path,
    *,
    options: Mapping[str, Any] | None = None,
    layers: str | Sequence[int] | None = None,
    num_layers: int | None = None,
    resolve_uri: Callable[[str], Path] | None = None,
) -> Ranker:
    """A model argument → an eval-mode Ranker.

    `path`: a saved kd folder (any architecture), `models:/name@alias` / `runs:/…` (needs `resolve_uri`, e.g.
    kd.runtime.pyfunc.download_ranker_folder: this module does not import MLflow), or an HF / sentence-transformers
    name or folder, loaded as a BERT_DOT bi-encoder (pooling and normalisation read from the folder; queries and
    passages truncated at its `max_seq_length`, as sentence-transformers does, unless `options` say otherwise).
    `layers` keeps a layer subset
    (kd.init.layer_subset_student: a scheme with `num_layers`, or an index list). A teacher-ensemble folder
    (kd_ensemble.json) is `kd.teachers.load_ensemble(path)`: it scores pairs with its combined score.
    """
    path = str(path)
    if is_model_uri(path):
        if resolve_uri is None:
            raise ValueError(f"{path}: an MLflow model URI needs resolve_uri "
                             "(kd.runtime.pyfunc.download_ranker_folder)")
        path = str(resolve_uri(path))
    folder = Path(path).expanduser()
    if saved_architecture(folder) == ENSEMBLE:
        if layers is not None:
            raise ValueError(f"{path} is a teacher ensemble: `layers` keeps a layer subset of one encoder, not of "
                             "an ensemble")
        if options:
            logger.warning("%s is a teacher ensemble: options %s (for HF encoders) are ignored", path, sorted(options))
        from kd.teachers import load_ensemble

        model = load_ensemble(folder)
    elif (folder / "kd_config.json").is_file():
        if options:
            logger.warning("%s is a saved kd model: options %s (for HF encoders) are ignored", path, sorted(options))
        model = Ranker.from_pretrained(folder)
    else:
        opts = dict(options or {})
        declared = sentence_transformers_max_length(path)
        if declared:  # sentence-transformers truncates queries and documents alike at max_seq_length
            opts.setdefault("max_query_length", int(declared))
            opts.setdefault("max_passage_length", int(declared))
        model = BertDot.from_backbone(path, **opts)
    if layers is not None:
        from kd.init import layer_subset_student

        model = layer_subset_student(model, layers if isinstance(layers, str) else list(layers), num_layers)
    model.eval()
    return model


def pick_device(device: str = "auto") -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' asked for but torch sees no GPU")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def is_single_vector(model: Ranker) -> bool:
    """Dense retrieval (one vector per text, inner product) works with BERT_DOT-style models."""
    return isinstance(model, BertDot)


# ==================================================================================================== encoding
def plan_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Fixed encoding batches: positions sorted by (character length, position), cut every `batch_size`.

    The plan depends only on the texts, so every backend (in-process, 1 or n Ray actors) runs the same forward
    passes and produces bit-identical embeddings on the same hardware.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast where `kd.precision.resolve_precision` chooses it (`auto`: hardware with native bf16), else a
    no-op; fp32 results either way.

    CPUs with AVX512-BF16/AMX run MiniLM about 2x faster in bf16 (embeddings within cosine 0.9999 of fp32); CPUs
    without them emulate bf16, about 8x slower than fp32 on AVX2."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device).bf16)


@torch.inference_mode()
def encode_batch(model: BertDot, texts: Sequence[str], kind: str = "docs", *, precision: str = "auto") -> np.ndarray:
    """One forward pass: texts → float32 [n, d] (tokenised once, padded to this batch's longest text)."""
    if kind not in ("docs", "queries"):
        raise ValueError(f"kind must be 'docs' or 'queries', got {kind!r}")
    device = model.device
    with autocast(device, precision):
        emb = model.encode_docs(list(texts)) if kind == "docs" else model.encode_queries(list(texts))
    return emb.float().cpu().numpy()


def encode_texts(
    model: BertDot,
    texts: Sequence[str],
    *,
    kind: str = "docs",
    batch_size: int = 64,
    precision: str = "auto",
    show_progress: bool = False,
    desc: str | None = None,
) -> np.ndarray:
    """Encode texts in the fixed length-sorted batches of `plan_batches`; rows in input order, float32."""
    if not is_single_vector(model):
        raise EvaluationError(f"{model.architecture!r} has no single-vector encoder: dense retrieval needs a bert_dot "
                              "model (score ColBERT, cross-encoders, PreTTR and TK with the rerank task)")
    if len(texts) == 0:
        raise ValueError(f"no texts to encode ({kind})")
    batches = plan_batches(texts, batch_size)
    out = np.empty((len(texts), model.embedding_dim), dtype=np.float32)
    was_training = model.training
    model.eval()
    progress = Progress(desc or f"encoding {kind}", len(texts), unit="texts", enabled=show_progress)
    try:
        for idx in batches:
            out[idx] = encode_batch(model, [texts[i] for i in idx], kind, precision=precision)
            progress.update(len(idx))
    finally:
        model.train(was_training)
    progress.close()
    return out


def assemble_embeddings(docids: Sequence[str], parts: Sequence[tuple[Sequence[str], np.ndarray]]) -> np.ndarray:
    """Embeddings returned in any order and grouping (e.g. by Ray actors) → one matrix in `docids` order.

    Every document must come back exactly once.
    """
    row = {d: i for i, d in enumerate(docids)}
    out: np.ndarray | None = None
    seen = np.zeros(len(docids), dtype=bool)
    for ids, emb in parts:
        emb = np.asarray(emb, dtype=np.float32)
        if out is None:
            out = np.empty((len(docids), emb.shape[1]), dtype=np.float32)
        for d, vec in zip(ids, emb):
            i = row.get(str(d))
            if i is None:
                raise RuntimeError(f"encoder returned an embedding for unknown document {d!r}")
            if seen[i]:
                raise RuntimeError(f"encoder returned document {d!r} twice")
            out[i] = vec
            seen[i] = True
    if out is None or not seen.all():
        missing = [docids[i] for i in np.flatnonzero(~seen)[:5]]
        raise RuntimeError(f"encoder returned {int(seen.sum())} of {len(docids)} embeddings; missing e.g. {missing}")
    return out


# ======================================================================================================= FAISS
def build_index(emb: np.ndarray, kind: str = "flat", *, hnsw_m: int = 32, ef_search: int = 512,
                ef_construction: int = 200):
    """Exact inner-product index (`flat`) or an HNSW graph with inner-product metric (`hnsw`)."""
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


def search_index(index, query_emb: np.ndarray, qids: Sequence[str], docids: Sequence[str], top_k: int,
                 *, slack: int = 16) -> Run:
    """Top-k per query; `slack` extra hits are fetched so that ties at the cut are broken by docid (trec_eval's
    order), not by position in the index."""
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    if q.shape[1] != index.d:
        raise EvaluationError(f"query embeddings have {q.shape[1]} dimensions but the document index {index.d}: "
                              "query and document encoders must share the embedding space")
    k = min(top_k + slack, index.ntotal)
    scores, idx = index.search(q, k)
    run: Run = {}
    for qi, qid in enumerate(qids):
        hits = {docids[j]: float(s) for s, j in zip(scores[qi], idx[qi]) if j >= 0}
        run[str(qid)] = dict(ranked(hits, top_k))
    return run


# ================================================================================================ input checks
def check_overlap(run: Mapping[str, Any], qrels: Mapping[str, Any], run_source: str, qrels_source: str) -> list[str]:
    """The query ids that `run` and `qrels` share; a clear error naming both files when there are none."""
    shared = sorted(q for q in run if q in qrels and qrels[q])
    if not shared:
        raise EvaluationError(
            f"{run_source} and {qrels_source} share no query ids: the run has {len(run)} queries "
            f"(e.g. {sorted(run)[:3]}), the qrels {len(qrels)} (e.g. {sorted(qrels)[:3]}); "
            "check that both come from the same collection and split", reason="no query overlap"
        )
    return shared


def check_run_ids(run_path: str | Path, run: Mapping[str, Mapping[str, float]], queries: Mapping[str, str],
                  passages: Mapping[str, str], *, queries_source: str, passages_source: str,
                  qids: Sequence[str] | None = None) -> None:
    """Every query and candidate of `run` (restricted to `qids`) must have text; the error names run file + line."""
    qids = list(run) if qids is None else qids
    bad_q = [q for q in qids if q not in queries]
    bad_d = {(q, d) for q in qids for d in run[q] if d not in passages}
    if not bad_q and not bad_d:
        return
    wanted = set(qids)
    for line, r in enumerate(iter_trec_run(run_path), 1):
        if r.qid not in wanted:
            continue
        if r.qid in bad_q:
            raise FormatError(f"query id {r.qid!r} has no text in {queries_source}", path=run_path, line=line,
                              reason=UNKNOWN_QUERY_ID)
        if (r.qid, r.docid) in bad_d:
            n = len(bad_d)
            raise FormatError(f"document id {r.docid!r} is not in {passages_source}"
                              + (f" ({n} unknown candidates in all)" if n > 1 else ""),
                              path=run_path, line=line, reason=UNKNOWN_DOCUMENT_ID)
    raise FormatError(f"{len(bad_q)} queries / {len(bad_d)} candidates without text", path=run_path)


def check_corpus(corpus: Mapping[str, Any], source: str) -> None:
    if not corpus:
        raise FormatError("empty corpus: no documents to search", path=source, reason="empty corpus")


def top_candidates(run: Mapping[str, Mapping[str, float]], qids: Sequence[str], top_k: int) -> dict[str, list[str]]:
    """Each query's first `top_k` candidates in trec_eval order (score desc, ties by docid desc)."""
    return {q: [d for d, _ in ranked(run[q], top_k)] for q in qids}


# ================================================================================================== scoring
def score_pairs(model: Ranker, queries: Sequence[str], passages: Sequence[str], *, batch_size: int = 64,
                precision: str = "auto", show_progress: bool = False) -> np.ndarray:
    """Scores for aligned (query, passage) pairs, float32, through `Ranker.predict` (length-sorted batches; a
    bi-encoder encodes each distinct query and passage once and scores by inner product)."""
    if len(queries) != len(passages):
        raise ValueError(f"got {len(queries)} queries but {len(passages)} passages")
    if len(queries) == 0:
        raise ValueError("no (query, passage) pairs to score")
    device = model.device
    with autocast(device, precision):
        return model.predict(list(queries), list(passages), batch_size=batch_size,
                             show_progress=show_progress).numpy().astype(np.float32)


def rerank(model: Ranker, candidates: Mapping[str, Sequence[str]], queries: Mapping[str, str],
           passages: Mapping[str, str], *, batch_size: int = 64, precision: str = "auto",
           show_progress: bool = False) -> Run:
    """Re-score `candidates` ({qid: [docid, ...]}) with the model → a run."""
    pairs = [(q, d) for q, docs in candidates.items() for d in docs]
    scores = score_pairs(model, [queries[q] for q, _ in pairs], [passages[d] for _, d in pairs],
                         batch_size=batch_size, precision=precision, show_progress=show_progress)
    run: Run = {}
    for (q, d), s in zip(pairs, scores.tolist()):
        run.setdefault(q, {})[d] = float(s)
    return run


# ==================================================================================================== documents
def split_passages(text: str, window: int, stride: int, max_passages: int | None = None,
                   prefix: str = "") -> list[str]:
    """Word windows: passage i holds words [i·stride, i·stride + window); the last one reaches the end of the
    text (no window starts after a window that already did). `prefix` (e.g. the title) goes before each passage."""
    if window < 1 or stride < 1 or stride > window:
        raise ValueError(f"need 1 <= stride <= window, got window={window} stride={stride}")
    words = text.split()
    head = f"{prefix} " if prefix.strip() else ""
    if not words:
        return [prefix.strip()] if prefix.strip() else [""]
    out = []
    for start in range(0, len(words), stride):
        out.append(head + " ".join(words[start : start + window]))
        if start + window >= len(words) or (max_passages and len(out) >= max_passages):
            break
    return out


def aggregate(scores: Sequence[float], how: str) -> float:
    """Passage scores (document order) → a document score: maxp, firstp, sump, avgp, top<k> (mean of the k best)."""
    if len(scores) == 0:
        raise ValueError("a document without passages cannot be scored")
    how = how.lower()
    if how == "maxp":
        return float(max(scores))
    if how == "firstp":
        return float(scores[0])
    if how == "sump":
        return float(sum(scores))
    if how == "avgp":
        return float(sum(scores) / len(scores))
    if how.startswith("top") and how[3:].isdigit() and int(how[3:]) >= 1:
        best = sorted(scores, reverse=True)[: int(how[3:])]
        return float(sum(best) / len(best))
    raise ValueError(f"unknown aggregation {how!r}; known: maxp, firstp, sump, avgp, top<k>")


def document_rerank(model: Ranker, candidates: Mapping[str, Sequence[str]], queries: Mapping[str, str],
                    corpus: Mapping[str, Mapping[str, str]], *, window: int, stride: int,
                    aggregations: Sequence[str], max_passages: int | None = None, use_title: bool = True,
                    batch_size: int = 64, precision: str = "auto",
                    show_progress: bool = False) -> tuple[dict[str, Run], dict]:
    """Score every passage of every candidate document once, then aggregate per document for each aggregation.

    Returns ({aggregation: run}, stats) with stats = documents, passages, passages per document.
    """
    split: dict[str, list[str]] = {}
    for docs in candidates.values():
        for d in docs:
            if d not in split:
                doc = corpus[d]
                title = (doc.get("title") or "") if use_title else ""
                split[d] = split_passages(doc.get("text") or "", window, stride, max_passages, prefix=title)
    pairs = [(q, d, p) for q, docs in candidates.items() for d in docs for p in range(len(split[d]))]
    scores = score_pairs(model, [queries[q] for q, _, _ in pairs], [split[d][p] for _, d, p in pairs],
                         batch_size=batch_size, precision=precision, show_progress=show_progress)
    per_doc: dict[tuple[str, str], list[float]] = {}
    for (q, d, p), s in zip(pairs, scores.tolist()):
        per_doc.setdefault((q, d), []).append(float(s))  # passages arrive in document order
    runs = {how: {} for how in aggregations}
    for (q, d), ss in per_doc.items():
        for how in aggregations:
            runs[how].setdefault(q, {})[d] = aggregate(ss, how)
    n_passages = [len(v) for v in split.values()]
    stats = {"documents": len(split), "passages": int(sum(n_passages)),
             "passages_per_document": float(np.mean(n_passages)) if n_passages else 0.0, "pairs": len(pairs)}
    return runs, stats


# ================================================================================================== efficiency
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[Any], Any], inputs: Sequence[Any], *, warmup: int, repeats: int,
               min_seconds: float = 0.0, device: torch.device | None = None) -> np.ndarray:
    """Latencies (seconds) of `fn(x)` over inputs[0], inputs[1], ... (cycled): `warmup` untimed calls, then at
    least `repeats` timed calls (and at least `min_seconds` of them)."""
    if not inputs:
        raise ValueError("no inputs to time")
    device = device or torch.device("cpu")
    i = 0
    with torch.inference_mode():
        for _ in range(warmup):
            fn(inputs[i % len(inputs)])
            i += 1
        _sync(device)
        lat = []
        start = time.perf_counter()
        while len(lat) < repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            fn(inputs[i % len(inputs)])
            _sync(device)
            lat.append(time.perf_counter() - t0)
            i += 1
    return np.asarray(lat)


def latency_stats(latencies: np.ndarray, items_per_call: int) -> dict[str, float]:
    total = float(latencies.sum())
    return {
        "items_per_s": items_per_call * len(latencies) / total,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p95_ms": float(np.percentile(latencies, 95) * 1e3),
        "calls": len(latencies),
    }


def measure_efficiency(model: Ranker, queries: Sequence[str], pairs: Sequence[tuple[str, str]], *,
                       batch_sizes: Sequence[int] = (1, 4, 16, 64), warmup: int = 3, repeats: int = 20,
                       min_seconds: float = 0.0, rerank_depth: int = 100,
                       parts: Sequence[str] = ("query_encode", "rerank"), precision: str = "auto") -> dict[str, float]:
    """Flat metrics, e.g. eff_query_encode_bs1_qps / _p50_ms / _p95_ms and eff_rerank_bs16_pairs_per_s / _qps
    (a re-ranked query = `rerank_depth` pairs) / _p50_ms / _p95_ms. Latency = one call of one batch.

    Query encoding is measured for dual encoders only (a cross-encoder or a teacher ensemble has no query-side cost
    of its own); re-ranking an ensemble costs every member's scoring (BM25 and the encoders) plus the combination.
    Batches are consecutive slices of the inputs (cycled), the same for every model.
    """
    device = model.device
    out: dict[str, float] = {}
    model.eval()

    def batches(items: Sequence[Any], b: int) -> list[list[Any]]:
        n = max(len(items), b)
        cyc = [items[i % len(items)] for i in range(n + b)]
        return [cyc[s : s + b] for s in range(0, n, b)]

    for b in batch_sizes:
        if "query_encode" in parts and model.dual_encoder:
            if not queries:
                raise ValueError("efficiency: no queries to encode")

            def enc(batch):
                with autocast(device, precision):
                    return model.encode_queries(batch)

            st = latency_stats(time_calls(enc, batches(list(queries), b), warmup=warmup, repeats=repeats,
                                          min_seconds=min_seconds, device=device), b)
            out[f"eff_query_encode_bs{b}_qps"] = st["items_per_s"]
            out[f"eff_query_encode_bs{b}_p50_ms"] = st["p50_ms"]
            out[f"eff_query_encode_bs{b}_p95_ms"] = st["p95_ms"]
        if "rerank" in parts:
            if not pairs:
                raise ValueError("efficiency: no (query, passage) pairs to re-rank")

            def score(batch):
                with autocast(device, precision):
                    return model.score([q for q, _ in batch], [p for _, p in batch])

            st = latency_stats(time_calls(score, batches(list(pairs), b), warmup=warmup, repeats=repeats,
                                          min_seconds=min_seconds, device=device), b)
            out[f"eff_rerank_bs{b}_pairs_per_s"] = st["items_per_s"]
            out[f"eff_rerank_bs{b}_qps"] = st["items_per_s"] / rerank_depth
            out[f"eff_rerank_bs{b}_p50_ms"] = st["p50_ms"]
            out[f"eff_rerank_bs{b}_p95_ms"] = st["p95_ms"]
    return out


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes while the block ran (Linux /proc; None elsewhere).
    Timings taken while it is above ~0.1 are not reliable."""

    share: float | None = None

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as f:
                vals = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                mine = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15])
        except (OSError, ValueError):
            return None
        return sum(vals[:8]), vals[3] + vals[4], mine

    def __enter__(self) -> "OtherLoad":
        self._start = self._read()
        return self

    def __exit__(self, *exc) -> None:
        end = self._read()
        if self._start is None or end is None:
            return
        total = end[0] - self._start[0]
        busy = total - (end[1] - self._start[1])
        if total > 0:
            self.share = max(0.0, (busy - (end[2] - self._start[2])) / total)


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on, including how loaded the machine was."""
    info: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count()}
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every OS
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ============================================================================================== results & output
@dataclass
class TaskResult:
    """One (model, task) evaluation: metrics and what produced them."""

    model: str | None
    task: str
    dataset: str
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    key: str | None = None  # `result_key` of what produced it (run_all reuses a result whose key still matches)
    reused: bool = False  # taken from an earlier run's results.json (already logged to MLflow then)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "dataset": self.dataset, "metrics": self.metrics,
                "info": self.info, "files": self.files, "key": self.key}


def eval_metrics(run: Run, qrels: Qrels, metrics: Sequence[str], relevance_level: int, *, run_source: str,
                 qrels_source: str) -> tuple[dict[str, float], EvalResult]:
    check_overlap(run, qrels, run_source, qrels_source)
    res = evaluate(run, qrels, metrics=tuple(metrics), relevance_level=relevance_level)
    return {k: float(v) for k, v in res.items()}, res


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
    return path


TABLE_METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")


def format_table(results: Sequence[TaskResult], metrics: Sequence[str] = TABLE_METRICS,
                 efficiency: Sequence[str] = ("eff_query_encode_bs1_qps", "eff_rerank_bs64_qps")) -> str:
    """A plain-text table: one row per (model, dataset); efficiency columns from the model's efficiency task."""
    eff_by_model = {r.model: r.metrics for r in results if r.task == "efficiency"}
    eff_cols = [c for c in efficiency if any(c in m for m in eff_by_model.values())]
    metric_cols = [m for m in metrics if any(m in r.metrics for r in results if r.task != "efficiency")]
    head = ["model", "dataset", "task", *metric_cols, *(c.removeprefix("eff_") for c in eff_cols)]
    rows = []
    for r in results:
        if r.task == "efficiency":
            continue
        eff = eff_by_model.get(r.model, {})
        rows.append([r.model or "-", r.dataset, r.task,
                     *(f"{r.metrics[m]:.4f}" if m in r.metrics else "" for m in metric_cols),
                     *(f"{eff[c]:.3g}" if c in eff else "" for c in eff_cols)])
    for model, eff in eff_by_model.items():
        if not any(r[0] == model for r in rows):
            rows.append([model, "-", "efficiency", *([""] * len(metric_cols)),
                         *(f"{eff[c]:.3g}" if c in eff else "" for c in eff_cols)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def plot_tradeoff(points: Sequence[Mapping[str, Any]], output: str | Path, *, xlabel: str, ylabel: str,
                  title: str | None = None, legend: bool | None = None) -> Path:
    """Efficiency–effectiveness scatter (x: queries/s, log scale; y: effectiveness), one point per model, written
    as PNG with matplotlib's Agg backend. `points`: dicts with label, x, y and optionally `yerr` (drawn as an error
    bar, e.g. the std over seeds) and `contended` (timed while other processes loaded the machine: drawn hollow and
    marked). Points are labelled beside them, or, with `legend` (default: more than 10 points, where labels beside
    them overlap), by distinct colour/marker pairs in a legend right of the axes."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None and math.isfinite(p["x"])
           and math.isfinite(p["y"]) and p["x"] > 0]
    if not pts:
        raise ValueError("nothing to plot: no run has both metrics")
    from matplotlib.ticker import FuncFormatter

    def err(p: Mapping[str, Any]) -> float:  # the error bar's half-height; 0 for none (missing, single seed: NaN)
        e = p.get("yerr")
        return float(e) if e and math.isfinite(e) else 0.0

    legend = len(pts) > 10 if legend is None else legend
    fig, ax = plt.subplots(figsize=(10.5 if legend else 7.5, 5.5 if legend else 5), dpi=150)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = "osD^vP*Xh<>p"
    for i, p in enumerate(sorted(pts, key=lambda p: (-p["y"], p["x"]) if legend else (p["x"], p["y"]))):
        c = colors[i % len(colors)]
        mk = markers[(i // len(colors)) % len(markers)] if legend else "o"
        hollow = bool(p.get("contended"))
        label = p["label"] + (" (timed under load)" if hollow else "")
        if err(p):
            ax.errorbar(p["x"], p["y"], yerr=err(p), fmt="none", ecolor=c, elinewidth=1.2, capsize=3, zorder=2)
        ax.scatter(p["x"], p["y"], s=70, zorder=3, marker=mk, edgecolors=c, facecolors="none" if hollow else c,
                   linewidths=1.8, label=label)
        if not legend:
            ax.annotate(label, (p["x"], p["y"]), textcoords="offset points", xytext=(7, 7 if i % 2 == 0 else -13),
                        fontsize=9)
    if legend:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, borderaxespad=0.0)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    xs = [p["x"] for p in pts]
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)
    lo, hi = min(p["y"] - err(p) for p in pts), max(p["y"] + err(p) for p in pts)
    pad = max(0.02, (hi - lo) * 0.15)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or f"{ylabel} vs {xlabel}")
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)
    return output


# ======================================================================================================== tasks
# A corpus encoder turns (document-encoder spec, loaded model or None, docids, texts) into float32 embeddings in
# docids order. The default runs in this process; kd.runtime.evaluation passes one that runs a Ray Data actor pool.
CorpusEncoder = Callable[[dict, "BertDot | None", list, list], np.ndarray]


def doc_encoder_spec(spec: Mapping[str, Any]) -> dict:
    """The document side of a model spec: `doc_path` with `doc_options` when given (the query model's options and
    layer subset do not apply to it), else the query model itself."""
    spec = dict(spec)
    if spec.get("doc_path"):
        return {"name": f"{spec['name']}:docs", "path": spec["doc_path"], "options": spec.get("doc_options") or {},
                "layers": None, "num_layers": None}
    return {k: spec.get(k) for k in ("name", "path", "options", "layers", "num_layers")}


def load_spec(spec: Mapping[str, Any], resolve_uri: Callable[[str], Path] | None = None,
              device: torch.device | None = None) -> Ranker:
    model = load_ranker(spec["path"], options=spec.get("options") or None, layers=spec.get("layers"),
                        num_layers=spec.get("num_layers"), resolve_uri=resolve_uri)
    return model.to(device) if device is not None else model


class TaskRunner:
    """Runs the tasks of an EvalConfig for one model at a time, in-process; writes TREC runs and JSON per result.

    `corpus_encoder` replaces in-process corpus encoding (kd.runtime.evaluation: Ray Data actors). Loaded BEIR
    folders and corpus embeddings (per document encoder and corpus) are cached for the runner's lifetime, so several
    query encoders over one teacher index encode the corpus once.
    """

    def __init__(self, cfg, *, resolve_uri: Callable[[str], Path] | None = None,
                 corpus_encoder: CorpusEncoder | None = None):
        from kd.eval_config import EvalConfig

        if not isinstance(cfg, EvalConfig):
            raise TypeError("cfg must be a kd.eval_config.EvalConfig")
        self.cfg = cfg
        self.resolve_uri = resolve_uri
        self.corpus_encoder = corpus_encoder
        self.out = Path(cfg.output_dir)
        self.device = pick_device(cfg.compute.device)
        self._beir: dict[tuple, Any] = {}
        self._texts: dict[tuple, Any] = {}
        self._doc_emb: dict[str, tuple[list[str], np.ndarray]] = {}

    # ------------------------------------------------------------------------------------------------- data
    def beir(self, folder: str, split: str):
        from kd.data import load_beir

        key = (str(Path(folder).resolve()), split)
        if key not in self._beir:
            ds = load_beir(folder, split)
            check_corpus(ds.corpus, str(Path(folder) / "corpus.jsonl"))
            if not ds.qrels:
                raise FormatError(f"no judgments for split {split!r}", path=Path(folder) / "qrels" / f"{split}.tsv")
            self._beir[key] = ds
        return self._beir[key]

    def _queries(self, path: str) -> Mapping[str, str]:
        from kd.data import load_queries

        key = ("q", str(Path(path).resolve()))
        if key not in self._texts:
            self._texts[key] = load_queries(path)
        return self._texts[key]

    def _passages(self, path: str, use_title: bool) -> Mapping[str, str]:
        from kd.data import load_passages

        key = ("p", str(Path(path).resolve()), use_title)
        if key not in self._texts:
            texts = load_passages(path, use_title=use_title, show_progress=self.cfg.show_progress)
            check_corpus(texts, path)
            self._texts[key] = texts
        return self._texts[key]

    def preflight(self) -> None:
        """Read every task's inputs and check them (ids, overlaps, empty corpora) before any model work, so bad
        input fails in seconds with the file named."""
        from kd.data import read_qrels, read_trec_run

        for task in self.cfg.tasks:
            if task.task in ("run", "rerank"):
                run, qrels = read_trec_run(task.run), read_qrels(task.qrels)
                qids = check_overlap(run, qrels, task.run, task.qrels)
                if task.task == "rerank":
                    check_run_ids(task.run, top_candidates(run, qids, task.top_k), self._queries(task.queries),
                                  self._passages(task.corpus, task.use_title), queries_source=task.queries,
                                  passages_source=task.corpus)
            elif task.task in ("dense", "document"):
                ds = self.beir(task.beir, task.split)
                if not ds.judged_queries():
                    raise EvaluationError(f"no query of {Path(task.beir) / 'queries.jsonl'} has judgments",
                                          path=Path(task.beir) / "qrels" / f"{task.split}.tsv")
                if task.task == "document" and task.run:
                    run = read_trec_run(task.run)
                    qids = check_overlap(run, ds.qrels, task.run, str(Path(task.beir) / "qrels"))
                    check_run_ids(task.run, top_candidates(run, qids, task.top_k), ds.queries, ds.corpus,
                                  queries_source=str(Path(task.beir) / "queries.jsonl"),
                                  passages_source=str(Path(task.beir) / "corpus.jsonl"))
            elif task.task == "efficiency":
                queries = self._queries(task.queries)
                passages = self._passages(task.passages, task.use_title)
                if task.run:
                    run = read_trec_run(task.run)
                    rq = [q for q in sorted(run) if q in queries]
                    check_run_ids(task.run, top_candidates(run, rq, task.rerank_depth), queries, passages,
                                  queries_source=task.queries, passages_source=task.passages)

    # ----------------------------------------------------------------------------------------------- models
    def load(self, spec) -> Ranker:
        return load_spec(spec.model_dump(), self.resolve_uri, self.device)

    def _write(self, result: TaskResult, run: Run | None, top_k: int | None = None) -> TaskResult:
        from kd.data import write_trec_run

        folder = self.out / (result.model or "_runs")
        stem = result.dataset
        if run is not None:
            path = folder / f"{stem}.trec"
            write_trec_run(path, run, tag=_tag(result.model or result.dataset), k=top_k)
            result.files["run"] = str(path)
        result.files["json"] = str(folder / f"{stem}.json")
        write_json(result.files["json"], result.to_dict())
        return result

    # ----------------------------------------------------------------------------------------------- tasks
    def run_baseline(self, task) -> TaskResult:
        """`run` task: evaluate a TREC run file as it is."""
        from kd.data import read_qrels, read_trec_run

        t0 = time.perf_counter()
        run, qrels = read_trec_run(task.run), read_qrels(task.qrels)
        metrics, res = eval_metrics(run, qrels, self.cfg.metrics_for(task), self.cfg.relevance_for(task),
                                    run_source=task.run, qrels_source=task.qrels)
        info = {"n_queries": res.n_queries, "missing_queries": len(res.missing_queries),
                "relevance_level": self.cfg.relevance_for(task), "run": task.run, "qrels": task.qrels,
                "seconds": time.perf_counter() - t0}
        return self._write(TaskResult(None, "run", task.name, metrics, info), None)

    def run_task(self, task, spec, model: Ranker | None = None) -> list[TaskResult]:
        """Run one task for one model spec (the model is loaded unless given)."""
        if task.task == "run":
            return [self.run_baseline(task)]
        model = model if model is not None else self.load(spec)
        fn = {"dense": self.dense, "rerank": self.rerank, "document": self.document,
              "efficiency": self.efficiency}[task.task]
        out = fn(task, spec, model)
        return out if isinstance(out, list) else [out]

    def corpus_embeddings(self, spec, model: Ranker, folder: str, docids: list[str], texts: list[str],
                          use_title: bool) -> np.ndarray:
        dspec = doc_encoder_spec(spec.model_dump())
        key = json.dumps({"spec": {k: v for k, v in dspec.items() if k != "name"}, "corpus": folder,
                          "use_title": use_title, "n": len(docids), "batch": self.cfg.compute.batch_size},
                         sort_keys=True, default=str)
        if key in self._doc_emb:
            return self._doc_emb[key][1]
        doc_model = model if not spec.doc_path else None
        if self.corpus_encoder is not None:
            emb = self.corpus_encoder(dspec, doc_model, docids, texts)
        else:
            if doc_model is None:
                doc_model = load_spec(dspec, self.resolve_uri, self.device)
            emb = encode_texts(doc_model, texts, kind="docs", batch_size=self.cfg.compute.batch_size,
                               precision=self.cfg.compute.precision, show_progress=self.cfg.show_progress,
                               desc=f"encoding corpus ({dspec['name']})")
        if emb.shape[0] != len(docids):
            raise RuntimeError(f"corpus encoder returned {emb.shape[0]} embeddings for {len(docids)} documents")
        self._doc_emb = {key: (docids, emb)}  # keep one corpus in memory
        return emb

    def dense(self, task, spec, model: Ranker) -> TaskResult:
        if not is_single_vector(model):
            raise EvaluationError(f"model {spec.name!r} is a {model.architecture!r}: the dense task needs a "
                                  "single-vector bi-encoder (bert_dot); evaluate other architectures with the rerank "
                                  "task")
        t0 = time.perf_counter()
        ds = self.beir(task.beir, task.split)
        texts_by_id = ds.texts(use_title=task.use_title)
        docids = list(texts_by_id)
        texts = [texts_by_id[d] for d in docids]
        queries = ds.judged_queries()
        if not queries:
            raise FormatError(f"no query of {Path(task.beir) / 'queries.jsonl'} has judgments in split "
                              f"{task.split!r}", path=Path(task.beir) / "qrels" / f"{task.split}.tsv")
        emb = self.corpus_embeddings(spec, model, task.beir, docids, texts, task.use_title)
        t_enc = time.perf_counter()
        qids = sorted(queries)
        qemb = encode_texts(model, [queries[q] for q in qids], kind="queries", batch_size=self.cfg.compute.batch_size,
                            precision=self.cfg.compute.precision)
        index = build_index(emb, task.index, hnsw_m=task.hnsw_m, ef_search=task.hnsw_ef_search)
        run = search_index(index, qemb, qids, docids, task.top_k)
        t_search = time.perf_counter()
        qrels_src = str(Path(task.beir) / "qrels" / f"{task.split}.tsv")
        metrics, res = eval_metrics(run, ds.qrels, self.cfg.metrics_for(task), self.cfg.relevance_for(task),
                                    run_source=f"dense run of {spec.name}", qrels_source=qrels_src)
        info = {"n_queries": res.n_queries, "n_docs": len(docids), "dim": int(emb.shape[1]), "index": task.index,
                "top_k": task.top_k, "relevance_level": self.cfg.relevance_for(task),
                "doc_encoder": spec.doc_path or spec.path, "query_encoder": spec.path,
                "seconds_corpus": t_enc - t0, "seconds_search": t_search - t_enc,
                "seconds": time.perf_counter() - t0,
                **resolve_precision(self.cfg.compute.precision, self.device).as_info()}
        return self._write(TaskResult(spec.name, "dense", task.name, metrics, info), run, task.top_k)

    def rerank(self, task, spec, model: Ranker) -> TaskResult:
        from kd.data import read_qrels, read_trec_run

        t0 = time.perf_counter()
        run, qrels = read_trec_run(task.run), read_qrels(task.qrels)
        qids = check_overlap(run, qrels, task.run, task.qrels)
        queries = self._queries(task.queries)
        passages = self._passages(task.corpus, task.use_title)
        cands = top_candidates(run, qids, task.top_k)
        check_run_ids(task.run, cands, queries, passages, queries_source=task.queries, passages_source=task.corpus)
        new = rerank(model, cands, queries, passages, batch_size=self.cfg.compute.batch_size,
                     precision=self.cfg.compute.precision, show_progress=self.cfg.show_progress)
        metrics, res = eval_metrics(new, qrels, self.cfg.metrics_for(task), self.cfg.relevance_for(task),
                                    run_source=task.run, qrels_source=task.qrels)
        info = {"n_queries": res.n_queries, "pairs": sum(len(v) for v in cands.values()), "top_k": task.top_k,
                "relevance_level": self.cfg.relevance_for(task), "first_stage": task.run,
                "architecture": model.architecture, **ensemble_info(model), "seconds": time.perf_counter() - t0,
                **resolve_precision(self.cfg.compute.precision, self.device).as_info()}
        return self._write(TaskResult(spec.name, "rerank", task.name, metrics, info), new)

    def document(self, task, spec, model: Ranker) -> list[TaskResult]:
        from kd.data import bm25_search, read_trec_run

        t0 = time.perf_counter()
        ds = self.beir(task.beir, task.split)
        qrels_src = str(Path(task.beir) / "qrels" / f"{task.split}.tsv")
        queries = ds.judged_queries()
        if task.run:
            first = read_trec_run(task.run)
            source = task.run
        else:
            key = ("bm25", str(Path(task.beir).resolve()), task.split, task.top_k)
            if key not in self._texts:
                self._texts[key] = bm25_search(ds.corpus, queries, task.top_k, show_progress=False)
            first, source = self._texts[key], f"BM25 over {Path(task.beir) / 'corpus.jsonl'}"
        qids = check_overlap(first, ds.qrels, source, qrels_src)
        cands = top_candidates(first, qids, task.top_k)
        if task.run:
            check_run_ids(task.run, cands, queries, ds.corpus, queries_source=str(Path(task.beir) / "queries.jsonl"),
                          passages_source=str(Path(task.beir) / "corpus.jsonl"))
        runs, stats = document_rerank(model, cands, queries, ds.corpus, window=task.window, stride=task.stride,
                                      aggregations=task.aggregations, max_passages=task.max_passages,
                                      use_title=task.use_title, batch_size=self.cfg.compute.batch_size,
                                      precision=self.cfg.compute.precision, show_progress=self.cfg.show_progress)
        results = []
        for how, run in runs.items():
            metrics, res = eval_metrics(run, ds.qrels, self.cfg.metrics_for(task), self.cfg.relevance_for(task),
                                        run_source=f"{how} run of {spec.name}", qrels_source=qrels_src)
            info = {"n_queries": res.n_queries, "aggregation": how, "window_words": task.window,
                    "stride_words": task.stride, "top_k": task.top_k, "first_stage": source,
                    "relevance_level": self.cfg.relevance_for(task), **stats, **ensemble_info(model),
                    "seconds": time.perf_counter() - t0,
                    **resolve_precision(self.cfg.compute.precision, self.device).as_info()}
            results.append(self._write(TaskResult(spec.name, "document", f"{task.name}-{how}", metrics, info), run))
        return results

    def efficiency(self, task, spec, model: Ranker) -> TaskResult:
        from kd.data import read_trec_run

        device = pick_device(task.device)
        queries = self._queries(task.queries)
        passages = self._passages(task.passages, task.use_title)
        qids = sorted(queries)
        qtexts = [queries[q] for q in qids]
        if task.run:
            run = read_trec_run(task.run)
            rq = [q for q in sorted(run) if q in queries]
            cands = top_candidates(run, rq, task.rerank_depth)
            check_run_ids(task.run, cands, queries, passages, queries_source=task.queries,
                          passages_source=task.passages)
            pairs = [(queries[q], passages[d]) for q in rq for d in cands[q]]
        else:
            pids = list(passages.keys())[: max(len(qtexts), 1) * task.rerank_depth]
            pairs = [(qtexts[i % len(qtexts)], passages[p]) for i, p in enumerate(pids)]
        moved = model.device != device
        model.to(device)
        load = OtherLoad()
        try:
            with load:
                metrics = measure_efficiency(model, qtexts, pairs, batch_sizes=task.batch_sizes,
                                             warmup=task.warmup, repeats=task.repeats, min_seconds=task.min_seconds,
                                             rerank_depth=task.rerank_depth, parts=task.parts,
                                             precision=self.cfg.compute.precision)
        finally:
            if moved:
                model.to(self.device)
        info = {**machine_info(device), "batch_sizes": list(task.batch_sizes), "warmup": task.warmup,
                "repeats": task.repeats, "rerank_depth": task.rerank_depth, **model_info(model),
                "other_processes_cpu_share": load.share,
                "contended": bool(load.share is not None and load.share > 0.1),
                **resolve_precision(self.cfg.compute.precision, device).as_info()}
        if info["contended"]:
            logger.warning("efficiency of %s measured while other processes used %.0f%% of the CPU: the timings are "
                           "not reliable", spec.name, 100 * load.share)
        return self._write(TaskResult(spec.name, "efficiency", task.name, metrics, info), None)


def _tag(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in name) or "kd"


def _stamp(path: str) -> Any:
    """Size and mtime of a file, of every file in a folder; None for what is not local (a hub name)."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p.stat().st_size, p.stat().st_mtime_ns]
    if p.is_dir():
        return sorted([str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns] for f in p.rglob("*")
                      if f.is_file())
    return None


def result_key(cfg, task, spec=None) -> str | None:
    """A digest of everything a (model, task) result depends on: the task, the model spec, metrics, relevance,
    compute and MLflow settings, and the size/mtime of every input file and model folder (a model retrained into the
    same folder changes it). None for a `models:/` or `runs:/` model, whose alias can move: always recomputed."""
    from kd.config import fingerprint

    paths = [v for k, v in task.model_dump().items() if k in ("run", "qrels", "queries", "passages", "corpus", "beir")
             and v]
    for path in filter(None, (spec.path, spec.doc_path) if spec is not None else ()):
        if is_model_uri(path):
            return None
        paths += [path, *ensemble_inputs(path)]  # an ensemble's scores also depend on its members and corpora
    what = {"task": task.model_dump(mode="json"), "spec": spec.model_dump(mode="json") if spec else None,
            "metrics": list(cfg.metrics_for(task)), "relevance": cfg.relevance_for(task),
            "compute": cfg.compute.model_dump(mode="json"), "mlflow": cfg.mlflow.model_dump(mode="json"),
            "inputs": {p: _stamp(p) for p in paths}}
    return fingerprint(what)


def _earlier_results(path: Path) -> dict[str, list[TaskResult]]:
    """An earlier run's results.json by key: the results whose files are all still there."""
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    out: dict[str, list[TaskResult]] = {}
    for d in rows if isinstance(rows, list) else []:
        if isinstance(d, dict) and d.get("key") and all(Path(f).is_file() for f in (d.get("files") or {}).values()):
            r = TaskResult(d["model"], d["task"], d["dataset"], d["metrics"], d["info"], d["files"], d["key"], True)
            out.setdefault(d["key"], []).append(r)
    return out


def run_all(cfg, runner: TaskRunner | None = None,
            on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
    """Every task for every model, in-process (models loaded one at a time); `run` tasks once. Returns the
    results, also written to <output_dir>/results.json — rewritten after each result (once `on_result`, the MLflow
    logging, is done with it), so a job that fails in a later task keeps what it finished, and a rerun reuses the
    results whose `result_key` still matches (marked `reused`; delete results.json to recompute them)."""
    runner = runner or TaskRunner(cfg)
    results: list[TaskResult] = []
    path = Path(cfg.output_dir) / "results.json"
    earlier = _earlier_results(path)

    def emit(rs: list[TaskResult], key: str | None) -> None:
        for r in rs:
            r.key = key
            results.append(r)
            if on_result is not None:
                on_result(r)
            write_json(path, [r.to_dict() for r in results])

    def reusable(task, spec=None) -> tuple[str | None, list[TaskResult] | None]:
        key = result_key(cfg, task, spec)
        rs = earlier.get(key or "")
        if rs and len(rs) == (len(task.aggregations) if task.task == "document" else 1):
            logger.info("%s / %s: reusing the result of an earlier run (%s)", spec.name if spec else "baseline",
                        task.name, path)
            return key, rs
        return key, None

    for task in cfg.tasks:
        if task.task == "run":
            key, rs = reusable(task)
            emit(rs or [runner.run_baseline(task)], key)
    # efficiency first: the model's speed can then be reported beside each of its effectiveness results
    model_tasks = sorted((t for t in cfg.tasks if t.task != "run"), key=lambda t: t.task != "efficiency")
    for spec in cfg.models if model_tasks else []:
        model = None  # loaded for the first task that has no reusable result
        for task in model_tasks:
            key, rs = reusable(task, spec)
            if rs is None:
                model = model if model is not None else runner.load(spec)
                rs = runner.run_task(task, spec, model)
            emit(rs, key)
        del model
    write_json(Path(cfg.output_dir) / "results.json", [r.to_dict() for r in results])  # also when there is none
    return results
