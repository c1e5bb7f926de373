"""Mine training triples (qid pos_pid neg_pid) from a first-stage run + qrels; BM25 when no run is given.

    python -m jobs.mine_triples --config configs/mine_scifact.yaml [--set key=value ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from jobs._common import run_job
from kd.config import MineTriplesConfig


def main(argv=None) -> int:
    def run(cfg: MineTriplesConfig) -> None:
        from kd.data import bm25_beir, mine_triples, read_qrels, read_trec_run, write_triples

        qrels = read_qrels(Path(cfg.beir) / "qrels" / f"{cfg.split}.tsv")
        if cfg.run:
            first_stage = read_trec_run(cfg.run)
        else:
            if cfg.bm25_run_out:
                Path(cfg.bm25_run_out).parent.mkdir(parents=True, exist_ok=True)
            first_stage = bm25_beir(cfg.beir, split=cfg.split, top_k=cfg.top_k, out_path=cfg.bm25_run_out)
        mined = mine_triples(first_stage, qrels, n_negatives=cfg.n_negatives, top_k=cfg.top_k,
                             threshold=cfg.threshold, seed=cfg.seed)
        Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
        n = write_triples(cfg.output, mined.triples)
        print(f"{n} triples → {cfg.output}")
        print(mined.stats.summary())
        print(json.dumps({"triples": n, "output": cfg.output}))

    return run_job(__doc__, MineTriplesConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
