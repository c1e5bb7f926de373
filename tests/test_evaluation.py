"""kd.evaluation (core, no Ray / MLflow) and kd.configs.evaluate: real MiniLM weights, real SciFact / TREC DL'19 text."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kd.configs.errors import ConfigError
from kd.configs.loader import load_config
from kd.data import FormatError, load_beir, read_qrels, read_trec_run
from kd.configs.evaluate import EvalConfig
from kd.evaluation import (
    EvaluationError,
    TaskResult,
    ShardSet,
    TaskRunner,
    aggregate,
    build_index,
    encode_texts,
    format_table,
    load_ranker,
    measure_efficiency,
    plan_batches,
    plot_tradeoff,
    rerank,
    run_all,
    score_pairs,
    search_index,
    search_shards,
    split_passages,
    to_run,
    top_candidates,
    write_piece,
)
from kd.models import BertCat, ColBERT

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DL19 = DATA / "trec-dl-2019"
SCIFACT = DATA / "beir" / "scifact"
SHORT = {"max_query_length": 32, "max_passage_length": 96}  # keeps CPU time small; quality claims use the defaults


def _cfg(tmp_path: Path, **fields) -> EvalConfig:
    base = {"output_dir": str(tmp_path / "out"), "show_progress": False, "mlflow": {"enabled": False},
            "compute": {"backend": "local", "batch_size": 16}}
    base.update(fields)
    return EvalConfig.model_validate(base)


def _dl19_rerank_task(**kw) -> dict:
    return {"task": "rerank", "name": "dl19", "run": str(DL19 / "runs" / "BM25.top100.trec"),
            "queries": str(DL19 / "queries.jsonl"), "corpus": str(DL19 / "corpus.jsonl"),
            "qrels": str(DL19 / "qrels" / "test.tsv"), **kw}


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return load_ranker(minilm_path, options=SHORT)


@pytest.fixture(scope="module")
def mini_beir(tmp_path_factory, shared_data) -> Path:
    """A small real BEIR folder: 12 SciFact test claims, their relevant abstracts and 48 other abstracts."""
    src = load_beir(SCIFACT, "test")
    qids = sorted(src.qrels)[:12]
    rel = {d for q in qids for d in src.qrels[q]}
    others = [d for d in src.corpus if d not in rel][:48]
    folder = tmp_path_factory.mktemp("mini_scifact")
    (folder / "qrels").mkdir()
    with open(folder / "corpus.jsonl", "w") as f:
        for d in sorted(rel) + others:
            f.write(json.dumps({"_id": d, "title": src.corpus[d]["title"], "text": src.corpus[d]["text"]}) + "\n")
    with open(folder / "queries.jsonl", "w") as f:
        for q in qids:
            f.write(json.dumps({"_id": q, "text": src.queries[q]}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in qids:
            for d, g in src.qrels[q].items():
                f.write(f"{q}\t{d}\t{g}\n")
    return folder


# ------------------------------------------------------------------------------------------------ pure pieces
def test_plan_batches_is_length_sorted_complete_and_deterministic():
    texts = ["ccc", "a", "bb", "a", "dddd", "bb", "", "eeeee"]
    plan = plan_batches(texts, 3)
    assert [len(b) for b in plan] == [3, 3, 2]
    flat = [i for b in plan for i in b]
    assert sorted(flat) == list(range(len(texts)))
    assert [len(texts[i]) for i in flat] == sorted(len(t) for t in texts)
    assert flat == [6, 1, 3, 2, 5, 0, 4, 7]  # ties by position
    assert plan_batches(texts, 3) == plan
    with pytest.raises(ValueError):
        plan_batches(texts, 0)


def test_shard_set_is_order_independent_and_complete(tmp_path):
    """Pieces written in any order and grouping (e.g. by Ray actors) read back as the corpus; every document must
    be there exactly once."""
    emb = np.arange(8, dtype=np.float32).reshape(4, 2)
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, parts in ((a, [([0, 1], emb[:2]), ([2, 3], emb[2:])]),
                          (b, [([3], emb[3:]), ([1, 0], emb[[1, 0]]), ([2], emb[2:3])])):  # two "actors", any order
        folder.mkdir()
        for i, (rows, e) in enumerate(parts):
            write_piece(folder, f"{i:09d}", rows, e)
        np.testing.assert_array_equal(ShardSet.open(folder, 4).load_all(), emb)
    write_piece(a, "000000009", [3], emb[3:])
    with pytest.raises(RuntimeError, match="twice"):
        ShardSet.open(a, 4)
    (a / "000000001.rows.npy").unlink()
    (a / "000000009.rows.npy").unlink()
    with pytest.raises(RuntimeError, match="wrote 2 of 4 embeddings"):
        ShardSet.open(a, 4)
    write_piece(a, "000000008", [7], emb[:1])
    with pytest.raises(RuntimeError, match="outside"):
        ShardSet.open(a, 4)


def test_split_passages_windows_stride_title_and_cap():
    text = " ".join(f"w{i}" for i in range(10))
    assert split_passages(text, 4, 2) == ["w0 w1 w2 w3", "w2 w3 w4 w5", "w4 w5 w6 w7", "w6 w7 w8 w9"]
    assert split_passages(text, 4, 4) == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    assert split_passages(text, 20, 10) == [text]  # short document: one passage
    assert split_passages(text, 4, 2, max_passages=2) == ["w0 w1 w2 w3", "w2 w3 w4 w5"]
    assert split_passages(text, 6, 3, prefix="Title") == [
        "Title w0 w1 w2 w3 w4 w5", "Title w3 w4 w5 w6 w7 w8", "Title w6 w7 w8 w9"]
    assert split_passages("", 4, 2, prefix="Only title") == ["Only title"]
    with pytest.raises(ValueError):
        split_passages(text, 4, 5)


def test_aggregations():
    s = [1.0, 4.0, 2.0, 3.0]
    assert aggregate(s, "maxp") == 4.0
    assert aggregate(s, "firstp") == 1.0
    assert aggregate(s, "sump") == 10.0
    assert aggregate(s, "avgp") == 2.5
    assert aggregate(s, "top2") == 3.5
    assert aggregate(s, "top9") == 2.5  # k beyond the passages: mean of all
    with pytest.raises(ValueError):
        aggregate(s, "medianp")
    with pytest.raises(ValueError):
        aggregate([], "maxp")


def test_flat_index_search_breaks_ties_by_docid_like_trec_eval():
    emb = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    docids = ["a", "c", "z", "b"]
    rows = np.arange(4)
    q = np.array([[1, 0]], dtype=np.float32)
    for shards in ([(rows, emb)], [(rows[:1], emb[:1]), (rows[1:3], emb[1:3]), (rows[3:], emb[3:])]):
        run = to_run(*search_shards(shards, q, docids, top_k=2), ["q"], docids)
        assert list(run["q"]) == ["c", "b"]  # three-way tie at 1.0: docid descending, cut at 2
    hnsw = search_index(build_index(emb, "hnsw", hnsw_m=8), np.array([[0, 1]], dtype=np.float32), docids, 1)
    assert list(to_run(*hnsw, ["q"], docids)["q"]) == ["z"]
    with pytest.raises(EvaluationError, match="embedding space"):
        search_shards([(rows, emb)], np.ones((1, 3), dtype=np.float32), docids, 1)


def test_format_table_and_plot(tmp_path):
    results = [
        TaskResult(None, "run", "dl19-bm25", {"ndcg@10": 0.5058}),
        TaskResult("a", "rerank", "dl19", {"ndcg@10": 0.64, "map": 0.3}),
        TaskResult("a", "efficiency", "efficiency", {"eff_query_encode_bs1_qps": 120.0}),
    ]
    table = format_table(results)
    assert "dl19-bm25" in table and "0.5058" in table and "query_encode_bs1_qps" in table and " 120" in table
    out = plot_tradeoff([{"label": "6L", "x": 100.0, "y": 0.64}, {"label": "2L", "x": 290.0, "y": 0.55}],
                        tmp_path / "p.png", xlabel="queries/s", ylabel="nDCG@10")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    crowded = [{"label": f"m{i}", "x": 10.0 + i, "y": 0.5 + i / 100, "yerr": 0.01 if i % 2 else None}
               for i in range(14)]  # > 10 points: legend instead of labels beside them, seed error bars
    out = plot_tradeoff(crowded, tmp_path / "c.png", xlabel="queries/s", ylabel="nDCG@10")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_tradeoff([{"label": "x", "x": None, "y": 0.1}], tmp_path / "q.png", xlabel="x", ylabel="y")


# ------------------------------------------------------------------------------------------------ config
def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="field tasks.0.rerank.run: .*file not found"):
        load_config(EvalConfig, None, ["models=[{name: m, path: x}]",
                                       f"tasks=[{json.dumps(_dl19_rerank_task(run='nope'))}]"])
    with pytest.raises(ConfigError, match="unknown aggregation 'median'"):
        load_config(EvalConfig, None, ["models=[{name: m, path: x}]",
                                       f"tasks=[{{task: document, name: d, beir: {SCIFACT}, aggregations: [median]}}]"])
    with pytest.raises(ConfigError, match="tasks.0"):
        load_config(EvalConfig, None, ["tasks=[{task: sparse, name: x}]"])
    with pytest.raises(ConfigError, match="unknown metric"):
        load_config(EvalConfig, None, ["metrics=[ndcg@10, bleu]", "plot={}"])
    with pytest.raises(ConfigError, match="needs at least one model"):
        load_config(EvalConfig, None, [f"tasks=[{json.dumps(_dl19_rerank_task())}]"])
    with pytest.raises(ConfigError, match="model folder not found"):
        load_config(EvalConfig, None, ["models=[{name: m, path: ./no/such/model}]", "plot={}"])
    for f in sorted(Path(__file__).resolve().parents[1].glob("configs/eval_*.yaml")):
        cfg = load_config(EvalConfig, f)  # shipped configs validate (relative paths from the repository root)
        assert cfg.tasks


# ------------------------------------------------------------------------------------------------ baseline + errors
def test_dl19_bm25_run_scores_the_reference_ndcg(tmp_path, shared_data):
    cfg = _cfg(tmp_path, tasks=[{"task": "run", "name": "bm25", "run": str(DL19 / "runs" / "BM25.top100.trec"),
                                 "qrels": str(DL19 / "qrels" / "test.tsv")}])
    (res,) = run_all(cfg)
    assert round(res.metrics["ndcg@10"], 4) == 0.5058
    assert res.info["n_queries"] == 43 and res.info["relevance_level"] == 2
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved[0]["metrics"]["ndcg@10"] == res.metrics["ndcg@10"]


def test_bad_inputs_fail_before_model_work_naming_file_and_what(tmp_path, shared_data):
    run_lines = (DL19 / "runs" / "BM25.top100.trec").read_text().splitlines()
    bad_run = tmp_path / "bad.trec"
    bad_run.write_text("\n".join(run_lines[:5] + [run_lines[5].replace(run_lines[5].split()[2], "no-such-doc")]
                                 + run_lines[6:]) + "\n")
    cfg = _cfg(tmp_path, models=[{"name": "m", "path": str(tmp_path)}],
               tasks=[_dl19_rerank_task(run=str(bad_run))])
    with pytest.raises(FormatError) as e:
        TaskRunner(cfg).preflight()
    assert f"{bad_run}, line 6" in str(e.value) and "'no-such-doc'" in str(e.value) and "corpus.jsonl" in str(e.value)

    other_qrels = tmp_path / "other.qrels"
    other_qrels.write_text("q-x 0 d-y 1\n")
    cfg = _cfg(tmp_path, tasks=[{"task": "run", "name": "r", "run": str(DL19 / "runs" / "BM25.top100.trec"),
                                 "qrels": str(other_qrels)}])
    with pytest.raises(EvaluationError) as e:
        TaskRunner(cfg).preflight()
    msg = str(e.value)
    assert "BM25.top100.trec" in msg and str(other_qrels) in msg and "share no query ids" in msg

    empty = tmp_path / "empty_beir"
    (empty / "qrels").mkdir(parents=True)
    (empty / "corpus.jsonl").write_text("")
    (empty / "queries.jsonl").write_text('{"_id": "1", "text": "q"}\n')
    (empty / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td\t1\n")
    cfg = _cfg(tmp_path, models=[{"name": "m", "path": str(tmp_path)}],
               tasks=[{"task": "dense", "name": "e", "beir": str(empty)}])
    with pytest.raises(FormatError, match=f"{empty / 'corpus.jsonl'}: empty file"):
        TaskRunner(cfg).preflight()
    (empty / "corpus.jsonl").write_text("\n")  # a file with no document at all
    with pytest.raises(FormatError, match="corpus.jsonl"):
        TaskRunner(cfg).preflight()


def test_job_cli_reports_bad_input_with_exit_2(tmp_path, shared_data, capsys):
    from jobs.evaluate import main

    other_qrels = tmp_path / "other.qrels"
    other_qrels.write_text("q-x 0 d-y 1\n")
    rc = main(["--set", f"output_dir={tmp_path}", "--set", "mlflow.enabled=false",
               "--set", f"tasks=[{{task: run, name: r, run: {DL19 / 'runs' / 'BM25.top100.trec'}, "
                        f"qrels: {other_qrels}}}]"])
    assert rc == 2
    assert "share no query ids" in capsys.readouterr().err
    rc = main(["--set", "tasks=[{task: run, name: r, run: ./nope.trec, qrels: ./nope}]"])
    assert rc == 2 and "field tasks.0.run.run" in capsys.readouterr().err


def test_dense_task_rejects_non_single_vector_models(tmp_path, mini_beir, minilm_path):
    """Refused when the config loads (kd_config.json read, nothing loaded), naming the model and the field."""
    folder = ColBERT.from_backbone(minilm_path, dim=32).save_pretrained(tmp_path / "colbert")
    with pytest.raises(ValueError, match="field models.0.path: model 'c' cannot run the dense task 's'.*'colbert'.*"
                                         "rerank task"):
        _cfg(tmp_path, models=[{"name": "c", "path": str(folder)}],
             tasks=[{"task": "dense", "name": "s", "beir": str(mini_beir)}])
    with pytest.raises(ValueError, match="field models.0.doc_path: model 'q'"):
        _cfg(tmp_path, models=[{"name": "q", "path": minilm_path, "doc_path": str(folder)}],
             tasks=[{"task": "dense", "name": "s", "beir": str(mini_beir)}])
    cfg = _cfg(tmp_path, models=[{"name": "c", "path": str(folder)}],  # the same model re-ranks
               tasks=[_dl19_rerank_task()])
    assert cfg.models[0].path == str(folder)


# ------------------------------------------------------------------------------------------------ real model
def test_hf_name_loads_as_sentence_transformers_bi_encoder(minilm_path):
    m = load_ranker(minilm_path)
    assert m.architecture == "bert_dot"
    assert m.options["pooling"] == "mean" and m.options["normalize"] is True
    assert m.options["max_query_length"] == 256 and m.options["max_passage_length"] == 256  # sentence_bert_config
    assert not m.training
    two = load_ranker(minilm_path, layers=[0, 5], options=SHORT)
    assert len(two.encoder.encoder.layer) == 2 and two.options["max_passage_length"] == 96


def test_encode_texts_matches_the_model_and_is_batch_plan_independent(minilm, sample_rows):
    texts = [r["passage"] for r in sample_rows] + [r["query"] for r in sample_rows]
    emb = encode_texts(minilm, texts, batch_size=4, precision="fp32")  # as the direct call (auto: bf16 on some CPUs)
    with torch.inference_mode():
        direct = minilm.encode_docs(texts).numpy()
    np.testing.assert_allclose(emb, direct, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # normalize read from the folder
    np.testing.assert_array_equal(emb, encode_texts(minilm, texts, batch_size=4, precision="fp32"))  # deterministic
    with pytest.raises(ValueError, match="no texts"):
        encode_texts(minilm, [])


def test_score_pairs_bi_encoder_fast_path_equals_predict(minilm, minilm_path, sample_rows):
    q = [r["query"] for r in sample_rows] * 2
    p = [r["passage"] for r in sample_rows] + [r["passage"] for r in reversed(sample_rows)]
    np.testing.assert_allclose(score_pairs(minilm, q, p, batch_size=4, precision="fp32"),
                               minilm.predict(q, p, batch_size=4).numpy(), atol=1e-5)
    torch.manual_seed(0)
    cat = BertCat.from_backbone(minilm_path, max_passage_length=64).eval()
    np.testing.assert_allclose(score_pairs(cat, q, p, batch_size=4, precision="fp32"),
                               cat.predict(q, p, batch_size=4).numpy(), atol=1e-6)


def test_rerank_cross_encoder_and_colbert_on_real_candidates(minilm_path, shared_data):
    run = read_trec_run(DL19 / "runs" / "BM25.top100.trec")
    qrels = read_qrels(DL19 / "qrels" / "test.tsv")
    from kd.data import load_passages, load_queries

    queries, passages = load_queries(DL19 / "queries.jsonl"), load_passages(DL19 / "corpus.jsonl", show_progress=False)
    qids = sorted(run)[:2]
    cands = top_candidates(run, qids, 5)
    assert all(len(v) == 5 for v in cands.values())
    torch.manual_seed(0)
    for model in (ColBERT.from_backbone(minilm_path, dim=32, max_passage_length=64),
                  BertCat.from_backbone(minilm_path, max_passage_length=64)):
        new = rerank(model.eval(), cands, queries, passages, batch_size=8, precision="fp32")
        assert {q: set(v) for q, v in new.items()} == {q: set(v) for q, v in cands.items()}
        direct = model.predict([queries[qids[0]]], [passages[cands[qids[0]][0]]])
        assert new[qids[0]][cands[qids[0]][0]] == pytest.approx(float(direct[0]), abs=1e-5)
    assert set(qids) <= set(qrels)


def test_dense_in_process_equals_any_actor_split_and_writes_trec(tmp_path, mini_beir, minilm_path):
    spec = {"name": "minilm", "path": minilm_path, "options": SHORT}
    cfg = _cfg(tmp_path, models=[spec], relevance_level=1,
               tasks=[{"task": "dense", "name": "mini", "beir": str(mini_beir), "top_k": 20}])
    (local,) = run_all(cfg)
    assert local.metrics["ndcg@10"] > 0.5 and local.info["n_queries"] == 12 and local.info["n_docs"] >= 60
    assert local.info["pieces"] == local.info["shards"] == 1  # 60 documents < compute.shard_size
    assert not (tmp_path / "out" / "_embeddings").exists()  # the shards are removed at the end of the job
    trec = Path(local.files["run"]).read_text()

    # a corpus encoder that runs the same plan like two actors would: interleaved batches, pieces out of order
    calls = []

    def two_actors(dspec, model, docids, texts, folder):
        from kd.evaluation import encode_batch, load_spec

        m = load_spec(dspec)
        plan = plan_batches(texts, cfg.compute.batch_size)
        for b in [*range(1, len(plan), 2), *range(0, len(plan), 2)][::-1]:
            write_piece(folder, f"{b:09d}", plan[b], encode_batch(m, [texts[i] for i in plan[b]]))
        calls.append(len(plan))

    cfg2 = _cfg(tmp_path / "b", models=[spec], tasks=cfg.model_dump()["tasks"])
    (split,) = run_all(cfg2, TaskRunner(cfg2, corpus_encoder=two_actors))
    assert calls and split.metrics == local.metrics
    assert Path(split.files["run"]).read_text() == trec


def test_dense_with_a_different_document_encoder(tmp_path, mini_beir, minilm_path):
    """Seed 003: a 2-layer query encoder over the 6-layer teacher's index; the documents are the teacher's."""
    cfg = _cfg(tmp_path, models=[
        {"name": "teacher", "path": minilm_path, "options": SHORT},
        {"name": "qenc", "path": minilm_path, "options": SHORT, "layers": [0, 5], "doc_path": minilm_path,
         "doc_options": SHORT},
        {"name": "bad", "path": minilm_path, "options": {**SHORT, "projection_dim": 16}, "doc_path": minilm_path,
         "doc_options": SHORT},
    ], tasks=[{"task": "dense", "name": "mini", "beir": str(mini_beir), "top_k": 20}])
    runner = TaskRunner(cfg)
    teacher = runner.run_task(cfg.tasks[0], cfg.models[0])[0]
    docs_encoded = []
    runner.corpus_encoder = lambda *a: docs_encoded.append(1)  # the teacher's index is cached: not called again
    qenc = runner.run_task(cfg.tasks[0], cfg.models[1])[0]
    assert not docs_encoded
    assert qenc.info["doc_encoder"] == minilm_path and qenc.metrics["ndcg@10"] != teacher.metrics["ndcg@10"]
    with pytest.raises(EvaluationError, match="16 dimensions but the document index 384"):
        runner.run_task(cfg.tasks[0], cfg.models[2])


def test_document_task_aggregates_passage_scores(tmp_path, mini_beir, minilm_path):
    cfg = _cfg(tmp_path, models=[{"name": "m", "path": minilm_path, "options": SHORT}],
               tasks=[{"task": "document", "name": "doc", "beir": str(mini_beir), "top_k": 5, "window": 40,
                       "stride": 20, "aggregations": ["maxp", "firstp", "sump", "avgp", "top2"]}])
    results = run_all(cfg)
    by = {r.dataset: r for r in results}
    assert set(by) == {"doc-maxp", "doc-firstp", "doc-sump", "doc-avgp", "doc-top2"}
    info = by["doc-maxp"].info
    assert info["passages_per_document"] > 1.5 and info["window_words"] == 40 and info["first_stage"].startswith("BM25")
    runs = {k: read_trec_run(v.files["run"]) for k, v in by.items()}
    q = sorted(runs["doc-maxp"])[0]
    for d in runs["doc-maxp"][q]:
        mx, first, s, avg, top2 = (runs[f"doc-{a}"][q][d] for a in ("maxp", "firstp", "sump", "avgp", "top2"))
        assert mx >= top2 - 1e-6 and top2 >= avg - 1e-6 and mx >= first - 1e-6
        n = s / avg  # SumP = AvgP x the number of passages
        assert round(n) >= 1 and abs(n - round(n)) < 1e-3


def test_efficiency_numbers_for_6_and_2_layers(minilm, sample_rows):
    from kd.init import layer_subset_student

    q = [r["query"] for r in sample_rows]
    pairs = [(r["query"], r["passage"]) for r in sample_rows]
    out = {}
    for name, model in (("6L", minilm), ("2L", layer_subset_student(minilm, "top-bottom", 2))):
        out[name] = measure_efficiency(model, q, pairs, batch_sizes=[1, 4], warmup=1, repeats=3, rerank_depth=10)
    m = out["6L"]
    parts = (("query_encode", ("qps", "p50_ms", "p95_ms")), ("rerank", ("qps", "pairs_per_s", "p50_ms", "p95_ms")))
    assert set(m) == {f"eff_{p}_bs{b}_{k}" for b in (1, 4) for p, ks in parts for k in ks}
    assert m["eff_rerank_bs4_qps"] == pytest.approx(m["eff_rerank_bs4_pairs_per_s"] / 10)
    assert all(m[f"eff_query_encode_bs{b}_p50_ms"] <= m[f"eff_query_encode_bs{b}_p95_ms"] for b in (1, 4))
    assert out["2L"]["eff_rerank_bs4_pairs_per_s"] > out["6L"]["eff_rerank_bs4_pairs_per_s"]


def test_evaluate_model_helper_for_other_jobs(tmp_path, minilm_path, shared_data):
    """What the distill / sweep jobs call after training: one model, task dicts, no Ray needed for re-ranking."""
    from kd.data import write_trec_run
    from kd.runtime.evaluation import evaluate_model

    run = read_trec_run(DL19 / "runs" / "BM25.top100.trec")
    small = {q: dict(list(run[q].items())[:3]) for q in sorted(run)[:2]}
    write_trec_run(tmp_path / "small.trec", small, tag="bm25")
    (res,) = evaluate_model(minilm_path, [_dl19_rerank_task(run=str(tmp_path / "small.trec"), top_k=3)],
                            name="student", output_dir=str(tmp_path / "out"), mlflow={"enabled": False},
                            options=SHORT)
    assert res.model == "student" and res.info["pairs"] == 6 and res.info["n_queries"] == 43
    assert set(read_trec_run(res.files["run"])) == set(small)


# ------------------------------------------------------------------------------------------------ inputs read once
def test_preflight_reads_each_file_once_and_the_tasks_use_what_it_prepared(tmp_path, minilm_path, shared_data,
                                                                            monkeypatch):
    """A run, qrels, queries and corpus shared by a run, a rerank and an efficiency task: each file is read once per
    job, by preflight; the tasks (run_all) read none again and score exactly the candidates preflight checked."""
    import kd.data
    from kd.data import write_trec_run
    from kd.evaluation import EfficiencyInputs, RerankInputs, RunInputs

    run = read_trec_run(DL19 / "runs" / "BM25.top100.trec")
    small = {q: dict(list(run[q].items())[:3]) for q in sorted(run)[:2]}
    write_trec_run(tmp_path / "small.trec", small, tag="bm25")
    reads: list[str] = []
    for name in ("read_trec_run", "read_qrels", "load_queries", "load_passages", "load_beir"):
        real = getattr(kd.data, name)
        monkeypatch.setattr(kd.data, name, lambda *a, _r=real, _n=name, **k: reads.append(_n) or _r(*a, **k))
    rerank_task = _dl19_rerank_task(run=str(tmp_path / "small.trec"), top_k=2)
    cfg = _cfg(tmp_path, models=[{"name": "m", "path": minilm_path, "options": SHORT}], tasks=[
        {"task": "run", "name": "bm25", "run": rerank_task["run"], "qrels": rerank_task["qrels"]},
        rerank_task,
        {"task": "efficiency", "name": "eff", "queries": rerank_task["queries"], "passages": rerank_task["corpus"],
         "run": rerank_task["run"], "rerank_depth": 3, "batch_sizes": [2], "warmup": 0, "repeats": 1},
    ])
    runner = TaskRunner(cfg)
    prepared = runner.preflight()
    assert sorted(reads) == ["load_passages", "load_queries", "read_qrels", "read_trec_run"]
    assert isinstance(prepared["bm25"], RunInputs) and prepared["bm25"].run == small
    assert isinstance(prepared["dl19"], RerankInputs)
    assert prepared["dl19"].candidates == top_candidates(small, sorted(small), 2)
    assert isinstance(prepared["eff"], EfficiencyInputs) and len(prepared["eff"].pairs) == 6
    results = run_all(cfg, runner)
    assert len(reads) == 4, f"the tasks read files again: {reads[4:]}"
    by = {r.dataset: r for r in results}
    assert by["dl19"].info["pairs"] == 4 and set(read_trec_run(by["dl19"].files["run"])) == set(small)
    assert by["bm25"].info["n_queries"] == 43 and by["eff"].metrics["eff_rerank_bs2_pairs_per_s"] > 0


def test_runtime_corpus_encoder_local_path_is_the_runners(tmp_path, minilm_path, sample_rows, shared_data):
    """kd.runtime.evaluation.CorpusEncoder encodes small corpora through the runner's own in-process encoder
    (LocalCorpusEncoder): same embeddings as encode_texts with the compute settings, from a given or a loaded model."""
    from kd.evaluation import LocalCorpusEncoder, load_spec
    from kd.runtime.evaluation import CorpusEncoder

    spec = {"name": "minilm", "path": minilm_path, "options": SHORT}
    cfg = _cfg(tmp_path, models=[spec], compute={"backend": "local", "batch_size": 4, "precision": "fp32"},
               tasks=[_dl19_rerank_task()])
    texts = [r["passage"] for r in sample_rows][:9]
    docids = [f"d{i}" for i in range(len(texts))]
    assert isinstance(TaskRunner(cfg).corpus_encoder, LocalCorpusEncoder)
    ray_or_local = CorpusEncoder(cfg)
    assert isinstance(ray_or_local, LocalCorpusEncoder) and not ray_or_local.use_ray(len(texts))
    model = load_spec(spec)
    expected = encode_texts(model, texts, batch_size=4, precision="fp32")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ray_or_local(spec, model, docids, texts, tmp_path / "a")
    np.testing.assert_array_equal(ShardSet.open(tmp_path / "a", len(texts)).load_all(), expected)
    assert ray_or_local.last_backend == "local"
    LocalCorpusEncoder(cfg)(spec, None, docids, texts, tmp_path / "b")  # loads the spec
    np.testing.assert_array_equal(ShardSet.open(tmp_path / "b", len(texts)).load_all(), expected)
