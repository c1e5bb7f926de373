"""Offline smoke job: load real all-MiniLM-L6-v2 weights, build every student, score real SciFact pairs.

    python -m jobs.quickstart [--backbone PATH_OR_HUB_NAME] [--pairs FILE.jsonl] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from kd.models import STUDENTS
from kd.quickstart import smoke


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


if __name__ == "__main__":
    sys.exit(main())
