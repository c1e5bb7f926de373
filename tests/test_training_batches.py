"""Length-grouped training batches (issue 19, training.group_by_length): the grouped micro-batches keep every
property resumption relies on (deterministic, disjoint across ranks, every example at most once, the same count
per rank as the plain batches) and pad less than the plain batches on real SciFact triples."""
from __future__ import annotations

import numpy as np
import pytest

from kd.configs.distill import TrainingConfig
from kd.training import Examples, example_lengths, length_grouped_batches, padding_fraction, rank_batches

LENGTHS = np.random.default_rng(0).integers(20, 2000, size=203)


def _flat(batches):
    return [i for b in batches for i in b]


def test_window_zero_is_exactly_the_plain_batches():
    for world, rank in ((1, 0), (2, 0), (2, 1), (3, 2)):
        assert rank_batches(203, 1, 5, rank, world, 8, LENGTHS, 0) == rank_batches(203, 1, 5, rank, world, 8)


@pytest.mark.parametrize("world,micro_batch,window", [(1, 8, 4), (2, 8, 3), (3, 4, 50), (2, 5, 1)])
def test_grouped_batches_are_deterministic_disjoint_covering_and_equal_per_rank(world, micro_batch, window):
    plain = [rank_batches(203, 0, 5, r, world, micro_batch) for r in range(world)]
    grouped = [rank_batches(203, 0, 5, r, world, micro_batch, LENGTHS, window) for r in range(world)]
    assert grouped == [length_grouped_batches(LENGTHS, 0, 5, r, world, micro_batch, window) for r in range(world)]
    for g, p in zip(grouped, plain):
        assert len(g) == len(p) and all(len(b) == micro_batch for b in g)  # same steps per epoch: resume skips alike
    flat = [i for g in grouped for i in _flat(g)]
    assert len(flat) == len(set(flat))  # disjoint across ranks, each example at most once
    assert len(flat) == len(_flat([i for p in plain for i in p]))  # as many examples as the plain epoch uses
    assert set(flat) == set(np.random.default_rng([5, 0]).permutation(203)[: len(flat)].tolist())  # its first ones
    assert rank_batches(203, 1, 5, 0, world, micro_batch, LENGTHS, window) != grouped[0]  # a new order each epoch


def test_grouped_batches_hold_similar_lengths_and_ranks_step_alike():
    spread = lambda batches: np.mean([np.ptp(LENGTHS[b]) for b in batches])  # noqa: E731
    plain = rank_batches(203, 0, 5, 0, 2, 8)
    r0, r1 = (length_grouped_batches(LENGTHS, 0, 5, r, 2, 8, 50) for r in (0, 1))
    assert spread(r0) < spread(plain) / 4
    # strided inside a step: at each step both ranks hold batches of about the same length
    gap = np.mean([abs(LENGTHS[a].max() - LENGTHS[b].max()) for a, b in zip(r0, r1)])
    assert gap < spread(plain) / 4


def test_grouping_needs_the_lengths():
    with pytest.raises(ValueError, match="length of each"):
        rank_batches(203, 0, 5, 0, 1, 8, None, 4)
    with pytest.raises(ValueError, match="length of each"):
        rank_batches(203, 0, 5, 0, 1, 8, LENGTHS[:10], 4)


def test_group_by_length_config_is_a_window_off_by_default():
    assert TrainingConfig().group_by_length == 0
    assert TrainingConfig(group_by_length=50).group_by_length == 50
    for bad in (-1, True):
        with pytest.raises(ValueError, match="group_by_length"):
            TrainingConfig(group_by_length=bad)


# ------------------------------------------------------------------------------------------ real SciFact text
@pytest.fixture(scope="module")
def scifact_examples() -> Examples:
    """The quickstart's own triples: SciFact train claims × 4 negatives from their BM25 top-10, with text."""
    from kd.configs.catalog import resources_dir
    from kd.data import join_triples, load_passages, load_queries, mine_triples, read_qrels, read_trec_run

    sf = resources_dir() / "quickstart" / "scifact"
    mined = mine_triples(read_trec_run(sf / "runs" / "bm25.train.trec"), read_qrels(sf / "qrels" / "train.tsv"),
                         n_negatives=4, top_k=10, seed=0)
    rows = list(join_triples(mined.triples, load_queries(sf / "queries.jsonl"),
                             load_passages(sf / "corpus.jsonl.gz", show_progress=False)))
    return Examples([r.query for r in rows], [r.pos for r in rows], [r.neg for r in rows])


@pytest.fixture(scope="module")
def bert_dot(minilm_path):
    from kd.models import get_model_class

    return get_model_class("bert_dot").from_backbone(minilm_path, max_query_length=30, max_passage_length=128)


def test_grouped_batches_pad_less_on_real_scifact_triples(scifact_examples, bert_dot):
    ex, n = scifact_examples, len(scifact_examples)
    assert n > 1000
    lengths = example_lengths(ex, bert_dot)
    tok = lambda text, cap: len(bert_dot.tokenizer(text, truncation=True, max_length=cap)["input_ids"])  # noqa: E731
    assert lengths[0] == tok(ex.query[0], 30) + max(tok(ex.pos[0], 128), tok(ex.neg[0], 128))
    plain = rank_batches(n, 0, 1, 0, 1, 16)
    grouped = rank_batches(n, 0, 1, 0, 1, 16, lengths, 50)
    before, after = padding_fraction(bert_dot, ex, plain), padding_fraction(bert_dot, ex, grouped)
    # nearly every abstract reaches 128 tokens: what pads is the query side, which the token key groups
    assert 0 < after < before / 4, (before, after)


def test_padding_fraction_counts_what_the_step_pads(scifact_examples, bert_dot):
    ex = scifact_examples
    b = ex.batch([0, 1, 2])
    tok = bert_dot.tokenizer
    q = tok(b["query"], padding=True, truncation=True, max_length=30)["attention_mask"]
    d = tok(b["pos"] + b["neg"], padding=True, truncation=True, max_length=128)["attention_mask"]
    masks = [m for m in q + d]  # the query once, p+ and p- in one padded batch (BertDot.score_triples)
    want = sum(m.count(0) for m in masks) / sum(len(m) for m in masks)
    assert padding_fraction(bert_dot, ex, [[0, 1, 2]]) == pytest.approx(want)
    assert padding_fraction(bert_dot, ex, []) == 0.0
