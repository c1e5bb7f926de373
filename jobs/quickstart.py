"""The quickstart: the whole pipeline, offline, on the embedded default (configs/quickstart.yaml).

    python -m jobs.quickstart [--set key=value ...]
    python -m jobs.quickstart --smoke [--backbone PATH_OR_HUB_NAME] [--pairs FILE.jsonl] [--json OUT.json]

Default: mine SciFact triples → the teacher ensemble (existing members, combined) scores them → the same small
student trained twice, without KD (RankNet) and with Margin-MSE, on the same triples → evaluate BM25, the teacher, the
student without KD and the student with KD on SciFact test and DL'19 → register the KD student. A local Ray is
started, MLflow tracks to ./mlflow.db, the data ships in the package (kd/resources/quickstart). Ends with the table
(nDCG@10, re-rank queries/s, speed-up over the teacher, what KD gained), the registered model URI and the command
that opens the MLflow UI, and writes outputs/quickstart/summary.json. Rerunning skips the finished stages.

--smoke: the fast check — every student architecture built on the real all-MiniLM-L6-v2 weights scores real
SciFact claim/abstract pairs (no training).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict


def smoke_main(argv) -> int:
    from kd.models import STUDENTS
    from kd.quickstart import smoke

    ap = argparse.ArgumentParser(prog="python -m jobs.quickstart --smoke", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=None, help="HF hub name or local path (default: packaged all-MiniLM-L6-v2)")
    ap.add_argument("--pairs", default=None, help="JSONL of {query, passage, label} (default: shipped SciFact sample)")
    ap.add_argument("--architectures", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    results = smoke(args.backbone, args.pairs, args.architectures)
    print(f"{'student':<14}{'params':>12}{'seconds':>9}{'mean s+':>10}{'mean s-':>10}{'s+ > s-':>9}")
    for r in results:
        print(f"{r.architecture:<14}{r.parameters:>12,}{r.seconds:>9.2f}{r.mean_pos:>10.4f}{r.mean_neg:>10.4f}"
              f"{r.pos_gt_neg:>9.0%}")
    print("(heads are freshly initialised except bert_dot, the pretrained bi-encoder: train with the distill job)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in results], f, indent=2)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--smoke" in argv:
        argv.remove("--smoke")
        return smoke_main(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    from jobs.pipeline import main as pipeline_main
    from kd.quickstart import config_path

    config = config_path()
    print(f"quickstart: python -m jobs.pipeline --config {config} {' '.join(argv)}".rstrip(), flush=True)
    start = time.perf_counter()
    rc = pipeline_main(["--config", str(config), *argv])
    if rc == 0:
        print(f"quickstart finished in {(time.perf_counter() - start) / 60:.1f} min")
    return rc


if __name__ == "__main__":
    sys.exit(main())
