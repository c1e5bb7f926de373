"""Dense search over embedding shards (kd/evaluation/shards.py, search.py): exact against one flat index (random
embeddings full of ties), identical TREC runs on real SciFact with real all-MiniLM-L6-v2 embeddings for any shard
size, and one shard resident in the driver at a time.

The SciFact test uses all 300 test claims over their judged abstracts plus 200 others (about 540 documents, one
encoding); with KD_EVAL_FULL=1 it runs on the full 5,183-abstract corpus.
"""
from __future__ import annotations

import json
import os
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest

from kd.configs.evaluate import EvalConfig
from kd.data import load_beir, ranked, write_trec_run
from kd.evaluation import (
    ShardSet,
    TaskRunner,
    build_index,
    encode_texts,
    eval_metrics,
    search_shards,
    to_run,
    write_piece,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SCIFACT = DATA / "beir" / "scifact"
SHORT = {"max_query_length": 32, "max_passage_length": 96}
FULL = os.environ.get("KD_EVAL_FULL") == "1"


def _reference(emb: np.ndarray, q: np.ndarray, docids: list[str], top_k: int) -> dict[str, list[tuple[str, float]]]:
    """Every document scored by one flat FAISS index, ranked by kd.data.ranked (score desc, docid desc)."""
    scores, idx = build_index(emb).search(q, emb.shape[0])
    return {str(i): ranked({docids[j]: float(s) for s, j in zip(scores[i], idx[i])}, top_k) for i in range(len(q))}


def _write_pieces(folder: Path, emb: np.ndarray, sizes: list[int], rng: np.random.Generator) -> ShardSet:
    """The corpus as pieces of the given sizes over a random permutation of the rows (as actors would write)."""
    folder.mkdir(parents=True, exist_ok=True)
    perm = rng.permutation(len(emb))
    start = 0
    for i, n in enumerate(sizes):
        rows = perm[start : start + n]
        write_piece(folder, f"{i:09d}", rows, emb[rows])
        start += n
    assert start == len(emb)
    return ShardSet.open(folder, len(emb))


# ----------------------------------------------------------------------------------------- exact merge, ties
@pytest.mark.parametrize("n_queries", [3, 25])  # FAISS computes < 20 queries pair by pair, more through BLAS
def test_sharded_search_equals_one_flat_index_with_ties(tmp_path, n_queries):
    rng = np.random.default_rng(7)
    n, d = 120, 6
    emb = rng.integers(-1, 2, size=(n, d)).astype(np.float32)  # values in {-1, 0, 1}: scores tie massively
    emb[10:30] = emb[0]  # and exact duplicates
    q = rng.integers(-1, 2, size=(n_queries, d)).astype(np.float32)
    docids = [str(x) for x in rng.choice(10_000, size=n, replace=False)]  # "10" < "9": string order matters
    shards = _write_pieces(tmp_path / "p", emb, [1, 33, 7, 50, 29], rng)
    qids = [str(i) for i in range(n_queries)]
    for top_k in (1, 5, 40, n + 3):
        expected = _reference(emb, q, docids, top_k)
        for shard_size in (1, 2, 7, 50, n - 1, n, n + 5):
            for slack in (0, 1, 16):
                got = to_run(*search_shards(shards.shards(shard_size), q, docids, top_k, slack=slack), qids, docids)
                assert {k: list(v.items()) for k, v in got.items()} == expected, (top_k, shard_size, slack)


def test_shards_cut_across_pieces_and_map_single_piece_shards(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((100, 4)).astype(np.float32)
    shards = _write_pieces(tmp_path / "p", emb, [40, 40, 20], rng)
    for shard_size, sizes in ((1, [1] * 100), (30, [30, 30, 30, 10]), (40, [40, 40, 20]), (100, [100]),
                              (1000, [100])):
        cut = list(shards.shards(shard_size))
        assert [len(r) for r, _ in cut] == sizes and shards.count_shards(shard_size) == len(sizes)
        rows = np.concatenate([r for r, _ in cut])
        assert sorted(rows) == list(range(100))
        np.testing.assert_array_equal(np.concatenate([e for _, e in cut]), emb[rows])
    assert all(isinstance(e, np.memmap) for _, e in shards.shards(40))  # inside one piece: mapped, not copied
    np.testing.assert_array_equal(shards.load_all(), emb)


# ------------------------------------------------------------------------------------- one shard in the driver
def test_the_driver_holds_one_shard_at_a_time(tmp_path):
    """Shards yielded to the search are counted while alive (weak references): never two at once. tracemalloc
    (numpy's allocations) bounds the search's peak by a few shards, far below the corpus it would gather."""
    rng = np.random.default_rng(1)
    n, d, piece, shard_size = 40_000, 128, 1_000, 1_500  # shards span pieces: each one is a gathered copy
    emb = rng.standard_normal((n, d)).astype(np.float32)
    shards = _write_pieces(tmp_path / "p", emb, [piece] * (n // piece), rng)
    docids = [f"doc{i}" for i in range(n)]
    q = rng.standard_normal((20, d)).astype(np.float32)
    del emb
    live: set[int] = set()
    most = 0

    def counted(it):
        nonlocal most
        for k, (rows, e) in enumerate(it):
            live.add(k)
            weakref.finalize(e, live.discard, k)
            most = max(most, len(live))
            yield rows, e
            del rows, e

    def peak(size: int) -> int:
        tracemalloc.start()
        search_shards(counted(shards.shards(size)), q, docids, 10)
        out = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out

    sharded = peak(shard_size)
    assert most == 1
    corpus_bytes, shard_bytes = n * d * 4, shard_size * d * 4
    assert sharded < 3 * shard_bytes + 64 * n + (1 << 20) < corpus_bytes / 2, (sharded, shard_bytes)
    assert peak(n) >= corpus_bytes  # one shard of the whole corpus: the bound above is not vacuous


# ------------------------------------------------------------------------------------------------ real SciFact
@pytest.fixture(scope="module")
def scifact(tmp_path_factory, shared_data) -> Path:
    """SciFact test: all 300 judged claims; the full corpus with KD_EVAL_FULL=1, else their judged abstracts and
    200 others."""
    if FULL:
        return SCIFACT
    src = load_beir(SCIFACT, "test")
    rel = sorted({d for q in src.qrels.values() for d in q})
    keep = rel + [d for d in src.corpus if d not in set(rel)][:200]
    root = tmp_path_factory.mktemp("scifact")
    (root / "qrels").mkdir()
    with open(root / "corpus.jsonl", "w") as f:
        for d in keep:
            f.write(json.dumps({"_id": d, **src.corpus[d]}) + "\n")
    (root / "queries.jsonl").write_bytes((SCIFACT / "queries.jsonl").read_bytes())
    (root / "qrels" / "test.tsv").write_bytes((SCIFACT / "qrels" / "test.tsv").read_bytes())
    return root


def _with_shard_size(cfg: EvalConfig, shard_size: int) -> EvalConfig:
    return cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"shard_size": shard_size})})


@pytest.mark.timeout(7200 if FULL else 1200)  # the full corpus at full length: tens of minutes on 2 cores
def test_scifact_sharded_runs_are_identical_to_one_flat_index(tmp_path, scifact, minilm_path):
    """The corpus is encoded once (pieces of 64 documents); the dense task then searches it with shard sizes that
    divide nothing, one and two documents, the corpus less one, the corpus, and the default: every TREC run is
    byte-identical to the one a single IndexFlatIP over all embeddings gives (the search before shards)."""
    options = {} if FULL else SHORT
    spec = {"name": "minilm", "path": minilm_path, "options": options}
    cfg = EvalConfig.model_validate({
        "models": [spec], "output_dir": str(tmp_path / "out"), "show_progress": False, "mlflow": {"enabled": False},
        "compute": {"backend": "local", "batch_size": 16, "precision": "fp32", "shard_size": 64},
        "tasks": [{"task": "dense", "name": "scifact", "beir": str(scifact), "top_k": 1000}]})
    task, model_spec = cfg.tasks[0], cfg.models[0]
    runner = TaskRunner(cfg)
    model = runner.load(model_spec)
    first = runner.run_task(task, model_spec, model)[0]
    n_docs = first.info["n_docs"]
    assert first.info["n_queries"] == 300 and first.info["shards"] == -(-n_docs // 64)
    (shards,) = runner._doc_emb.values()
    assert len(shards.names) == -(-n_docs // 64) and shards.folder.parent == Path(cfg.output_dir) / "_embeddings"

    # the unsharded reference: one flat index over the corpus in document order, top_k + 16 hits, ranked
    ds = runner.inputs(task).ds
    docids = list(ds.texts(use_title=True))
    queries = ds.judged_queries()
    qids = sorted(queries)
    qemb = encode_texts(model, [queries[x] for x in qids], kind="queries", batch_size=16, precision="fp32")
    scores, idx = build_index(shards.load_all()).search(qemb, min(1016, n_docs))
    ref = {qid: dict(ranked({docids[j]: float(s) for s, j in zip(scores[i], idx[i])}, 1000))
           for i, qid in enumerate(qids)}
    write_trec_run(tmp_path / "ref.trec", ref, tag="minilm", k=1000)
    expected = (tmp_path / "ref.trec").read_bytes()
    ref_metrics, _ = eval_metrics(ref, ds.qrels, cfg.metrics_for(task), 1, run_source="ref", qrels_source="qrels")
    assert Path(first.files["run"]).read_bytes() == expected and first.metrics == ref_metrics
    if FULL:
        assert first.metrics["ndcg@10"] == pytest.approx(0.645, abs=0.003)

    runner.corpus_encoder = lambda *a: pytest.fail("the corpus was encoded again")
    for shard_size in (1, 2, 7, 333, n_docs - 1, n_docs, 65_536):
        runner.cfg = _with_shard_size(cfg, shard_size)
        res = runner.run_task(task, model_spec, model)[0]
        assert res.info["shards"] == -(-n_docs // shard_size)
        assert Path(res.files["run"]).read_bytes() == expected, shard_size
        assert res.metrics == ref_metrics

    runner.cfg = cfg.model_copy(update={"tasks": [task.model_copy(update={"index": "hnsw"})]})
    hnsw = runner.run_task(runner.cfg.tasks[0], model_spec, model)[0]  # one graph over the whole corpus
    assert hnsw.info["shards"] == 1 and hnsw.metrics["ndcg@10"] == pytest.approx(ref_metrics["ndcg@10"], abs=0.01)
