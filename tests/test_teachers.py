"""kd/teachers: BM25 members equal bm25s, combinations (mean / zscore), ensembles and their folders, member checks.

Real parts only: the quickstart's SciFact corpus and claims (kd/resources/quickstart), bm25s through
kd.data.BM25Index, the packaged all-MiniLM-L6-v2 weights.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from kd.data import BM25Index, load_queries, read_beir_corpus
from kd.data.formats import doc_text
from kd.teachers import (
    BM25Member,
    Combination,
    TeacherEnsemble,
    check_member,
    is_ensemble_folder,
    load_ensemble,
    load_member,
    save_ensemble,
    sha256_file,
)

QS = Path(__file__).resolve().parents[1] / "kd" / "resources" / "quickstart" / "scifact"
CORPUS = QS / "corpus.jsonl.gz"


@pytest.fixture(scope="module")
def corpus() -> dict:
    return read_beir_corpus(CORPUS)


@pytest.fixture(scope="module")
def bm25(corpus) -> BM25Member:
    return BM25Member.from_corpus(CORPUS)


@pytest.fixture(scope="module")
def index(corpus) -> BM25Index:
    return BM25Index(corpus, show_progress=False)  # the project's bm25s first stage, its own settings


def _bm25s_scores(index: BM25Index, query: str) -> np.ndarray:
    """bm25s' own score of every corpus document for `query` (its tokenizer, its index)."""
    import bm25s

    tokens = bm25s.tokenize([query], lower=True, stopwords=index.stopwords, stemmer=index._stemmer,
                            return_ids=False, show_progress=False)[0]
    if not tokens:  # bm25s' retrieve scores an empty query 0 everywhere (get_scores would index tokens[0])
        return np.zeros(len(index), dtype=np.float32)
    return index.retriever.get_scores(tokens)


# ------------------------------------------------------------------------------------------------------------ BM25
def test_bm25_member_equals_bm25s_for_corpus_documents(bm25, index, corpus):
    texts = [doc_text(corpus[d]) for d in index.doc_ids]
    claims = list(load_queries(QS / "queries.jsonl").values())
    queries = claims[::37] + [
        "cancer cancer cancer cells",  # a repeated term
        "vitamin D deficiency vitamin D",
        "zzqxvy cancer",  # a term the corpus lacks, beside one it has
        "zzqxvy qqwwee",  # only terms the corpus lacks
        "the of and what is",  # only stopwords
    ]
    assert len(queries) >= 18
    rng = np.random.default_rng(0)
    compared = nonzero = 0
    for q in queries:
        ref = _bm25s_scores(index, q)
        # every document with a score (the ranked ones) plus 60 random ones, scored as pairs by the member
        docs = np.unique(np.concatenate([np.flatnonzero(ref)[:200], rng.choice(len(texts), 60, replace=False)]))
        ours = bm25.predict([q] * len(docs), [texts[i] for i in docs], batch_size=17).numpy()
        np.testing.assert_allclose(ours, ref[docs], rtol=2e-6, atol=0)  # bm25s is float32 throughout
        assert np.array_equal(ours == 0, ref[docs] == 0)
        compared += len(docs)
        nonzero += int((ref[docs] > 0).sum())
    assert compared > 2000 and nonzero > 1000


def test_bm25_query_terms_count_per_occurrence_and_unknown_terms_add_nothing(bm25, index, corpus):
    texts = [doc_text(corpus[d]) for d in index.doc_ids]
    once, twice = _bm25s_scores(index, "cancer"), _bm25s_scores(index, "cancer cancer")
    d = int(np.argmax(once))
    np.testing.assert_allclose(twice[d], 2 * once[d], rtol=1e-6)  # bm25s sums a repeated term per occurrence
    s1, s2, s3 = bm25.score(["cancer", "cancer cancer", "cancer zzqxvy"], [texts[d]] * 3).tolist()
    assert s1 > 0 and s2 == pytest.approx(2 * s1, rel=1e-6) and s3 == s1


def test_bm25_text_outside_the_corpus_uses_the_corpus_statistics(bm25, index, corpus):
    query = "Vitamin D supplementation reduces fracture risk in elderly women"
    passage = "In elderly women, daily vitamin D supplementation reduced hip fracture risk; vitamin D levels rose."
    texts = [doc_text(corpus[d]) for d in index.doc_ids]
    assert passage not in texts
    # by hand: df and avgdl counted from the corpus's bm25s tokens, the formula of kd/teachers/bm25.py
    doc_tokens = bm25.tokens(texts)
    avgdl = np.mean([len(t) for t in doc_tokens])
    df = Counter(t for toks in doc_tokens for t in set(toks))
    p_tokens, n = bm25.tokens([passage])[0], len(texts)
    tf = Counter(p_tokens)
    expected = 0.0
    for t in bm25.tokens([query])[0]:
        if df[t] and tf[t]:
            idf = np.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            expected += idf * tf[t] / (tf[t] + 1.5 * (1 - 0.75 + 0.75 * len(p_tokens) / avgdl))
    assert expected > 5
    got = bm25.score([query], [passage]).item()
    assert got == pytest.approx(expected, rel=1e-6)
    # a pair's score does not depend on its batch or on the other pairs
    many = bm25.predict([query] * 3 + ["cancer"], [texts[0], passage, texts[1], passage], batch_size=2)
    assert many[1].item() == got
    assert bm25.corpus_digest == sha256_file(CORPUS) and bm25.num_parameters() == 0


# ----------------------------------------------------------------------------------------------------- combination
def _scores(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)  # three members on very different scales, float32 as stored
    return np.stack([rng.normal(20, 8, 500), rng.uniform(-1, 1, 500), rng.normal(0, 3, 500)]).astype(np.float32)


def test_mean_keeps_todays_t2_output_bit_for_bit():
    s = _scores().astype(np.float64)
    comb = Combination.fit("mean", ["a", "b", "c"], s)
    assert comb.means is None and comb.weights == (1.0, 1.0, 1.0)
    assert comb(s).tobytes() == s.mean(0).tobytes()  # the old ensemble's `members.mean(0)`
    two = Combination.fit("mean", ["a", "b"], s[:2])
    assert np.array_equal(two(s[:2]), (s[0] + s[1]) / 2)


def test_zscore_formula_weights_and_determinism():
    s = _scores()
    comb = Combination.fit("zscore", ["bm25", "bi", "cross"], s, weights=[0.5, 1.0, 2.0])
    s64 = s.astype(np.float64)
    mu, sd = s64.mean(1), s64.std(1)
    np.testing.assert_allclose(comb.means, mu, rtol=1e-12)
    np.testing.assert_allclose(comb.stds, sd, rtol=1e-12)
    z = (s64 - mu[:, None]) / sd[:, None]
    expected = (0.5 * z[0] + z[1] + 2 * z[2]) / 3.5
    np.testing.assert_allclose(comb(s), expected, rtol=1e-12, atol=1e-12)
    # deterministic: the same scores → the same fit and identical bytes; torch input gives the same numbers
    again = Combination.fit("zscore", ["bm25", "bi", "cross"], s.copy(), weights=[0.5, 1.0, 2.0])
    assert again == comb and again(s).tobytes() == comb(s).tobytes()
    np.testing.assert_array_equal(comb(torch.from_numpy(s)).numpy(), comb(s))
    # after standardising, the widest member no longer dominates: every member correlates with the result
    equal = Combination.fit("zscore", ["bm25", "bi", "cross"], s)
    assert all(np.corrcoef(row, equal(s))[0, 1] > 0.45 for row in s)
    assert np.corrcoef(s[1], Combination.fit("mean", ["a", "b", "c"], s)(s))[0, 1] < 0.2  # raw: the cosine is lost
    # stored and read back exactly, through JSON
    back = Combination.from_dict(json.loads(json.dumps(comb.to_dict())))
    assert back == comb and back(s).tobytes() == comb(s).tobytes()
    assert comb.params()["combination.cross.std"] == repr(comb.stds[2])


def test_combination_refuses_what_it_cannot_combine():
    s = _scores()
    const = s.copy()
    const[1] = 0.25
    with pytest.raises(ValueError, match="teacher 'bi' gives all 500 scored pairs the same score"):
        Combination.fit("zscore", ["bm25", "bi", "cross"], const)
    Combination.fit("mean", ["bm25", "bi", "cross"], const)  # the raw mean has nothing to divide by
    bad = s.copy()
    bad[2, 7] = np.nan
    with pytest.raises(ValueError, match="teacher 'cross': 1 of its 500 scores are not finite"):
        Combination.fit("mean", ["bm25", "bi", "cross"], bad)
    with pytest.raises(ValueError, match="teacher 'bi': weight must be > 0"):
        Combination.fit("mean", ["bm25", "bi", "cross"], s, weights=[1, 0, 1])
    with pytest.raises(ValueError, match="method must be one of"):
        Combination.fit("max", ["bm25", "bi", "cross"], s)
    with pytest.raises(ValueError, match=r"\[M=2, N>0\]"):
        Combination.fit("mean", ["a", "b"], s)
    with pytest.raises(ValueError, match="unknown keys"):
        Combination.from_dict({**Combination.fit("mean", ["a", "b", "c"], s).to_dict(), "extra": 1})


# -------------------------------------------------------------------------------------------------------- ensemble
@pytest.fixture(scope="module")
def specs(minilm_path) -> list[dict]:
    from kd.configs.score_teachers import TeacherSpec

    return [TeacherSpec(name="bm25", kind="bm25", corpus=str(CORPUS)).model_dump(),
            TeacherSpec(name="minilm", kind="bi", path=minilm_path, weight=2.0).model_dump()]


@pytest.fixture(scope="module")
def pairs(corpus) -> tuple[list[str], list[str]]:
    claims = list(load_queries(QS / "queries.jsonl").values())[:6]
    docs = [doc_text(d) for d in list(corpus.values())[:4]]
    return [q for q in claims for _ in docs], [d for _ in claims for d in docs]


def test_ensemble_of_bm25_and_bi_encoder(specs, pairs):
    members = [load_member(s) for s in specs]
    default = TeacherEnsemble(members, ["bm25", "minilm"])
    assert default.combination.method == "mean" and default.architecture == "ensemble" and not default.dual_encoder
    each = default.predict_members(*pairs, batch_size=5)
    assert each.shape == (2, len(pairs[0])) and each.dtype == torch.float32
    torch.testing.assert_close(each[0], members[0].predict(*pairs))
    torch.testing.assert_close(each[1], members[1].predict(*pairs))
    assert torch.equal(default.predict(*pairs), ((each[0].double() + each[1].double()) / 2).float())
    comb = Combination.fit("zscore", ["bm25", "minilm"], each.numpy(), weights=[1.0, 2.0])
    ens = TeacherEnsemble(members, ["bm25", "minilm"], comb)
    out = ens.predict(*pairs, batch_size=7)
    assert torch.equal(out, torch.from_numpy(comb(each.numpy())).float())
    with torch.no_grad():
        torch.testing.assert_close(ens.score(*pairs), out, atol=1e-4, rtol=1e-4)
    assert ens.num_parameters() == members[1].num_parameters() > 20_000_000
    with pytest.raises(ValueError, match="combination is for members"):
        TeacherEnsemble(members, ["minilm", "bm25"], comb)
    with pytest.raises(ValueError, match="distinct name"):
        TeacherEnsemble(members, ["x", "x"])
    with pytest.raises(ValueError, match="at least one member"):
        TeacherEnsemble([])


def test_ensemble_folder_round_trip_and_a_changed_corpus_is_refused(specs, pairs, tmp_path):
    corpus = tmp_path / "corpus.jsonl.gz"
    shutil.copy(CORPUS, corpus)
    specs = [{**specs[0], "corpus": str(corpus)}, specs[1]]
    members = [load_member(s) for s in specs]
    each = TeacherEnsemble(members, ["bm25", "minilm"]).predict_members(*pairs)
    comb = Combination.fit("zscore", ["bm25", "minilm"], each.numpy(), weights=[1.0, 2.0])
    folder = save_ensemble(tmp_path / "ens", specs, comb)
    assert is_ensemble_folder(folder) and not is_ensemble_folder(tmp_path)
    saved = json.loads((folder / "kd_ensemble.json").read_text())
    assert saved["members"][0]["corpus_sha256"] == sha256_file(corpus)
    assert saved["members"][1]["weight"] == 2.0 and Path(saved["members"][1]["path"]).is_absolute()
    loaded = load_ensemble(folder)
    assert loaded.names == ["bm25", "minilm"] and loaded.combination == comb
    assert torch.equal(loaded.predict(*pairs), TeacherEnsemble(members, ["bm25", "minilm"], comb).predict(*pairs))
    # saving the same ensemble again writes the same bytes
    before = (folder / "kd_ensemble.json").read_bytes()
    save_ensemble(folder, saved["members"], comb)
    assert (folder / "kd_ensemble.json").read_bytes() == before
    # the corpus changed after scoring: its statistics no longer define the stored scores
    corpus.write_bytes(CORPUS.read_bytes()[:-100] + b"x" * 100)
    with pytest.raises(ValueError, match="teacher 'bm25' \\(kind bm25\\): corpus .* changed since the ensemble"):
        load_ensemble(folder)


# ------------------------------------------------------------------------------------------------ member checks
def test_members_that_cannot_score_fail_naming_the_member(minilm_path, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from kd.configs.score_teachers import TeacherSpec
    from kd.models import MODELS, BertCat, BertDot
    from kd.teachers.checks import DUAL_ENCODERS

    AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=1).save_pretrained(tmp_path / "hf")

    cases = [
        ({"name": "lex", "kind": "bm25"}, r"teacher 'lex' \(kind bm25\): BM25 needs a corpus"),
        ({"name": "lex", "kind": "bm25", "corpus": str(tmp_path / "gone.jsonl")},
         r"teacher 'lex' \(kind bm25\): corpus file not found"),
        ({"name": "lex", "kind": "bm25", "corpus": str(CORPUS), "path": minilm_path},
         r"teacher 'lex' \(kind bm25\): path .* is for cross/bi members"),
        ({"name": "minilm", "kind": "cross", "path": minilm_path},
         "teacher 'minilm' \\(kind cross\\): .* is a bi-encoder \\(sentence-transformers folder, no classification "
         "head\\); use kind: bi"),
        ({"name": "minilm", "kind": "cross", "path": "sentence-transformers/all-MiniLM-L6-v2"},
         "teacher 'minilm' \\(kind cross\\): .* is a bi-encoder"),
        ({"name": "dot", "kind": "cross", "path": str(BertDot.from_backbone(minilm_path).save_pretrained(
            tmp_path / "dot"))}, "teacher 'dot' \\(kind cross\\): .* kd bert_dot dual encoder.*use kind: bi"),
        ({"name": "cat", "kind": "bi", "path": str(BertCat.from_backbone(minilm_path).save_pretrained(
            tmp_path / "cat"))}, "teacher 'cat' \\(kind bi\\): .* kd bert_cat model, not a bi-encoder.*kind: cross"),
        ({"name": "hf", "kind": "bi", "path": str(tmp_path / "hf")},
         r"teacher 'hf' \(kind bi\): .* is a cross-encoder \(architectures: \['BertForSequenceClassification'\]\)"),
        ({"name": "x", "kind": "cross"}, "teacher 'x' \\(kind cross\\): path is required"),
    ]
    for spec, message in cases:
        with pytest.raises(ValueError, match=message):
            check_member(spec)
        with pytest.raises(ValidationError, match=message):  # the config refuses it too, naming the member
            TeacherSpec(**spec)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="teacher 'e' \\(kind cross\\): .* holds no model"):
        check_member({"name": "e", "kind": "cross", "path": str(tmp_path / "empty")})
    # a config may name a folder an earlier pipeline stage fills; the scoring driver checks it has a model
    TeacherSpec(name="e", path=str(tmp_path / "empty"))
    check_member({"name": "ok", "kind": "bi", "path": minilm_path})
    check_member({"name": "cat", "kind": "cross", "path": str(tmp_path / "cat")})
    check_member({"name": "hf", "kind": "cross", "path": str(tmp_path / "hf")})
    assert set(DUAL_ENCODERS) == {n for n, cls in MODELS.items() if cls.dual_encoder}
