"""A teacher-ensemble folder (kd_ensemble.json) evaluated like any model: real bm25s statistics over the quickstart's
SciFact corpus + the real all-MiniLM-L6-v2 bi-encoder, combined by z-score, on a few SciFact test claims × top-10."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kd
from kd.data import load_passages, load_queries, read_trec_run, write_trec_run
from kd.configs.evaluate import EvalConfig
from kd.eval_models import ENSEMBLE_FILE, ensemble_inputs, model_info, saved_architecture
from kd.evaluation import load_ranker, result_key, top_candidates

QS = Path(kd.__file__).resolve().parent / "resources" / "quickstart" / "scifact"
CORPUS = QS / "corpus.jsonl.gz"
QUERIES = QS / "queries.jsonl"
N_QUERIES, TOP_K = 3, 10


def _specs(minilm_path: str, corpus: Path = CORPUS) -> list[dict]:
    from kd.configs.score_teachers import TeacherSpec

    return [TeacherSpec(name="bm25", kind="bm25", path=None, corpus=str(corpus)).model_dump(),
            TeacherSpec(name="minilm", kind="bi", path=minilm_path).model_dump()]


def _small_run(path: Path, source: Path, n: int = N_QUERIES) -> Path:
    run = read_trec_run(source)
    write_trec_run(path, {q: run[q] for q in sorted(run)[:n]}, tag="bm25", k=TOP_K)
    return path


def _pairs(run_file: Path) -> tuple[list[str], list[str]]:
    """The (query, passage) texts of a run's top-10 in the order the rerank task scores them."""
    run = read_trec_run(run_file)
    queries, passages = load_queries(QUERIES), load_passages(CORPUS, show_progress=False)
    cands = top_candidates(run, sorted(run), TOP_K)
    pairs = [(q, d) for q, docs in cands.items() for d in docs]
    return [queries[q] for q, _ in pairs], [passages[d] for _, d in pairs]


@pytest.fixture(scope="module")
def ensemble_folder(tmp_path_factory, minilm_path) -> Path:
    """What jobs.score_teachers writes: members + a z-score combination fitted on the scored set (train pairs)."""
    from kd.teachers import Combination, TeacherEnsemble, load_member, save_ensemble

    root = tmp_path_factory.mktemp("ensemble")
    specs = _specs(minilm_path)
    members = [load_member(s) for s in specs]
    q, p = _pairs(_small_run(root / "train.trec", QS / "runs" / "bm25.train.trec"))
    names = [s["name"] for s in specs]
    scores = TeacherEnsemble(members, names).predict_members(q, p, batch_size=16)
    comb = Combination.fit("zscore", names, scores.numpy())
    save_ensemble(root / "ensemble", specs, comb)
    return root / "ensemble"


def _rerank(run_file: Path) -> dict:
    return {"task": "rerank", "name": "scifact-test", "run": str(run_file), "queries": str(QUERIES),
            "corpus": str(CORPUS), "qrels": str(QS / "qrels" / "test.tsv"), "top_k": TOP_K, "relevance_level": 1}


def _cfg(tmp_path: Path, folder: Path, run_file: Path, **fields) -> EvalConfig:
    base = {"output_dir": str(tmp_path / "out"), "show_progress": False, "mlflow": {"enabled": False},
            "compute": {"backend": "local", "batch_size": 16, "precision": "fp32"},
            "models": [{"name": "teacher", "path": str(folder)}], "tasks": [_rerank(run_file)]}
    base.update(fields)
    return EvalConfig.model_validate(base)


def test_folder_is_recognised_without_loading_and_loads_as_the_ensemble(ensemble_folder):
    import kd.teachers as teachers

    assert ENSEMBLE_FILE == teachers.ENSEMBLE_FILE  # kd.eval_models spells it torch-free
    assert saved_architecture(ensemble_folder) == "ensemble" and teachers.is_ensemble_folder(ensemble_folder)
    assert saved_architecture(ensemble_folder.parent) is None
    assert str(CORPUS) in ensemble_inputs(ensemble_folder)  # what its scores depend on besides the file itself
    model = load_ranker(ensemble_folder)
    assert isinstance(model, teachers.TeacherEnsemble) and not model.training
    assert model.architecture == "ensemble" and not model.dual_encoder
    info = model_info(model)
    assert info["members"] == ["bm25", "minilm"] and info["combination"] == "zscore"
    assert info["num_layers"] == 6  # the largest member's (MiniLM; BM25 has none)
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) > 20_000_000
    with pytest.raises(ValueError, match="teacher ensemble.*layer subset"):
        load_ranker(ensemble_folder, layers=[0, 5])


def test_bm25_only_ensemble_reports_no_layers_and_ignores_bf16_autocast(tmp_path):
    from kd.evaluation import score_pairs
    from kd.teachers import BM25Member, TeacherEnsemble

    ens = TeacherEnsemble([BM25Member.from_corpus(CORPUS)], ["bm25"])
    assert model_info(ens)["num_layers"] is None and model_info(ens)["parameters"] == 0
    q, p = _pairs(_small_run(tmp_path / "r.trec", QS / "runs" / "bm25.test.trec", n=2))
    fp32 = score_pairs(ens, q, p, precision="fp32")
    assert fp32.max() > 5  # raw BM25 scale (mean combination of one member)
    np.testing.assert_array_equal(score_pairs(ens, q, p, precision="bf16"), fp32)  # lexical: autocast changes nothing


def test_rerank_and_efficiency_through_evaluate_equal_predict_and_name_the_ensemble(tmp_path, ensemble_folder):
    """jobs.evaluate's path (kd.runtime.evaluation.evaluate, MLflow on a sqlite store): the run's scores are
    TeacherEnsemble.predict's for the same pairs; efficiency re-ranks with every member and skips query encoding."""
    import mlflow

    from kd.runtime.evaluation import evaluate
    from kd.teachers import load_ensemble

    run_file = _small_run(tmp_path / "test.trec", QS / "runs" / "bm25.test.trec")
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    eff_task = {"task": "efficiency", "name": "eff", "queries": str(QUERIES), "passages": str(CORPUS),
                "run": str(run_file), "batch_sizes": [4], "warmup": 1, "repeats": 2, "rerank_depth": TOP_K}
    cfg = _cfg(tmp_path, ensemble_folder, run_file, mlflow={"tracking_uri": db, "experiment": "ens"},
               tasks=[_rerank(run_file), eff_task])
    results = {r.task: r for r in evaluate(cfg)}

    rr = results["rerank"]
    assert rr.info["architecture"] == "ensemble" and rr.info["members"] == ["bm25", "minilm"]
    assert rr.info["combination"] == "zscore" and rr.info["pairs"] == N_QUERIES * TOP_K
    run = read_trec_run(rr.files["run"])
    q, p = _pairs(run_file)
    expected = load_ensemble(ensemble_folder).predict(q, p, batch_size=16).numpy()
    cands = top_candidates(read_trec_run(run_file), sorted(read_trec_run(run_file)), TOP_K)
    got = np.array([run[qid][d] for qid, docs in cands.items() for d in docs], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert np.ptp(expected) > 0.5 and 0.0 < rr.metrics["ndcg@10"] <= 1.0

    eff = results["efficiency"]
    assert eff.metrics["eff_rerank_bs4_qps"] > 0 and not any(k.startswith("eff_query_encode") for k in eff.metrics)
    assert eff.info["architecture"] == "ensemble" and eff.info["num_layers"] == 6
    assert eff.info["parameters"] > 20_000_000 and eff.info["members"] == ["bm25", "minilm"]

    mlflow.set_tracking_uri(db)
    logged = {r.data.tags["kd.task"]: r.data.params for r in mlflow.search_runs(experiment_names=["ens"],
                                                                                  output_format="list")}
    for task in ("rerank", "efficiency"):
        assert logged[task]["info.architecture"] == "ensemble"
        assert logged[task]["info.members"] == "bm25,minilm" and logged[task]["info.combination"] == "zscore"


def test_dense_task_with_an_ensemble_fails_at_validation_naming_the_model(tmp_path, ensemble_folder, shared_data,
                                                                       minilm_path):
    beir = shared_data / "beir" / "scifact"
    dense = [{"task": "dense", "name": "scifact-dense", "beir": str(beir)}]
    with pytest.raises(ValueError, match="field models.0.path: model 'teacher' cannot run the dense task "
                                         "'scifact-dense'.*teacher ensemble.*rerank task"):
        _cfg(tmp_path, ensemble_folder, tmp_path, tasks=dense)
    with pytest.raises(ValueError, match="field models.0.doc_path: model 'teacher'.*teacher ensemble"):
        _cfg(tmp_path, ensemble_folder, tmp_path, tasks=dense,
             models=[{"name": "teacher", "path": minilm_path, "doc_path": str(ensemble_folder)}])
    with pytest.raises(ValueError, match="field layers: .*teacher ensemble"):
        _cfg(tmp_path, ensemble_folder, _small_run(tmp_path / "r.trec", QS / "runs" / "bm25.test.trec"),
             models=[{"name": "teacher", "path": str(ensemble_folder), "layers": [0, 5]}])


def test_result_key_follows_the_members_inputs(tmp_path, minilm_path):
    """A changed BM25 corpus (or retrained member folder) is not served from an earlier results.json."""
    from kd.teachers import Combination, save_ensemble

    corpus = tmp_path / "corpus.jsonl.gz"
    corpus.write_bytes(CORPUS.read_bytes())
    folder = save_ensemble(tmp_path / "ens", _specs(minilm_path, corpus),
                           Combination.fit("mean", ["bm25", "minilm"], np.array([[1.0, 2.0], [0.1, 0.3]])))
    folder = folder if folder.is_dir() else folder.parent
    cfg = _cfg(tmp_path, folder, _small_run(tmp_path / "r.trec", QS / "runs" / "bm25.test.trec"))
    before = result_key(cfg, cfg.tasks[0], cfg.models[0])
    assert result_key(cfg, cfg.tasks[0], cfg.models[0]) == before
    corpus.write_bytes(CORPUS.read_bytes() + b"\n")
    assert result_key(cfg, cfg.tasks[0], cfg.models[0]) != before


def test_kd_load_reranks_with_the_ensemble(ensemble_folder):
    from kd.registry import NotADualEncoder
    from kd.teachers import load_ensemble

    ranker = kd.load(str(ensemble_folder), device="cpu")
    assert ranker.architecture == "ensemble" and not ranker.is_dual_encoder
    passages = load_passages(CORPUS, show_progress=False)
    query = "0-dimensional biomaterials show inductive properties."
    docs = [passages[d] for d in list(passages)[:4]]
    scores = ranker.rerank(query, docs)
    assert scores.shape == (4,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, load_ensemble(ensemble_folder).predict([query] * 4, docs).numpy(), atol=1e-6)
    assert [i for i, _ in ranker.rank(query, docs)] == sorted(range(4), key=lambda i: (-scores[i], i))
    with pytest.raises(NotADualEncoder):
        ranker.encode_queries([query])
