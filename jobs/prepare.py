"""Prepare training data once: a teacher-score file (or id triples) + its id→text sources → a memory-mapped folder
of row ids, float32 teacher scores and word pieces tokenised with the student's tokenizer, that every distill
worker maps instead of joining the files itself (`data.prepared: <folder>` in the distill config).

    python -m jobs.prepare --config prepare.yaml [--set key=value ...]   (fields: kd/configs/prepare.py)

Writes <output>/manifest.json (sources with sha256 digests, tokenizer and its vocabulary digest, max lengths,
counts, join stats) and the .npy arrays; the folder appears only when complete. The same command works under
`ray job submit -- python -m jobs.prepare ...`.
"""
from __future__ import annotations

import sys

from jobs._common import run_job
from kd.configs.prepare import PrepareConfig


def main(argv=None) -> int:
    def run(cfg: PrepareConfig) -> None:
        from kd.runtime.prepare import prepare

        m = prepare(cfg)
        c, j = m["counts"], m["join"]
        print(f"prepared {c['triples']} triples ({c['queries']} queries, {c['passages']} passages; "
              f"{j['skipped']} of {j['rows']} rows skipped, {j['duplicates']} duplicates, "
              f"{j['excluded_queries']} excluded) → {m['folder']} ({m['bytes'] / 2**20:.1f} MiB)")

    return run_job(__doc__, PrepareConfig, run, argv)


if __name__ == "__main__":
    sys.exit(main())
