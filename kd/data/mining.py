"""Training-data mining from a first-stage run and qrels.

* :func:`mine_triples`: ``(qid, pos_pid, neg_pid)`` triples.  Positives are the documents
  judged with grade >= ``threshold``; negatives are sampled, without replacement, ``n_negatives``
  per positive, from the run's top ``top_k`` documents that are not judged relevant (unjudged,
  or judged below ``threshold``).
* :func:`candidate_lists`: per query the positives plus the run's top ``top_k`` candidates, for
  listwise training / distillation.

Determinism: queries are processed in sorted id order, positives in sorted docid order, and the
run is ranked with :func:`kd.data.formats.ranked` (score desc, ties by docid desc).  Each query
draws from its own generator seeded with ``(seed, blake2b(qid))``, so the negatives of a query
depend only on the seed, the query id, its qrels and its run entries: not on dict ordering,
hash randomisation, or which other queries are present.

Nothing is dropped silently: queries without a positive, without a negative candidate, or
absent from the run are counted in :class:`MiningStats` (with their ids) and logged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from kd.data.formats import Triple, ranked

logger = logging.getLogger(__name__)


@dataclass
class MiningStats:
    """Per-query accounting of a mining pass.

    ``queries`` is the number of distinct query ids in the run or the qrels.  Every one of them
    ends up in exactly one of: ``used`` (produced output), ``no_positive`` (no document judged
    >= threshold, including run queries absent from the qrels), ``not_in_run`` (has positives
    but no run entry), ``no_negative`` (in the run, but every top-k document is judged relevant).
    ``short_of_negatives`` counts positives that got fewer than ``n_negatives`` negatives
    because the query had too few candidates.
    """

    queries: int = 0
    used: int = 0
    no_positive: int = 0
    not_in_run: int = 0
    no_negative: int = 0
    short_of_negatives: int = 0
    records: int = 0
    no_positive_ids: list = field(default_factory=list)
    not_in_run_ids: list = field(default_factory=list)
    no_negative_ids: list = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.records} records from {self.used} of {self.queries} queries; skipped queries: "
            f"{self.no_positive} without a positive, {self.not_in_run} not in the run, "
            f"{self.no_negative} without a negative candidate; "
            f"{self.short_of_negatives} positive(s) short of negatives"
        )

    def skip(self, reason: str, qid: str) -> None:
        """Count a skipped query under ``reason`` (``"no_positive"``, ``"not_in_run"`` or
        ``"no_negative"``) and keep its id in ``<reason>_ids``."""
        setattr(self, reason, getattr(self, reason) + 1)
        getattr(self, f"{reason}_ids").append(qid)

    def log(self, what: str) -> None:
        skipped = self.no_positive + self.not_in_run + self.no_negative + self.short_of_negatives
        (logger.warning if skipped else logger.info)("%s: %s", what, self.summary())


class _ListWithStats:
    """A result list plus its :class:`MiningStats`: ``len()`` and iteration are the list's (the
    field named by ``_items``)."""

    _items: ClassVar[str]

    def __len__(self) -> int:
        return len(getattr(self, self._items))

    def __iter__(self) -> Iterator:
        return iter(getattr(self, self._items))


@dataclass
class MiningResult(_ListWithStats):
    """Mined triples plus the accounting of what could not be mined."""

    _items = "triples"
    triples: list[Triple]
    stats: MiningStats


class CandidateList(NamedTuple):
    """One query's list: positives first (sorted by docid), then the run's top-k in rank order
    (positives not repeated).  ``labels`` are the qrels grades, 0 for unjudged documents."""

    qid: str
    docids: list[str]
    labels: list[int]


@dataclass
class CandidateResult(_ListWithStats):
    _items = "lists"
    lists: list[CandidateList]
    stats: MiningStats


def query_rng(seed: int, qid: str) -> np.random.Generator:
    """The per-query generator: independent of Python's hash seed and of other queries."""
    h = int.from_bytes(hashlib.blake2b(str(qid).encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, h])


def _check_common(top_k: int, threshold: int) -> None:
    if not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if not isinstance(threshold, (int, np.integer)):
        raise ValueError(f"threshold must be an integer grade, got {threshold!r}")


def _all_qids(run: Mapping, qrels: Mapping) -> list[str]:
    if not run:
        raise ValueError("run is empty: no candidates to mine from")
    if not qrels:
        raise ValueError("qrels are empty: no positives to mine")
    return sorted({str(q) for q in run} | {str(q) for q in qrels})


def _lookup(m: Mapping, qid: str):
    v = m.get(qid)
    if v is None and qid.lstrip("-").isdigit():  # tolerate int-keyed dicts
        v = m.get(int(qid))
    return v


def _ranked_queries(
    run: Mapping, qrels: Mapping, top_k: int, threshold: int, stats: MiningStats, *, require_positive: bool = True
) -> Iterator[tuple[str, dict[str, int], list[str], list[str]]]:
    """Per query, in sorted id order: ``(qid, judged grades, positives, the run's top-k docids)``.

    Counts every query; a query without a positive is counted ``no_positive`` (and skipped when
    ``require_positive``), one with positives but no run entry ``not_in_run`` (skipped); a query
    with neither is skipped under ``no_positive`` alone.
    """
    for qid in _all_qids(run, qrels):
        stats.queries += 1
        judged = {str(d): int(g) for d, g in (_lookup(qrels, qid) or {}).items()}
        positives = sorted(d for d, g in judged.items() if g >= threshold)
        if not positives:
            stats.skip("no_positive", qid)
            if require_positive:
                continue
        docs = _lookup(run, qid)
        if not docs:
            if positives:
                stats.skip("not_in_run", qid)
            continue
        yield qid, judged, positives, [d for d, _ in ranked({str(d): float(s) for d, s in docs.items()}, top_k)]


def mine_triples(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    n_negatives: int = 1,
    top_k: int = 100,
    threshold: int = 1,
    seed: int = 0,
) -> MiningResult:
    """Mine ``(qid, pos_pid, neg_pid)`` triples; see the module docstring for the rules.

    For each query and each positive, ``n_negatives`` distinct negatives are drawn uniformly
    from the query's negative candidates (fewer, counted in ``short_of_negatives``, when the
    query has fewer candidates).  Same inputs and seed give identical triples.
    """
    _check_common(top_k, threshold)
    if n_negatives < 1:
        raise ValueError(f"n_negatives must be >= 1, got {n_negatives!r}")
    stats = MiningStats()
    triples: list[Triple] = []
    for qid, judged, positives, top in _ranked_queries(run, qrels, top_k, threshold, stats):
        candidates = [d for d in top if judged.get(d, threshold - 1) < threshold]
        if not candidates:
            stats.skip("no_negative", qid)
            continue
        rng = query_rng(seed, qid)
        k = min(n_negatives, len(candidates))
        for pos in positives:
            if k < n_negatives:
                stats.short_of_negatives += 1
            for j in rng.choice(len(candidates), size=k, replace=False):
                triples.append(Triple(qid, pos, candidates[int(j)]))
        stats.used += 1
    stats.records = len(triples)
    stats.log("mine_triples")
    return MiningResult(triples, stats)


def candidate_lists(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    top_k: int = 100,
    threshold: int = 1,
    include_positives: bool = True,
    require_positive: bool = True,
) -> CandidateResult:
    """Per query: the positives (grade >= ``threshold``) plus the run's top-``top_k`` documents.

    ``include_positives=False`` gives the plain top-k list (positives appear only where the
    run ranked them).  Queries without a positive are skipped and counted when
    ``require_positive`` (default), else kept; queries absent from the run are skipped and
    counted (``not_in_run``).  Lists are in sorted query-id order.
    """
    _check_common(top_k, threshold)
    stats = MiningStats()
    out: list[CandidateList] = []
    for qid, judged, positives, top in _ranked_queries(run, qrels, top_k, threshold, stats,
                                                       require_positive=require_positive):
        if include_positives:
            pos_set = set(positives)
            docids = positives + [d for d in top if d not in pos_set]
        else:
            docids = top
        out.append(CandidateList(qid, docids, [judged.get(d, 0) for d in docids]))
        stats.used += 1
        stats.records += len(docids)
    stats.log("candidate_lists")
    return CandidateResult(out, stats)


__all__ = [
    "CandidateList",
    "CandidateResult",
    "MiningResult",
    "MiningStats",
    "candidate_lists",
    "mine_triples",
    "query_rng",
]
