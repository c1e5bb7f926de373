"""Typed config of jobs/mine_triples.py: (BM25 first stage when no run is given) → training triples from qrels."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from kd.configs.base import Strict
from kd.configs.fields import BeirFolder, ExistingFile, qrels_problem


class MineTriplesConfig(Strict):
    """jobs/mine_triples.py: (BM25 first stage when no run is given) → training triples from qrels."""

    beir: BeirFolder = Field(description="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    split: str = "train"
    run: ExistingFile | None = Field(None, description="first-stage TREC run; BM25 (bm25s) over the corpus when absent")
    bm25_run_out: str | None = Field(None, description="where to write the BM25 run (TREC format)")
    output: str
    n_negatives: int = Field(1, ge=1)
    top_k: int = Field(100, ge=1)
    threshold: int = Field(1, ge=0, description="positives: qrels grade >= threshold")
    seed: int = 0

    @model_validator(mode="after")
    def _files(self):
        problem = qrels_problem(self.beir, self.split)
        if problem:
            raise ValueError(problem)
        if not self.run and not (Path(self.beir) / "corpus.jsonl").is_file():  # only a given run needs no corpus
            raise ValueError(f"field run: BM25 mining reads {Path(self.beir) / 'corpus.jsonl'}; give a first-stage run")
        return self
