"""Typed config of jobs/score_teachers.py: a teacher ensemble (members of any kind) scores id triples."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kd.configs.base import Strict
from kd.configs.common import MLflowConfig, TextSource
from kd.configs.fields import ExistingFile, SafeName, TeacherPath, repeated


class TeacherSpec(Strict):
    """One teacher member: a cross-encoder (kd folder or HF sequence-classification model), a bi-encoder (kd
    bert_dot folder or HF / sentence-transformers encoder), or BM25 over a corpus (kd/teachers/bm25.py). Checked by
    kd.teachers.check_member: a member that cannot score fails here, naming it."""

    name: SafeName = Field(description="a column in members.parquet, a tag in MLflow")
    kind: Literal["cross", "bi", "bm25"] = "cross"
    path: TeacherPath | None = Field(None, description="cross/bi: hub name or local folder; bm25: none")
    max_length: int = Field(512, ge=8, description="cross only")
    weight: float = Field(1.0, gt=0, allow_inf_nan=False, description="its weight in the combination")
    corpus: str | None = Field(None, description="bm25 only: passages file (corpus.jsonl[.gz] or id<TAB>text) "
                                                 "whose statistics (N, df, avgdl) define its scores")
    use_title: bool = Field(True, description="bm25 only: index title + text")
    k1: float = Field(1.5, ge=0, allow_inf_nan=False, description="bm25 only")
    b: float = Field(0.75, ge=0, le=1, description="bm25 only")

    @model_validator(mode="after")
    def _can_score(self):
        from kd.teachers.checks import check_member

        # model_files=False: a pipeline validates its scoring stage against folders earlier stages will fill
        check_member(self.model_dump(), model_files=False)
        return self


class ScoreTeachersConfig(Strict):
    """jobs/score_teachers.py: a teacher ensemble scores id triples on Ray Data; `combine` makes one teacher score
    of its members' (kd/teachers/combine.py: mean = the paper's T2, zscore = each member standardised over the
    whole scored set; weights are per member)."""

    input: ExistingFile = Field(description="id triples file: qid<TAB>pos_pid<TAB>neg_pid")
    text: TextSource
    teachers: list[TeacherSpec] = Field(min_length=1)
    combine: Literal["mean", "zscore"] = "zscore"
    output_dir: str
    batch_size: int = Field(32, ge=1, description="pairs per forward pass")
    window: int = Field(1024, ge=1, description="rows per Ray Data batch; sorted by length inside")
    shard_size: int = Field(100_000, ge=1, description="rows per output shard (the unit of resumption)")
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0, description="1 on GPU clusters (bf16 there); 0 = CPU, fp32")
    strict: bool = True
    show_progress: bool = True
    mlflow: MLflowConfig = MLflowConfig(experiment="kd-score-teachers")

    @model_validator(mode="after")
    def _unique_teacher_names(self):
        dupes = repeated(t.name for t in self.teachers)
        if dupes:
            raise ValueError(f"field teachers: names must be unique, repeated: {dupes}")
        return self
