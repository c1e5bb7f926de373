"""Typed config of jobs/prepare.py: a training input (teacher-score file or id triples) plus its id→text sources,
tokenised once with the student's tokenizer into a memory-mapped folder the distill workers read (`data.prepared`).

`mode`, `teacher.scores` and `data` are the distill config's own sections (copy them from it): the prepare step
reads them with the same readers and join as the raw training path, so both paths train on the same examples.
`max_query_length` / `max_passage_length` are word pieces kept per text WITHOUT special tokens; a student needs
(kd/data/collate.py side_caps, also printed when a folder is refused): bert_dot / colbert max − 2 per side,
prettr query max − 2 and passage max − 1, tk max, the pair cross-encoders (bert_cat, tinybert_cat, hf_cross_encoder)
their whole pair budget on both sides (bert_cat 30 / 200: 230, 230).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, model_validator

from kd.configs.base import Strict
from kd.configs.catalog import MINILM_HUB_NAME
from kd.configs.distill import TeacherConfig, TrainDataConfig
from kd.configs.fields import file_problem, model_source_error


class PrepareConfig(Strict):
    mode: Literal["score_file", "supervised"] = Field(description="score_file: teacher.scores; supervised: "
                                                                   "data.triples (id triples, no scores)")
    teacher: TeacherConfig = TeacherConfig()
    data: TrainDataConfig = TrainDataConfig()
    tokenizer: str = Field(MINILM_HUB_NAME, description="the student's backbone (its tokenizer): hub name or folder")
    max_query_length: int = Field(ge=1, description="word pieces kept per query, special tokens excluded")
    max_passage_length: int = Field(ge=1, description="word pieces kept per passage, special tokens excluded")
    output: str = Field(description="the prepared folder (written as a temporary folder, renamed when complete)")
    overwrite: bool = False
    batch_size: int = Field(1024, ge=1, description="texts per Ray Data tokenisation batch")
    num_actors: int = Field(1, ge=1, description="tokenizer actors (a Ray Data actor pool over the cluster's CPUs)")
    cpus_per_actor: float = Field(1.0, gt=0)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo):
        d, errors = self.data, []
        training = ("teacher.scores", self.teacher.scores) if self.mode == "score_file" else \
            ("data.triples", d.triples)
        for name, value in (training, ("data.queries", d.queries), ("data.passages", d.passages),
                            ("data.exclude_query_ids_from", d.exclude_query_ids_from)):
            problem = (None if name == "data.exclude_query_ids_from" else f"required in mode {self.mode!r}") \
                if value is None else file_problem(value, info.context)
            if problem:
                errors.append((name, problem))
        if d.query_files or d.prepared:
            errors.append(("data", "query_files / prepared are not inputs of a prepare"))
        if self.teacher.model:
            errors.append(("teacher.model", "a prepare reads teacher.scores only"))
        problem = model_source_error(self.tokenizer, info.context)
        if problem:
            errors.append(("tokenizer", problem))
        if errors:
            raise ValueError("\n".join(f"field {f}: {m}" for f, m in errors))
        return self
