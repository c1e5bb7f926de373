"""BM25 (bm25s, as jobs.mine_triples uses it) over the SciFact corpus for the 300 *test* claims → a TREC run, the
first stage that finding 2 re-ranks. Evaluation input only: nothing is trained on it.

    python experiments/bm25_scifact_test.py [--out outputs/experiments/scifact/bm25.test.top100.trec] [--top-k 100]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from kd.data import bm25_beir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--beir", default="../shared/data/beir/scifact")
    ap.add_argument("--out", default="outputs/experiments/scifact/bm25.test.top100.trec")
    ap.add_argument("--top-k", type=int, default=100)
    args = ap.parse_args()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    run = bm25_beir(args.beir, split="test", out_path=args.out, top_k=args.top_k, show_progress=False)
    print(f"BM25: {len(run)} test queries, top {args.top_k} → {args.out}")


if __name__ == "__main__":
    main()
