"""Teacher members and their combinations on development data: nDCG@10 of each member and each combination.

    python experiments/teacher_members.py [--json docs/teacher_members_dev.json]

Development data only — the quickstart's SciFact dev split (50 train claims held out of mining; BM25 top-20 over the
full corpus) — never SciFact test or DL'19: this table is what chose the pipeline's default (`combine: zscore`,
equal weights). The members are the quickstart's: BM25 from the training corpus's statistics and the
all-MiniLM-L6-v2 bi-encoder. The z-score statistics are fitted, as the scoring job fits them, on every pair of the
set a teacher scores for training — here the training claims' BM25 top-10 candidates (the pool that mining draws
triples from) — and applied unchanged to the dev candidates.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from kd.data.formats import doc_text, ranked, read_beir_corpus, read_beir_queries, read_qrels, read_trec_run
from kd.metrics import evaluate
from kd.configs.catalog import resources_dir
from kd.teachers import Combination, load_member


def candidate_pairs(run: dict, top_k: int) -> list[tuple[str, str]]:
    return [(q, d) for q in sorted(run) for d, _ in ranked(run[q], top_k)]


def member_scores(members: dict, pairs, queries, texts) -> np.ndarray:
    """[M, N] raw scores of every member for the pairs."""
    qs, ps = [queries[q] for q, _ in pairs], [texts[d] for _, d in pairs]
    return np.stack([m.predict(qs, ps, batch_size=64).numpy().astype(np.float64) for m in members.values()])


def ndcg(pairs, scores, qrels) -> float:
    run: dict[str, dict[str, float]] = {}
    for (q, d), s in zip(pairs, scores):
        run.setdefault(q, {})[d] = float(s)
    return evaluate(run, qrels, ["ndcg@10"], relevance_level=1)["ndcg@10"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", default=str(resources_dir() / "quickstart" / "scifact"),
                    help="BEIR folder with runs/bm25.{train,dev}.trec and qrels/dev.tsv (default: the quickstart's)")
    ap.add_argument("--dev-top-k", type=int, default=20)
    ap.add_argument("--fit-top-k", type=int, default=10)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.5, 2.0],
                    help="BM25 weights tried beside equal weights (the bi-encoder keeps weight 1)")
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args(argv)
    beir = Path(args.beir)
    corpus_file = beir / "corpus.jsonl.gz" if (beir / "corpus.jsonl.gz").is_file() else beir / "corpus.jsonl"
    queries = read_beir_queries(beir / "queries.jsonl")
    texts = {d: doc_text(v) for d, v in read_beir_corpus(corpus_file).items()}
    qrels = read_qrels(beir / "qrels" / "dev.tsv")
    dev = candidate_pairs(read_trec_run(beir / "runs" / "bm25.dev.trec"), args.dev_top_k)
    fit = candidate_pairs(read_trec_run(beir / "runs" / "bm25.train.trec"), args.fit_top_k)
    start = time.perf_counter()
    members = {
        "bm25": load_member({"name": "bm25", "kind": "bm25", "corpus": str(corpus_file)}),
        "minilm": load_member({"name": "minilm", "kind": "bi", "path": "sentence-transformers/all-MiniLM-L6-v2"}),
    }
    names = list(members)
    dev_scores = member_scores(members, dev, queries, texts)
    fit_scores = member_scores(members, fit, queries, texts)
    rows = [{"teacher": f"T1 = {n}", "combine": "-", "weights": "-", "ndcg@10": ndcg(dev, dev_scores[i], qrels)}
            for i, n in enumerate(names)]
    grid = [("mean", [1.0, 1.0]), ("zscore", [1.0, 1.0])] + [("zscore", [w, 1.0]) for w in args.weights]
    for method, weights in grid:
        combination = Combination.fit(method, names, fit_scores, weights)
        rows.append({"teacher": "T2 = bm25 + minilm", "combine": method,
                     "weights": ", ".join(f"{n}={w:g}" for n, w in zip(names, weights)),
                     "ndcg@10": ndcg(dev, combination(dev_scores), qrels), "combination": combination.to_dict()})
    print(f"SciFact dev ({len(qrels)} claims, BM25 top-{args.dev_top_k}); z-score statistics from {len(fit)} "
          f"training candidates; {time.perf_counter() - start:.0f} s")
    print(f"| teacher | combine | weights | nDCG@10 |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['teacher']} | {r['combine']} | {r['weights']} | {r['ndcg@10']:.4f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"dev": str(beir / "qrels" / "dev.tsv"), "queries": len(qrels),
                                               "dev_top_k": args.dev_top_k, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
