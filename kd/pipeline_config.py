"""Typed config of jobs/pipeline.py: mine → teachers → score → students → evaluate → register.

The pipeline composes the job configs instead of redefining them: each stage section takes the fields of its job's
config (MineTriplesConfig, DistillConfig, ScoreTeachersConfig, EvalConfig) minus the ones the pipeline owns (the
files one stage hands to the next, MLflow, run names). Before any Ray work, every stage's full job config is built
and validated — files that earlier stages will produce stand in as placeholders — so a bad field anywhere fails in
well under a second with its full path (`students.0.loss.name: ...`).

    name: quickstart                       # parent MLflow run, run names, registry defaults
    output_dir: outputs/quickstart         # <output_dir>/{mine,teachers/<t>,scores,students/<s>,eval,runs}
    mlflow: {tracking_uri: sqlite:///mlflow.db, experiment: kd-quickstart}
    data: {queries: ..., passages: ...}    # id → text for every training stage
    mine: {beir: ..., run: ..., n_negatives: 4}      # or `triples: FILE` (given triples, no mining)
    teachers:
      given: [{name: t, path: ..., kind: cross}]    # or train: [{name: t1, training: {...}}] (supervised BERT_CAT)
    score: {batch_size: 32}
    validation: {...}                      # default validation for teachers and students
    students: [{name: s, student: {architecture: bert_dot}, training: {...}, registry: {name: ...}}]
    evaluate: {tasks: [...]}               # teachers and students are added as models automatically
    register: {name: ..., alias: current}

`${KD_RESOURCES}` in any string is the folder of data shipped with the package (kd/resources; the environment
variable KD_RESOURCES overrides it), so the quickstart config works from any working directory.
Import-light: pydantic, yaml and the other config modules only (no torch, ray or mlflow).
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from kd.config import (
    DistillConfig,
    MineTriplesConfig,
    MLflowConfig,
    RegistryConfig,
    SafeName,
    ScoreTeachersConfig,
    Strict,
    TeacherSpec,
    TextSource,
    ValidationConfig,
    check_metric,
    check_name,
)
from kd.eval_config import EvalConfig, ModelSpec

# stand-ins for files and folders that earlier stages produce (only their existence matters to the validators)
_PLACEHOLDER_FILE = str(Path(__file__).resolve())
_PLACEHOLDER_DIR = str(Path(__file__).resolve().parent)


def resources_dir() -> Path:
    """Data shipped inside the package (kd/resources); $KD_RESOURCES overrides it."""
    env = os.environ.get("KD_RESOURCES")
    return Path(env) if env else Path(__file__).resolve().parent / "resources"


def _expand(value: Any, resources: str) -> Any:
    if isinstance(value, str):
        return value.replace("${KD_RESOURCES}", resources)
    if isinstance(value, dict):
        return {k: _expand(v, resources) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, resources) for v in value]
    return value


def _partial(cls, exclude: set[str], model_name: str, doc: str, **extra):
    """A section class with `cls`'s fields (types, defaults, constraints, descriptions) minus `exclude`."""
    fields = {n: (f.annotation, copy.copy(f)) for n, f in cls.model_fields.items() if n not in exclude}
    fields.update(extra)
    return create_model(model_name, __base__=Strict, __doc__=doc, **fields)


# ---------------------------------------------------------------------------------------------------- sections
MineStage = _partial(MineTriplesConfig, {"output", "bm25_run_out"}, "MineStage",
                     "MineTriplesConfig without `output` (the pipeline writes <output_dir>/mine/triples.tsv and, when "
                     "BM25 runs, <output_dir>/mine/bm25.<split>.trec).")

_DistillParts = {"mode", "run", "mlflow"}

TeacherTrainStage = _partial(
    DistillConfig, _DistillParts | {"teacher"}, "TeacherTrainStage",
    "One teacher trained in supervised mode (DistillConfig fields; default a BERT_CAT on the student backbone with "
    "RankNet). data.triples / queries / passages default to the pipeline's.",
    name=(str, Field(description="teacher name: its folder, scoring column and evaluation label")),
)

StudentStage = _partial(
    DistillConfig, _DistillParts, "StudentStage",
    "One student distilled in score_file mode from the ensemble's teacher file (DistillConfig fields). "
    "teacher.scores and data.queries / passages default to the pipeline's.",
    name=(str, Field(description="student name: its folder and evaluation label")),
)

ScoreStage = _partial(ScoreTeachersConfig, {"input", "text", "teachers", "output_dir", "mlflow"}, "ScoreStage",
                      "ScoreTeachersConfig without the inputs and outputs the pipeline wires in.")

EvalStage = _partial(
    EvalConfig, {"output_dir", "mlflow"}, "EvalStage",
    "EvalConfig without output_dir/mlflow. The pipeline's teachers and students are added to `models` (as "
    "teacher-<name>, student-<name>), after any models listed here.",
    teachers=(bool, Field(True, description="evaluate the teachers too")),
)


class TeachersStage(Strict):
    """The teacher ensemble: given teachers (no training) and/or teachers trained here (supervised mode)."""

    given: list[TeacherSpec] = []
    train: list[TeacherTrainStage] = []  # type: ignore[valid-type]

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


def _stage_lines(prefix: str, err: Exception) -> list[str]:
    """A composed job config's errors, renamed into the pipeline's field paths."""
    lines: list[str] = []
    if isinstance(err, ValidationError):
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            if e["loc"]:
                lines.append(f"field {prefix}.{'.'.join(str(p) for p in e['loc'])}: {msg}")
            else:
                lines.extend(re.sub(r"^field ", f"field {prefix}.", ln) if ln.startswith("field ")
                             else f"{prefix}: {ln}" for ln in msg.splitlines())
    else:
        lines.append(f"{prefix}: {err}")
    return lines


class PipelineConfig(Strict):
    """jobs/pipeline.py: the end-to-end pipeline (see the module docstring)."""

    name: SafeName = Field(description="pipeline name: parent MLflow run, Ray Train run names")
    output_dir: str = "outputs/pipeline"
    mlflow: MLflowConfig = MLflowConfig(experiment="kd-pipeline")
    ray: RayConfig = RayConfig()
    data: TextSource
    teacher_scores: str | None = Field(None, description="a given teacher-score file (e.g. the published T2 ensemble's "
                                         "bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv): no mining, teacher "
                                         "or scoring stage")
    triples: str | None = Field(None, description="given id triples (qid pos neg): no mining stage")
    mine: MineStage | None = None  # type: ignore[valid-type]
    teachers: TeachersStage = TeachersStage()
    score: ScoreStage = ScoreStage()  # type: ignore[valid-type]
    validation: ValidationConfig | None = Field(None, description="default validation of teachers and students")
    students: list[StudentStage] = Field(min_length=1)  # type: ignore[valid-type]
    evaluate: EvalStage | None = None  # type: ignore[valid-type]
    # `register` in YAML (the field is named otherwise: BaseModel's metaclass already has a `register`)
    registration: RegisterStage | None = Field(RegisterStage(), alias="register")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _resources(cls, data: Any) -> Any:
        return _expand(data, str(resources_dir())) if isinstance(data, dict) else data

    @field_validator("triples", "teacher_scores")
    @classmethod
    def _triples(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"file not found: {v}")
        return v

    # ------------------------------------------------------------------------------------------------- checks
    @model_validator(mode="after")
    def _compose(self):
        errors: list[str] = []
        if self.teacher_scores is not None:
            for key in ("triples", "mine"):
                if getattr(self, key) is not None:
                    errors.append(f"field {key}: not used with a given teacher_scores file (no scoring stage)")
            if self.teachers.given or self.teachers.train:
                errors.append("field teachers: not used with a given teacher_scores file (no scoring stage)")
        else:
            if (self.triples is None) == (self.mine is None):
                errors.append("field mine: give either `mine` (mine triples) or `triples` (a given triples file)")
            if not self.teachers.given and not self.teachers.train:
                errors.append("field teachers: give teachers (`given`) or train at least one (`train`), or a "
                              "teacher_scores file")
        names = [t.name for t in self.teachers.given] + [t.name for t in self.teachers.train]
        for what, items in (("teachers", names), ("students", [s.name for s in self.students])):
            dupes = sorted({n for n in items if items.count(n) > 1})
            if dupes:
                errors.append(f"field {what}: names must be unique, repeated: {dupes}")
            for n in items:
                try:
                    check_name(n)
                except ValueError as e:
                    errors.append(f"field {what}: name {e}")
        if self.registration is not None and self.registration.enabled:
            for i, s in enumerate(self.students):
                if s.registry.name is None:
                    errors.append(f"field students.{i}.registry.name: the register stage needs a registered student "
                                  "(give it a registry name, or set register.enabled: false)")
        if self.registration is not None and self.registration.select_by is not None:
            dataset, sep, metric = self.registration.select_by.rpartition(":")
            if not sep or not dataset or not metric:
                errors.append("field register.select_by: expected '<dataset>:<metric>', e.g. 'dl19:ndcg@10'")
            elif self.evaluate is None or dataset not in {t.name for t in self.evaluate.tasks}:
                errors.append(f"field register.select_by: no evaluation task named {dataset!r}")
            else:
                try:
                    check_metric(metric)
                except ValueError as e:
                    errors.append(f"field register.select_by: {e}")
        if errors:  # the stage configs below would only repeat these
            raise ValueError("\n".join(errors))
        checks = [("mine", lambda: self.mine_config()) if self.mine is not None else None]
        checks += [(f"teachers.train.{i}", lambda i=i: self.teacher_config(i, triples=_PLACEHOLDER_FILE))
                   for i in range(len(self.teachers.train))]
        if self.teacher_scores is None:
            checks.append(("score", lambda: self.score_config(
                triples=_PLACEHOLDER_FILE, teachers=self.ensemble(_placeholder_folders=True))))
        checks += [(f"students.{i}", lambda i=i: self.student_config(i, scores=_PLACEHOLDER_FILE))
                   for i in range(len(self.students))]
        if self.evaluate is not None:
            checks.append(("evaluate", lambda: self.eval_config(
                teachers=self.ensemble(_placeholder_folders=True),
                students={s.name: _PLACEHOLDER_DIR for s in self.students})))
        for item in filter(None, checks):
            prefix, build = item
            try:
                build()
            except (ValidationError, ValueError) as e:
                errors.extend(_stage_lines(prefix, e))
        if errors:
            raise ValueError("\n".join(errors))
        return self

    # --------------------------------------------------------------------------------------------- layout
    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    def triples_path(self) -> str:
        return self.triples if self.triples is not None else str(self.out / "mine" / "triples.tsv")

    def teacher_dir(self, name: str) -> Path:
        return self.out / "teachers" / name

    def student_dir(self, name: str) -> Path:
        return self.out / "students" / name

    def scores_dir(self) -> Path:
        return self.out / "scores"

    def scores_file(self) -> str:
        return self.teacher_scores or str(self.scores_dir() / "teacher_scores.tsv")

    def eval_dir(self) -> Path:
        return self.out / "eval"

    def stage_mlflow(self, stage: str) -> MLflowConfig:
        return self.mlflow.model_copy(update={"run_name": f"{self.name}/{stage}"})

    # ------------------------------------------------------------------------------------ composed job configs
    def mine_config(self) -> MineTriplesConfig:
        data = self.mine.model_dump()
        data["output"] = str(self.out / "mine" / "triples.tsv")
        if data.get("run") is None:
            data["bm25_run_out"] = str(self.out / "mine" / f"bm25.{data['split']}.trec")
        return MineTriplesConfig.model_validate(data)

    def _distill_data(self, spec, triples: str | None) -> dict:
        data = spec.data.model_dump()
        data.setdefault("use_title", self.data.use_title)
        for key, value in (("queries", self.data.queries), ("passages", self.data.passages), ("triples", triples)):
            if data.get(key) is None and value is not None:
                data[key] = value
        return data

    def _validation(self, spec) -> dict:
        """The pipeline's `validation`, with whatever a teacher or student sets differently from the defaults."""
        own = spec.validation.model_dump()
        if self.validation is None:
            return own
        defaults = {k: f.default for k, f in ValidationConfig.model_fields.items()}
        return {**self.validation.model_dump(), **{k: v for k, v in own.items() if v != defaults[k]}}

    def teacher_config(self, i: int, *, triples: str) -> DistillConfig:
        spec = self.teachers.train[i]
        d = spec.model_dump(exclude={"name"})
        d.update(mode="supervised", data=self._distill_data(spec, triples), validation=self._validation(spec),
                 mlflow=self.stage_mlflow(f"teacher-{spec.name}").model_dump(),
                 run={"name": f"{self.name}-teacher-{spec.name}", "storage_path": str(self.out / "runs")})
        return DistillConfig.model_validate(d)

    def student_config(self, i: int, *, scores: str) -> DistillConfig:
        spec = self.students[i]
        d = spec.model_dump(exclude={"name"})
        teacher = dict(d.get("teacher") or {})
        teacher["scores"] = teacher.get("scores") or scores
        d.update(mode="score_file", teacher=teacher, data=self._distill_data(spec, None),
                 validation=self._validation(spec), mlflow=self.stage_mlflow(f"student-{spec.name}").model_dump(),
                 run={"name": f"{self.name}-student-{spec.name}", "storage_path": str(self.out / "runs")})
        return DistillConfig.model_validate(d)

    def ensemble(self, *, _placeholder_folders: bool = False) -> list[TeacherSpec]:
        """The scoring ensemble: given teachers as they are, trained ones from their exported folders."""
        out = []
        for t in self.teachers.given:
            if materialized(t):
                t = t.model_copy(update={"path": _PLACEHOLDER_DIR if _placeholder_folders
                                         else str(self.teacher_dir(t.name))})
            out.append(t)
        for t in self.teachers.train:
            path = _PLACEHOLDER_DIR if _placeholder_folders else str(self.teacher_dir(t.name))
            out.append(TeacherSpec(name=t.name, path=path, kind="cross"))
        return out

    def score_config(self, *, triples: str, teachers: list[TeacherSpec]) -> ScoreTeachersConfig:
        d = self.score.model_dump()
        d.update(input=triples, text=self.data.model_dump(), teachers=[t.model_dump() for t in teachers],
                 output_dir=str(self.scores_dir()), mlflow=self.stage_mlflow("score").model_dump())
        return ScoreTeachersConfig.model_validate(d)

    def eval_config(self, *, teachers: list[TeacherSpec], students: dict[str, str]) -> EvalConfig:
        stage = self.evaluate
        d = stage.model_dump(exclude={"teachers"})
        models = list(d.get("models") or [])
        if stage.teachers:
            models += [ModelSpec(name=f"teacher-{t.name}", path=t.path).model_dump() for t in teachers]
        models += [ModelSpec(name=f"student-{n}", path=p).model_dump() for n, p in students.items()]
        d.update(models=models, output_dir=str(self.eval_dir()),
                 mlflow=self.stage_mlflow("evaluate").model_dump())
        return EvalConfig.model_validate(d)


def materialized(t: TeacherSpec) -> bool:
    """A given cross-encoder named by a hub name (or an HF folder) is saved once as a kd folder, so evaluation
    loads it as a cross-encoder (an HF name alone would be read as a bi-encoder there)."""
    if t.kind != "cross":
        return False
    return not (Path(t.path).expanduser() / "kd_config.json").is_file()

