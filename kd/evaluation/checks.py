"""Input checks every task applies before model work; each error names the file (and line) and what is wrong.

kd/data/mine_file.py applies the same checks to the run it mines from.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kd.data import FormatError, ranked
from kd.data.formats import UNKNOWN_DOCUMENT_ID, UNKNOWN_QUERY_ID, iter_trec_run


class EvaluationError(FormatError):
    """Inputs that cannot be evaluated together (no shared queries, a model that cannot do the task, ...).

    A FormatError, so job entrypoints report it as a bad-input error (exit 2) with the message alone.
    """


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
