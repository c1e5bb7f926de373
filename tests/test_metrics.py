"""kd.metrics: reference figures on real TREC DL'19 runs, MRR cutoff, ties, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import kd.data as D
from kd.metrics import evaluate, format_results, parse_metric

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real IR data not found at {DATA} (expected ../shared/data beside the repo root)"
)

# nDCG@10 with the official qrels, from shared/data/README.md
DL19_NDCG10 = {
    "BM25": 0.5058,
    "BM25_RM3": 0.5216,
    "D_BERT_KD_TASB": 0.7210,
    "SPLADE_P_P_ENSEMBLE_DISTIL": 0.7308,
    "OPEN_AI_ADA2": 0.7035,
}


@pytest.fixture(scope="module")
def dl19_qrels():
    return D.read_qrels(DATA / "trec-dl-2019" / "qrels" / "test.tsv")


@needs_data
@pytest.mark.parametrize("system", sorted(DL19_NDCG10))
def test_dl19_runs_match_reference_ndcg10(dl19_qrels, system):
    run = D.read_trec_run(DATA / "trec-dl-2019" / "runs" / f"{system}.top100.trec")
    res = evaluate(run, dl19_qrels, relevance_level=2)
    assert res["ndcg@10"] == pytest.approx(DL19_NDCG10[system], abs=5e-4)
    assert res.n_queries == 43 and res.missing_queries == [] and res.ignored_queries == 0
    assert set(res) == {"ndcg@10", "mrr@10", "recall@100", "recall@1000", "map"}
    # top-100 runs: recall@1000 == recall@100
    assert res["recall@1000"] == pytest.approx(res["recall@100"])


@needs_data
def test_dl19_bm25_binary_measures_and_relevance_level(dl19_qrels):
    run = D.read_trec_run(DATA / "trec-dl-2019" / "runs" / "BM25.top100.trec")
    r2 = evaluate(run, dl19_qrels, relevance_level=2)
    r1 = evaluate(run, dl19_qrels, relevance_level=1)
    assert r2["ndcg@10"] == r1["ndcg@10"]  # graded: relevance_level does not apply
    assert r2["mrr@10"] == pytest.approx(0.7024, abs=1e-4)
    assert r2["recall@100"] == pytest.approx(0.4910, abs=1e-4)
    assert r1["recall@100"] != r2["recall@100"] and r1["map"] != r2["map"]
    # MRR@10 really is cut at 10: pytrec_eval's uncut recip_rank is higher here
    assert evaluate(run, dl19_qrels, ["mrr"], 2)["mrr"] == pytest.approx(0.7036, abs=1e-4)


@needs_data
def test_mrr_at_10_equals_recip_rank_of_truncated_run_with_ties(dl19_qrels):
    """SPLADE++ has tied scores: our MRR@10 must agree with pytrec_eval on the same ranking."""
    run = D.read_trec_run(DATA / "trec-dl-2019" / "runs" / "SPLADE_P_P_ENSEMBLE_DISTIL.top100.trec")
    truncated = {q: dict(D.ranked(docs, 10)) for q, docs in run.items()}
    ours = evaluate(run, dl19_qrels, ["mrr@10"], 2, per_query=True)
    theirs = evaluate(truncated, dl19_qrels, ["mrr"], 2, per_query=True)
    for q in ours.per_query:
        assert ours.per_query[q]["mrr@10"] == pytest.approx(theirs.per_query[q]["mrr"], abs=1e-12)


def test_mrr_cutoff_and_tie_rule():
    qrels = {"q": {"d11": 1}}
    run = {"q": {f"d{i:02d}": 100.0 - i for i in range(1, 20)}}  # relevant doc at rank 11
    res = evaluate(run, qrels, ["mrr@10", "mrr", "mrr@11"])
    assert res["mrr@10"] == 0.0 and res["mrr"] == pytest.approx(1 / 11) and res["mrr@11"] == pytest.approx(1 / 11)
    # ties: score desc, then docid descending (trec_eval's rule), whatever the dict order
    for docs in ({"a": 1.0, "b": 1.0}, {"b": 1.0, "a": 1.0}):
        r = evaluate({"q": docs}, {"q": {"a": 1}}, ["mrr@10", "ndcg@10"])
        assert r["mrr@10"] == 0.5
        assert r["ndcg@10"] == pytest.approx(evaluate({"q": {"b": 2.0, "a": 1.0}}, {"q": {"a": 1}}, ["ndcg@10"])["ndcg@10"])


def test_graded_ndcg_binary_recall_and_per_query():
    qrels = {"q1": {"a": 3, "b": 1, "c": 0}, "q2": {"x": 2}}
    run = {"q1": {"b": 3.0, "a": 2.0, "c": 1.0}, "q2": {"y": 1.0, "x": 0.5}, "q3": {"z": 1.0}}
    res = evaluate(run, qrels, ["ndcg@10", "recall@1", "p@2", "map", "mrr@10"], relevance_level=2, per_query=True)
    import math

    dcg = 1 / math.log2(2) + 3 / math.log2(3)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert res.per_query["q1"]["ndcg@10"] == pytest.approx(dcg / idcg)
    assert res.per_query["q1"]["recall@1"] == 0.0  # "b" (grade 1) is not relevant at level 2
    assert res.per_query["q1"]["mrr@10"] == 0.5 and res.per_query["q2"]["mrr@10"] == 0.5
    assert res["p@2"] == pytest.approx(0.5)
    assert res.ignored_queries == 1 and res.n_queries == 2
    assert "ndcg@10=" in format_results(res)


def test_missing_queries_policy():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    run = {"q1": {"a": 1.0}}
    assert evaluate(run, qrels, ["ndcg@10"])["ndcg@10"] == 0.5  # q2 scores 0 (trec_eval -c)
    skip = evaluate(run, qrels, ["ndcg@10"], missing="skip")
    assert skip["ndcg@10"] == 1.0 and skip.missing_queries == ["q2"]
    with pytest.raises(ValueError, match="no run entry"):
        evaluate(run, qrels, ["ndcg@10"], missing="error")


def test_clear_errors():
    qrels = {"q1": {"a": 1}}
    with pytest.raises(ValueError, match="run is empty"):
        evaluate({}, qrels)
    with pytest.raises(ValueError, match="run is empty"):
        evaluate({"q1": {}}, qrels)
    with pytest.raises(ValueError, match="share no query ids"):
        evaluate({"other": {"a": 1.0}}, qrels)
    with pytest.raises(ValueError, match="qrels are empty"):
        evaluate({"q1": {"a": 1.0}}, {})
    with pytest.raises(ValueError, match="non-finite"):
        evaluate({"q1": {"a": float("nan")}}, qrels)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate({"q1": {"a": 1.0}}, qrels, ["bleu"])
    with pytest.raises(ValueError, match="needs a cutoff"):
        parse_metric("recall")
    assert parse_metric("NDCG@10").name == "ndcg@10" and parse_metric("precision@5").name == "p@5"
