"""The sections of the pipeline config (kd.configs.pipeline): each stage takes its job config's fields minus those
the pipeline wires in, plus the pipeline's names for what it trains and evaluates.

`${KD_RESOURCES}` in any string is the folder of data shipped with the package (kd.configs.catalog.resources_dir).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, create_model, model_validator

from kd.configs.base import Strict
from kd.configs.distill import DistillConfig, RegistryConfig
from kd.configs.evaluate import EvalConfig
from kd.configs.mine import MineTriplesConfig
from kd.configs.score_teachers import ScoreTeachersConfig, TeacherSpec

TEACHER_LABEL = "teacher"  # the ensemble's model name in the evaluation
NOKD_SUFFIX = "-nokd"
ROLES = ("bm25", "teacher", "student_nokd", "student_kd")  # + "first_stage" (a non-BM25 run), "model" (listed)


def twin_name(student: str) -> str:
    return student + NOKD_SUFFIX


def student_label(name: str) -> str:
    """A student's (or twin's) model name in the evaluation."""
    return f"student-{name}"


def materialized(t: TeacherSpec) -> bool:
    """A given cross-encoder named by a hub name (or an HF folder) is saved once as a kd folder, so the ensemble
    folder names local kd folders only. Bi-encoder and BM25 members are used as they are."""
    if t.kind != "cross":
        return False
    return not (Path(t.path).expanduser() / "kd_config.json").is_file()


def expand_resources(value: Any, resources: str) -> Any:
    """`value` with `${KD_RESOURCES}` replaced by `resources` in every string, however deep."""
    if isinstance(value, str):
        return value.replace("${KD_RESOURCES}", resources)
    if isinstance(value, dict):
        return {k: expand_resources(v, resources) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_resources(v, resources) for v in value]
    return value


def _partial(cls, exclude: set[str], model_name: str, doc: str, **extra):
    """A section class with `cls`'s fields (types, defaults, constraints, descriptions) minus `exclude`."""
    fields = {n: (f.annotation, copy.copy(f)) for n, f in cls.model_fields.items() if n not in exclude}
    fields.update(extra)
    return create_model(model_name, __base__=Strict, __doc__=doc, **fields)


MineStage = _partial(MineTriplesConfig, {"output", "bm25_run_out"}, "MineStage",
                     "MineTriplesConfig without `output` (the pipeline writes <output_dir>/mine/triples.tsv and, when "
                     "BM25 runs, <output_dir>/mine/bm25.<split>.trec).")

_DistillParts = {"mode", "run", "mlflow"}

TeacherTrainStage = _partial(
    DistillConfig, _DistillParts | {"teacher"}, "TeacherTrainStage",
    "One teacher trained in supervised mode (DistillConfig fields; default a BERT_CAT on the student backbone with "
    "RankNet). data.triples / queries / passages default to the pipeline's.",
    name=(str, Field(description="teacher name: its folder and its column in the scored members")),
    weight=(float, Field(1.0, gt=0, description="its weight in the ensemble's combination")),
)

StudentStage = _partial(
    DistillConfig, _DistillParts, "StudentStage",
    "One student distilled in score_file mode from the ensemble's teacher file (DistillConfig fields). "
    "teacher.scores and data.queries / passages default to the pipeline's.",
    name=(str, Field(description="student name: its folder and evaluation label")),
    nokd_twin=(bool, Field(False, description="also train `<name>-nokd`: this student with RankNet on the same "
                                              "teacher-score file (the no-KD baseline; not registered)")),
    nokd_twin_concurrent=(bool, Field(False, description=(
        "train the twin at the same time as its KD student, each with its own training.num_workers × "
        "cpus_per_worker (run one after the other, with a note, when the cluster cannot hold both). On a small CPU "
        "machine two 1-core trainings side by side finish sooner than two 2-core ones in a row: one 2-layer MiniLM "
        "step scales only 1.38× from 1 to 2 threads (kd/runtime/concurrent_stages.py)"))),
)

# `combine` is the teachers' (teachers.combine): one place says how the members are combined
ScoreStage = _partial(ScoreTeachersConfig, {"input", "text", "teachers", "output_dir", "mlflow", "combine"},
                      "ScoreStage", "ScoreTeachersConfig without the inputs and outputs the pipeline wires in.")

EvalStage = _partial(
    EvalConfig, {"output_dir", "mlflow"}, "EvalStage",
    "EvalConfig without output_dir/mlflow. The teacher ensemble (as `teacher`) and the students (as student-<name>, "
    "twins student-<name>-nokd) are added to `models`, after any models listed here.",
    teachers=(bool, Field(True, description="evaluate the teacher ensemble too")),
)


class TeachersStage(Strict):
    """The teacher ensemble: given members of any kind (no training) and/or cross-encoders trained here (supervised
    mode), combined by `combine` (kd.teachers.Combination: `mean` is the paper's T2; `zscore` standardises each
    member over the scored set first, so members of different scales — BM25 ≈ 5–40, cosine in [−1, 1] — all
    count)."""

    given: list[TeacherSpec] = []
    train: list[TeacherTrainStage] = []  # type: ignore[valid-type]
    combine: Literal["mean", "zscore"] = "zscore"

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            train = []
            for t in data.get("train") or []:
                if isinstance(t, dict):
                    t = {"student": {"architecture": "bert_cat"}, "loss": {"name": "ranknet"}, **t}
                train.append(t)
            data["train"] = train
        return data


class RayConfig(Strict):
    """address: None → $RAY_ADDRESS (as under `ray job submit`), else a local Ray started by the job."""

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the local Ray (None: all)")


class RegisterStage(RegistryConfig):
    """The pipeline's model: the chosen student's registered version, copied to `name` when given, with `alias`
    set and the evaluation metrics as version tags (`models:/name@alias`)."""

    enabled: bool = True
    select_by: str | None = Field(
        None, description="'<dataset>:<metric>' of the evaluation to pick the best of several students "
                          "(e.g. 'scifact-dev:ndcg@10'); None: each student's best validation metric")


def bm25_defaults(data: dict) -> dict:
    """Fill each given bm25 member's `corpus` (and `use_title`) from the pipeline's `data` section, on the raw input,
    before TeacherSpec validation (which refuses a bm25 member without a corpus)."""
    teachers, text = data.get("teachers"), data.get("data")
    if not isinstance(teachers, dict) or not isinstance(text, dict) or not isinstance(teachers.get("given"), list):
        return data
    given = []
    for t in teachers["given"]:
        if isinstance(t, dict) and t.get("kind") == "bm25":
            t = dict(t)
            if t.get("corpus") is None and text.get("passages") is not None:
                t["corpus"] = text["passages"]
            if "use_title" not in t and "use_title" in text:
                t["use_title"] = text["use_title"]
        given.append(t)
    return {**data, "teachers": {**teachers, "given": given}}
