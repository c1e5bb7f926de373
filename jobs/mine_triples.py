"""Mine training triples (qid pos_pid neg_pid) from a first-stage run + qrels; BM25 when no run is given.

    python -m jobs.mine_triples --config configs/mine_scifact.yaml [--set key=value ...]

Bad input ends with exit code 2 and a message naming the file (and line) before anything is written: a BEIR
folder missing a file, qrels naming ids the folder lacks, a run naming documents the corpus does not have or
sharing no query with the qrels, or inputs from which no triple can be mined (kd/data/mine_file.py, the same body
as the pipeline's mine stage).
"""
from __future__ import annotations

import json
import sys

from jobs._common import run_job
from kd.configs.mine import MineTriplesConfig


def main(argv=None) -> int:
    def run(cfg: MineTriplesConfig) -> None:
        from kd.data.mine_file import mine_to_file

        n, mined = mine_to_file(cfg)
        print(f"{n} triples → {cfg.output}")
        print(mined.stats.summary())
        print(json.dumps({"triples": n, "output": cfg.output}))

    return run_job(__doc__, MineTriplesConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
