"""Ranking metrics: a thin, checked layer over ``pytrec_eval`` (package pytrec-eval-terrier).

``evaluate(run, qrels)`` returns the mean of each metric over the queries that have qrels.

Metric names (case-insensitive): ``ndcg@k``, ``ndcg``, ``mrr@k`` (alias ``rr@k``), ``mrr``,
``recall@k``, ``p@k`` (alias ``precision@k``), ``map``, ``map@k``, ``rprec``.

Conventions
-----------
* Graded vs binary: nDCG uses the graded qrels as gains (trec_eval's ``ndcg_cut``; unaffected by
  ``relevance_level``).  MRR, Recall, P, MAP and R-prec count a document as relevant when its
  grade >= ``relevance_level`` (default 1; TREC DL passage convention: 2).
* MRR@k is computed here, not with pytrec_eval's ``recip_rank`` (which has no cutoff): the
  reciprocal rank of the first relevant document within the top k, 0 if there is none.
* Ordering and ties: a query's documents are ranked by score descending, ties broken by docid in
  descending string order.  That is trec_eval's own rule (it ignores the rank column and sorts
  by score, then docno with ``strcmp`` descending), so MRR@k here and every pytrec_eval measure
  see the same ranking and the numbers equal trec_eval's.  :func:`kd.data.formats.ranked` and
  :func:`kd.data.formats.write_trec_run` use the same rule.
* Queries: the mean is over the queries of ``qrels`` that have at least one judgment.  A
  query with qrels but no run entry scores 0 on every metric (trec_eval ``-c``) by default
  (``missing="zero"``, counted and logged); ``missing="skip"`` averages over the run's
  queries only, ``missing="error"`` raises.  Run queries without qrels are ignored (counted).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

DEFAULT_METRICS = ("ndcg@10", "mrr@10", "recall@100", "recall@1000", "map")

_NAME = re.compile(r"^([a-z_\-]+)(?:@(\d+))?$")
# our family name -> (pytrec_eval measure, takes a cutoff)
_TREC = {
    "ndcg": ("ndcg_cut", "ndcg"),
    "recall": ("recall", None),
    "p": ("P", None),
    "precision": ("P", None),
    "map": ("map_cut", "map"),
    "mrr": (None, "recip_rank"),
    "rr": (None, "recip_rank"),
    "rprec": (None, "Rprec"),
    "r-prec": (None, "Rprec"),
}


@dataclass(frozen=True)
class _Metric:
    name: str  # canonical, e.g. "ndcg@10"
    family: str  # ndcg, recall, p, map, mrr, rprec
    k: int | None
    trec_measure: str | None  # pytrec_eval measure family ("ndcg_cut", "recall", ...) or None (own)
    trec_key: str | None  # key in pytrec_eval's output


def parse_metric(name: str) -> _Metric:
    """Parse a metric name like ``"ndcg@10"``; ``ValueError`` for unknown names."""
    m = _NAME.match(str(name).strip().lower())
    if not m or m.group(1) not in _TREC:
        raise ValueError(
            f"unknown metric {name!r}; supported: ndcg@k, ndcg, mrr@k, mrr, recall@k, p@k, map, map@k, rprec"
        )
    fam, k = m.group(1), (int(m.group(2)) if m.group(2) else None)
    fam = {"precision": "p", "rr": "mrr", "r-prec": "rprec"}.get(fam, fam)
    if k is not None and k < 1:
        raise ValueError(f"metric {name!r}: cutoff must be >= 1")
    cut_measure, plain = _TREC[fam]
    canonical = f"{fam}@{k}" if k is not None else fam
    if fam == "mrr":
        return _Metric(canonical, fam, k, None if k is not None else "recip_rank", None if k is not None else "recip_rank")
    if k is None:
        if plain is None:
            raise ValueError(f"metric {name!r} needs a cutoff, e.g. {fam}@100")
        return _Metric(canonical, fam, None, plain, plain)
    if cut_measure is None:
        raise ValueError(f"metric {name!r} takes no cutoff")
    return _Metric(canonical, fam, k, cut_measure, f"{cut_measure}_{k}")


class EvalResult(dict):
    """``{metric: mean}``, plus ``per_query`` (``{qid: {metric: value}}`` when requested),
    ``n_queries`` (queries averaged over), ``missing_queries`` (qrels queries absent from the
    run) and ``ignored_queries`` (run queries without qrels)."""

    per_query: dict[str, dict[str, float]] | None
    n_queries: int
    missing_queries: list[str]
    ignored_queries: int


def _ranked_ids(docs: Mapping[str, float]) -> list[str]:
    items = sorted(docs.items(), key=lambda kv: kv[0], reverse=True)
    items.sort(key=lambda kv: kv[1], reverse=True)
    return [d for d, _ in items]


def _mrr_at_k(docs: Mapping[str, float], judged: Mapping[str, int], k: int, level: int) -> float:
    for rank, d in enumerate(_ranked_ids(docs)[:k], 1):
        if judged.get(d, 0) >= level:
            return 1.0 / rank
    return 0.0


def _clean_qrels(qrels: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """String ids and integer grades; queries without a judgment dropped."""
    out: dict[str, dict[str, int]] = {}
    for q, docs in qrels.items():
        if not docs:
            continue
        row = {}
        for d, g in docs.items():
            if isinstance(g, bool) or not float(g).is_integer():
                raise ValueError(f"qrels: query {q!r} document {d!r} has non-integer grade {g!r}")
            row[str(d)] = int(g)
        out[str(q)] = row
    if not out:
        raise ValueError("qrels are empty: no query has a judgment")
    return out


def _clean_run(run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """String ids and finite float scores."""
    out: dict[str, dict[str, float]] = {}
    for q, docs in run.items():
        row = {}
        for d, s in docs.items():
            s = float(s)
            if not math.isfinite(s):
                raise ValueError(f"run: query {q!r} document {d!r} has non-finite score {s}")
            row[str(d)] = s
        out[str(q)] = row
    return out


def _scored_queries(run_s: dict, qrels_s: dict, missing: str) -> tuple[list[str], list[str], list[str], int]:
    """(queries averaged over, queries with run entries and qrels, qrels queries without a run entry, run queries
    without qrels); the missing-query policy applied and logged."""
    overlap = [q for q in qrels_s if run_s.get(q)]
    if not overlap:
        raise ValueError(
            "run and qrels share no query ids: run has "
            f"{len(run_s)} queries (e.g. {sorted(run_s)[:3]}), qrels {len(qrels_s)} (e.g. {sorted(qrels_s)[:3]}); "
            "check that both come from the same collection and split"
        )
    missing_q = sorted(q for q in qrels_s if not run_s.get(q))
    ignored = sum(1 for q in run_s if q not in qrels_s)
    if missing_q:
        if missing == "error":
            raise ValueError(f"{len(missing_q)} qrels queries have no run entry, e.g. {missing_q[:5]}")
        logger.warning(
            "evaluate: %d of %d qrels queries have no run entry (%s), e.g. %s",
            len(missing_q), len(qrels_s), "scored 0" if missing == "zero" else "skipped", missing_q[:5],
        )
    if ignored:
        logger.info("evaluate: ignoring %d run queries without qrels", ignored)
    queries = sorted(qrels_s) if missing == "zero" else sorted(overlap)
    return queries, overlap, missing_q, ignored


def _trec_measures(parsed: Sequence[_Metric]) -> set[str]:
    """pytrec_eval measures, cutoffs of one family merged ("recall.100,1000")."""
    cutoffs: dict[str, set[int]] = {}
    plain: set[str] = set()
    for m in parsed:
        if m.trec_measure is None:
            continue
        if m.trec_key != m.trec_measure:  # has a cutoff
            cutoffs.setdefault(m.trec_measure, set()).add(m.k)  # type: ignore[arg-type]
        else:
            plain.add(m.trec_measure)
    return plain | {f"{fam}.{','.join(str(k) for k in sorted(ks))}" for fam, ks in cutoffs.items()}


def evaluate(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    relevance_level: int = 1,
    *,
    per_query: bool = False,
    missing: Literal["zero", "skip", "error"] = "zero",
) -> EvalResult:
    """Evaluate ``run`` (``{qid: {docid: score}}``) against ``qrels`` (``{qid: {docid: grade}}``).

    Returns an :class:`EvalResult` (a dict ``{metric: mean}``); see the module docstring for
    the conventions.  Raises ``ValueError`` for an empty run or qrels, no query overlap between
    them, non-finite scores, non-integer grades, or an unknown metric name.
    """
    import pytrec_eval

    if isinstance(metrics, str):
        metrics = (metrics,)
    parsed = [parse_metric(m) for m in metrics]
    if not parsed:
        raise ValueError("no metrics requested")
    if missing not in ("zero", "skip", "error"):
        raise ValueError(f"missing must be 'zero', 'skip' or 'error', got {missing!r}")
    if not run or not any(len(v) for v in run.values()):
        raise ValueError("run is empty: no query has any retrieved document")
    qrels_s = _clean_qrels(qrels)
    run_s = _clean_run(run)
    queries, overlap, missing_q, ignored = _scored_queries(run_s, qrels_s, missing)
    measures = _trec_measures(parsed)
    trec_out: dict[str, dict[str, float]] = {}
    if measures:
        evaluator = pytrec_eval.RelevanceEvaluator(
            {q: qrels_s[q] for q in queries}, measures, relevance_level=int(relevance_level)
        )
        trec_out = evaluator.evaluate({q: run_s[q] for q in overlap})

    per_q: dict[str, dict[str, float]] = {}
    for q in queries:
        docs = run_s.get(q)
        vals: dict[str, float] = {}
        for m in parsed:
            if not docs:
                vals[m.name] = 0.0
            elif m.trec_key is None:  # MRR@k
                vals[m.name] = _mrr_at_k(docs, qrels_s[q], m.k, relevance_level)  # type: ignore[arg-type]
            else:
                vals[m.name] = float(trec_out[q][m.trec_key])
        per_q[q] = vals
    result = EvalResult({m.name: sum(v[m.name] for v in per_q.values()) / len(per_q) for m in parsed})
    result.per_query = per_q if per_query else None
    result.n_queries = len(per_q)
    result.missing_queries = missing_q
    result.ignored_queries = ignored
    return result


def format_results(result: Mapping[str, float], digits: int = 4) -> str:
    """``"ndcg@10=0.5058 mrr@10=0.7036 ..."`` for logs."""
    return " ".join(f"{k}={v:.{digits}f}" for k, v in result.items())


__all__ = ["DEFAULT_METRICS", "EvalResult", "evaluate", "format_results", "parse_metric"]
