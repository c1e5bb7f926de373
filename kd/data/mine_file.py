"""Mine a triples file from a mine config: the one body of `jobs.mine_triples` and the pipeline's mine stage.

Bad input stops it before anything is written, naming the file (and line): a BEIR folder missing a file, a given
run naming documents the corpus does not have or sharing no query with the qrels, or inputs from which no triple
can be mined (an empty triples file would only fail later, inside the training workers). The file is written to a
temporary name and renamed, so a failed or interrupted job leaves no partial file.
"""
from __future__ import annotations

import os
from pathlib import Path

from kd.data.bm25 import bm25_beir
from kd.data.formats import FormatError, load_beir, read_qrels, read_trec_run, write_triples
from kd.data.mining import MiningResult, mine_triples


def mine_to_file(cfg) -> tuple[int, MiningResult]:
    """(triples written, the mining result) for a `kd.configs.MineTriplesConfig` (beir, split, run | BM25, output,
    n_negatives, top_k, threshold, seed, bm25_run_out)."""
    beir = Path(cfg.beir)
    qrels_path = beir / "qrels" / f"{cfg.split}.tsv"
    if cfg.run:
        from kd.evaluation import check_overlap, check_run_ids  # the checks evaluation applies to any run

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
    os.replace(tmp, out)
    return n, mined
