"""kd.data.bm25 on BEIR SciFact (reference numbers) and kd.data.mining determinism."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

import kd.data as D
from kd.metrics import evaluate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(), reason=f"real IR data not found at {DATA} (expected ../shared/data beside the repo root)"
)
SCIFACT = DATA / "beir" / "scifact"


@pytest.fixture(scope="module")
def scifact():
    return D.load_beir(SCIFACT, "test")


@pytest.fixture(scope="module")
def scifact_bm25(tmp_path_factory, scifact):
    out = tmp_path_factory.mktemp("bm25") / "scifact.bm25.trec"
    run = D.bm25_beir(SCIFACT, "test", out_path=out, top_k=1000, show_progress=False)
    return run, out


@pytest.fixture(scope="module")
def dl19():
    run = D.read_trec_run(DATA / "trec-dl-2019" / "runs" / "BM25.top100.trec")
    qrels = D.read_qrels(DATA / "trec-dl-2019" / "qrels" / "test.tsv")
    return run, qrels


# ------------------------------------------------------------------------------------------
# BM25
# ------------------------------------------------------------------------------------------


@needs_data
def test_bm25_scifact_reference_numbers(scifact, scifact_bm25):
    run, out = scifact_bm25
    res = evaluate(run, scifact.qrels, ["ndcg@10", "recall@100"])
    print(f"BM25 SciFact test: nDCG@10={res['ndcg@10']:.4f} Recall@100={res['recall@100']:.4f}")
    assert res["ndcg@10"] == pytest.approx(0.686, abs=0.005)
    assert res["recall@100"] == pytest.approx(0.913, abs=0.005)
    assert res.n_queries == 300 and not res.missing_queries
    # the TREC run file written alongside evaluates identically
    back = D.read_trec_run(out)
    assert set(back) == set(run) and all(len(v) <= 1000 for v in back.values())
    assert evaluate(back, scifact.qrels, ["ndcg@10", "recall@100"]) == res


@needs_data
def test_bm25_index_options(scifact):
    queries = dict(list(scifact.judged_queries().items())[:20])
    idx = D.BM25Index(scifact.corpus, show_progress=False)
    assert len(idx) == 5183
    run = idx.search(queries, top_k=7)
    assert set(run) == set(queries) and all(0 < len(v) <= 7 for v in run.values())
    assert all(s > 0 for v in run.values() for s in v.values())
    # stopword-only / unknown queries get an empty list and are reported
    empty = idx.search({"stop": "the of and", "oov": "zzqqxxy"}, top_k=5)
    assert empty == {"stop": {}, "oov": {}} and idx.last_empty == ["stop", "oov"]
    # body-only indexing is a different index
    no_title = D.bm25_search(scifact.corpus, queries, 7, use_title=False, show_progress=False)
    assert no_title != run
    with pytest.raises(ValueError, match="corpus is empty"):
        D.BM25Index({}, show_progress=False)


# ------------------------------------------------------------------------------------------
# mining
# ------------------------------------------------------------------------------------------


def _shuffled(d: dict, seed: int) -> dict:
    items = list(d.items())
    random.Random(seed).shuffle(items)
    return {k: (_shuffled(v, seed + 1) if isinstance(v, dict) else v) for k, v in items}


@needs_data
def test_mining_dl19_rules_and_determinism(dl19):
    run, qrels = dl19
    res = D.mine_triples(run, qrels, n_negatives=4, top_k=50, threshold=2, seed=13)
    st = res.stats
    assert st.queries == 43 and st.used + st.no_positive + st.not_in_run + st.no_negative == st.queries
    # DL'19 query 168216 has every one of its BM25 top-50 judged >= 2: no negative, reported
    assert st.no_negative_ids == ["168216"] and st.no_positive == st.not_in_run == 0
    n_pos = sum(1 for q in qrels if q != "168216" for g in qrels[q].values() if g >= 2)
    assert len(res) == st.records == 4 * n_pos
    for qid, pos, neg in res:
        assert qrels[qid][pos] >= 2
        assert qrels[qid].get(neg, 0) < 2
        assert neg in dict(D.ranked(run[qid], 50))
    # the 4 negatives of one positive are distinct
    per_pos: dict = {}
    for t in res:
        per_pos.setdefault((t.qid, t.pos_pid), []).append(t.neg_pid)
    assert all(len(set(v)) == len(v) == 4 for v in per_pos.values())

    same = D.mine_triples(_shuffled(run, 1), _shuffled(qrels, 2), n_negatives=4, top_k=50, threshold=2, seed=13)
    assert same.triples == res.triples  # independent of dict ordering
    other = D.mine_triples(run, qrels, n_negatives=4, top_k=50, threshold=2, seed=14)
    assert other.triples != res.triples and len(other) == len(res)
    # a query's negatives do not depend on which other queries are present
    q0 = sorted(run)[0]
    alone = D.mine_triples({q0: run[q0]}, {q0: qrels[q0]}, n_negatives=4, top_k=50, threshold=2, seed=13)
    assert alone.triples == [t for t in res if t.qid == q0]


def test_mining_counts_unusable_queries(caplog):
    run = {
        "ok": {"p": 3.0, "n1": 2.0, "n2": 1.0},
        "nopos": {"a": 1.0, "b": 0.5},  # judged, but nothing >= threshold
        "unjudged": {"a": 1.0},  # no qrels at all
        "allrel": {"p": 2.0, "p2": 1.0},  # every candidate is relevant
    }
    qrels = {
        "ok": {"p": 1, "n1": 0},
        "nopos": {"a": 0},
        "allrel": {"p": 1, "p2": 2},
        "notinrun": {"x": 1},
    }
    res = D.mine_triples(run, qrels, n_negatives=3, seed=0)
    st = res.stats
    assert (st.queries, st.used, st.no_positive, st.not_in_run, st.no_negative) == (5, 1, 2, 1, 1)
    assert st.no_positive_ids == ["nopos", "unjudged"] and st.not_in_run_ids == ["notinrun"]
    assert st.no_negative_ids == ["allrel"] and st.short_of_negatives == 1
    assert sorted(res.triples) == [("ok", "p", "n1"), ("ok", "p", "n2")]  # judged-0 n1 is a valid negative
    assert any("without a positive" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="run is empty"):
        D.mine_triples({}, qrels)
    with pytest.raises(ValueError, match="n_negatives"):
        D.mine_triples(run, qrels, n_negatives=0)


@needs_data
def test_candidate_lists_dl19(dl19):
    run, qrels = dl19
    res = D.candidate_lists(run, qrels, top_k=20, threshold=2)
    assert res.stats.used == len(res) == 43
    for cl in res:
        positives = sorted(d for d, g in qrels[cl.qid].items() if g >= 2)
        assert cl.docids[: len(positives)] == positives
        assert len(cl.docids) == len(set(cl.docids)) <= len(positives) + 20
        top = [d for d, _ in D.ranked(run[cl.qid], 20)]
        assert [d for d in cl.docids if d not in positives] == [d for d in top if d not in positives]
        assert cl.labels == [qrels[cl.qid].get(d, 0) for d in cl.docids]
    plain = D.candidate_lists(run, qrels, top_k=20, include_positives=False)
    assert all(len(cl.docids) == 20 for cl in plain)


@needs_data
def test_mine_from_bm25_and_join_text(tmp_path, scifact, scifact_bm25):
    """End to end: SciFact BM25 run -> triples file -> joined text."""
    run, _ = scifact_bm25
    res = D.mine_triples(run, scifact.qrels, n_negatives=2, top_k=100, seed=0)
    assert res.stats.used > 290 and res.stats.no_positive == 0
    path = tmp_path / "triples.tsv"
    D.write_triples(path, res.triples)
    stats = D.JoinStats()
    joined = list(D.join_triples(path, scifact.queries, scifact.corpus, stats=stats))
    assert len(joined) == len(res) == stats.joined and stats.missing_passage == 0
    j = joined[0]
    assert j.query == scifact.queries[j.qid]
    assert j.pos == D.doc_text(scifact.corpus[j.pos_pid])
