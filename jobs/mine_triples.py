"""Mine training triples (qid pos_pid neg_pid) from a first-stage run + qrels; BM25 when no run is given.

    python -m jobs.mine_triples --config configs/mine_scifact.yaml [--set key=value ...]

Bad input ends with exit code 2 and a message naming the file (and line) before anything is written: a BEIR
folder missing a file, qrels naming ids the folder lacks, a run naming documents the corpus does not have or
sharing no query with the qrels, or inputs from which no triple can be mined.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from jobs._common import run_job
from kd.config import MineTriplesConfig


def main(argv=None) -> int:
    def run(cfg: MineTriplesConfig) -> None:
        from kd.data import (FormatError, bm25_beir, load_beir, mine_triples, read_qrels, read_trec_run,
                             write_triples)

        beir = Path(cfg.beir)
        qrels_path = beir / "qrels" / f"{cfg.split}.tsv"
        if cfg.run:
            from kd.evaluation import check_overlap, check_run_ids

            ds = load_beir(beir, cfg.split)  # every file there, and qrels ids that the folder has
            qrels, first_stage = ds.qrels, read_trec_run(cfg.run)
            shared = check_overlap(first_stage, qrels, cfg.run, str(qrels_path))
            check_run_ids(cfg.run, first_stage, ds.queries, ds.corpus, qids=shared,
                          queries_source=str(beir / "queries.jsonl"), passages_source=str(beir / "corpus.jsonl"))
        else:  # bm25_beir loads (and checks) the folder itself; its run names corpus documents only
            if cfg.bm25_run_out:
                Path(cfg.bm25_run_out).parent.mkdir(parents=True, exist_ok=True)
            first_stage = bm25_beir(beir, split=cfg.split, top_k=cfg.top_k, out_path=cfg.bm25_run_out)
            qrels = read_qrels(qrels_path)
        mined = mine_triples(first_stage, qrels, n_negatives=cfg.n_negatives, top_k=cfg.top_k,
                             threshold=cfg.threshold, seed=cfg.seed)
        if not mined.triples:
            raise FormatError(f"no triples could be mined from it and {qrels_path}: {mined.stats.summary()}",
                              path=cfg.run or cfg.bm25_run_out or beir, reason="no triples")
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        n = write_triples(tmp, mined.triples)
        os.replace(tmp, out)  # a failed or interrupted job leaves no partial file
        print(f"{n} triples → {cfg.output}")
        print(mined.stats.summary())
        print(json.dumps({"triples": n, "output": cfg.output}))

    return run_job(__doc__, MineTriplesConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
