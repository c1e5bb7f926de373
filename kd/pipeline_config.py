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
    teachers:                              # the members of ONE teacher ensemble, combined by `combine`
      given: [{name: bm25, kind: bm25}, {name: minilm, kind: bi, path: ...}, {name: ce, kind: cross, path: ...}]
      train: [{name: t1, training: {...}}] # members trained here first (supervised BERT_CAT)
      combine: zscore                      # mean (the paper's T2) | zscore (members of different scales)
    score: {batch_size: 32}
    validation: {...}                      # default validation for teachers and students
    students: [{name: s, student: {architecture: bert_dot}, training: {...}, registry: {name: ...},
                nokd_twin: true}]          # + `s-nokd`: the same student trained with RankNet, the KD baseline
    evaluate: {tasks: [...]}               # the ensemble (`teacher`) and the students are added as models
    register: {name: ..., alias: current}

A bm25 member's `corpus` (and `use_title`) default to the pipeline's `data.passages` (and `data.use_title`): BM25's
statistics are those of the collection the triples come from. The evaluate stage evaluates the ensemble the scoring
stage saved (<output_dir>/scores/ensemble) as the model `teacher`, not one model per member.

The no-KD twin (`nokd_twin: true`) is the KD student's DistillConfig with only the loss (RankNet), the run / MLflow
names and the registry (none: the twin is not registered) changed. It reads the SAME teacher-score file — RankNet
ignores the scores — so it gets the identical examples in the identical seeded order for the identical number of
optimizer steps, from the same initialisation: the difference between the two is the teacher's signal alone.

`${KD_RESOURCES}` in any string is the folder of data shipped with the package (kd/resources; the environment
variable KD_RESOURCES overrides it), so the quickstart config works from any working directory.
Import-light: pydantic, yaml and the other config modules only (no torch, ray or mlflow).
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Literal

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

TEACHER_LABEL = "teacher"  # the ensemble's model name in the evaluation
NOKD_SUFFIX = "-nokd"
ROLES = ("bm25", "teacher", "student_nokd", "student_kd")  # + "first_stage" (a non-BM25 run), "model" (listed)


def twin_name(student: str) -> str:
    return student + NOKD_SUFFIX


def student_label(name: str) -> str:
    """A student's (or twin's) model name in the evaluation."""
    return f"student-{name}"


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


def _bm25_defaults(data: dict) -> dict:
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
        return _bm25_defaults(_expand(data, str(resources_dir()))) if isinstance(data, dict) else data

    @field_validator("triples", "teacher_scores")
    @classmethod
    def _triples(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).expanduser().is_file():
            raise ValueError(f"file not found: {v}")
        return v

    # ------------------------------------------------------------------------------------------------- checks
    @model_validator(mode="after")
    def _compose(self):
        errors = self._own_errors()
        if errors:  # the stage configs below would only repeat these
            raise ValueError("\n".join(errors))
        checks = [("mine", self.mine_config)] if self.mine is not None else []
        checks += [(f"teachers.train.{i}", lambda i=i: self.teacher_config(i, triples=_PLACEHOLDER_FILE))
                   for i in range(len(self.teachers.train))]
        if self.teacher_scores is None:
            checks.append(("score", lambda: self.score_config(
                triples=_PLACEHOLDER_FILE, teachers=self.ensemble(_placeholder_folders=True))))
        checks += [(f"students.{i}" + (".nokd_twin" if twin else ""),
                    lambda i=i, twin=twin: self.student_config(i, scores=_PLACEHOLDER_FILE, twin=twin))
                   for _, i, twin in self.trained_students()]
        if self.evaluate is not None:
            checks.append(("evaluate", lambda: self.eval_config(_placeholder_folders=True)))
        for prefix, build in checks:
            try:
                build()
            except (ValidationError, ValueError) as e:
                errors.extend(_stage_lines(prefix, e))
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def _own_errors(self) -> list[str]:
        """The pipeline's own rules (stage wiring, names, twins, registration), before any stage config is built."""
        from kd.catalog import LOSS_KINDS

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
        for what, items in (("teachers", names), ("students", [n for n, _, _ in self.trained_students()])):
            dupes = sorted({n for n in items if items.count(n) > 1})
            if dupes:
                errors.append(f"field {what}: names must be unique (a no-KD twin is <name>{NOKD_SUFFIX}), "
                              f"repeated: {dupes}")
            for n in items:
                try:
                    check_name(n)
                except ValueError as e:
                    errors.append(f"field {what}: name {e}")
        for i, s in enumerate(self.students):
            if s.nokd_twin and s.loss.name in LOSS_KINDS and not LOSS_KINDS[s.loss.name][1]:
                errors.append(f"field students.{i}.nokd_twin: loss {s.loss.name!r} uses no teacher already; the "
                              "twin is a KD student's no-KD baseline")
        if self.evaluates_teacher():
            dense = [t.name for t in self.evaluate.tasks if t.task == "dense"]
            if dense:
                errors.append(f"field evaluate.teachers: the teacher is an ensemble (it re-ranks; no single-vector "
                              f"encoder) and task(s) {dense} are dense retrieval; set evaluate.teachers: false")
        reg = self.registration
        if reg is not None and reg.enabled:
            for i, s in enumerate(self.students):
                if s.registry.name is None:
                    errors.append(f"field students.{i}.registry.name: the register stage needs a registered student "
                                  "(give it a registry name, or set register.enabled: false)")
        if reg is not None and reg.select_by is not None:
            dataset, sep, metric = reg.select_by.rpartition(":")
            if not sep or not dataset or not metric:
                errors.append("field register.select_by: expected '<dataset>:<metric>', e.g. 'dl19:ndcg@10'")
            elif self.evaluate is None or dataset not in {t.name for t in self.evaluate.tasks}:
                errors.append(f"field register.select_by: no evaluation task named {dataset!r}")
            else:
                try:
                    check_metric(metric)
                except ValueError as e:
                    errors.append(f"field register.select_by: {e}")
        return errors

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

    def ensemble_dir(self) -> Path:
        """The teacher ensemble the scoring stage saves (members + fitted combination: kd_ensemble.json)."""
        return self.scores_dir() / "ensemble"

    def eval_dir(self) -> Path:
        return self.out / "eval"

    def summary_file(self) -> Path:
        return self.out / "summary.json"

    def stage_mlflow(self, stage: str) -> MLflowConfig:
        return self.mlflow.model_copy(update={"run_name": f"{self.name}/{stage}"})

    def trained_students(self) -> list[tuple[str, int, bool]]:
        """(name, index into `students`, is a no-KD twin) of every student the pipeline trains, twins right after
        their KD student."""
        out = []
        for i, s in enumerate(self.students):
            out.append((s.name, i, False))
            if s.nokd_twin:
                out.append((twin_name(s.name), i, True))
        return out

    def evaluates_teacher(self) -> bool:
        """The evaluate stage evaluates the scoring stage's ensemble (none without a scoring stage)."""
        return self.evaluate is not None and self.evaluate.teachers and self.teacher_scores is None

    def model_roles(self) -> dict[str, str]:
        """Evaluated model name → role: `teacher`, `student_kd`, `student_nokd` (a twin, or a student whose loss uses
        no teacher), `model` (listed in evaluate.models); first-stage rows (model None) are `bm25`."""
        from kd.catalog import LOSS_KINDS

        roles = {m.name: "model" for m in (self.evaluate.models if self.evaluate else [])}
        if self.evaluates_teacher():
            roles[TEACHER_LABEL] = "teacher"
        for name, i, twin in self.trained_students():
            kd = not twin and LOSS_KINDS.get(self.students[i].loss.name, ("", True))[1]
            roles[student_label(name)] = "student_kd" if kd else "student_nokd"
        return roles

    def nokd_twins(self) -> dict[str, str]:
        """KD student's model name → its no-KD twin's."""
        return {student_label(s.name): student_label(twin_name(s.name)) for s in self.students if s.nokd_twin}

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
        d = spec.model_dump(exclude={"name", "weight"})
        d.update(mode="supervised", data=self._distill_data(spec, triples), validation=self._validation(spec),
                 mlflow=self.stage_mlflow(f"teacher-{spec.name}").model_dump(),
                 run={"name": f"{self.name}-teacher-{spec.name}", "storage_path": str(self.out / "runs")})
        return DistillConfig.model_validate(d)

    def student_config(self, i: int, *, scores: str, twin: bool = False) -> DistillConfig:
        """Student i's distill job; `twin`: its no-KD twin (RankNet, own run/MLflow names, not registered)."""
        spec = self.students[i]
        name = twin_name(spec.name) if twin else spec.name
        d = spec.model_dump(exclude={"name", "nokd_twin"})
        teacher = dict(d.get("teacher") or {})
        teacher["scores"] = teacher.get("scores") or scores
        d.update(mode="score_file", teacher=teacher, data=self._distill_data(spec, None),
                 validation=self._validation(spec), mlflow=self.stage_mlflow(f"student-{name}").model_dump(),
                 run={"name": f"{self.name}-student-{name}", "storage_path": str(self.out / "runs")})
        if twin:
            d.update(loss={"name": "ranknet", "options": {}}, registry=RegistryConfig().model_dump())
        return DistillConfig.model_validate(d)

    def ensemble(self, *, _placeholder_folders: bool = False) -> list[TeacherSpec]:
        """The scoring ensemble's members: given ones as they are (a hub cross-encoder from its materialized kd
        folder), trained ones from their exported folders."""
        out = []
        for t in self.teachers.given:
            if materialized(t):
                t = t.model_copy(update={"path": _PLACEHOLDER_DIR if _placeholder_folders
                                         else str(self.teacher_dir(t.name))})
            out.append(t)
        for t in self.teachers.train:
            path = _PLACEHOLDER_DIR if _placeholder_folders else str(self.teacher_dir(t.name))
            out.append(TeacherSpec(name=t.name, path=path, kind="cross", weight=t.weight))
        return out

    def score_config(self, *, triples: str, teachers: list[TeacherSpec]) -> ScoreTeachersConfig:
        d = self.score.model_dump()
        d.update(input=triples, text=self.data.model_dump(), teachers=[t.model_dump() for t in teachers],
                 combine=self.teachers.combine, output_dir=str(self.scores_dir()),
                 mlflow=self.stage_mlflow("score").model_dump())
        return ScoreTeachersConfig.model_validate(d)

    def eval_config(self, *, _placeholder_folders: bool = False) -> EvalConfig:
        """evaluate's job config: the listed models, then the teacher ensemble (`teacher`), then every trained
        student (twins included) from its folder."""
        stage = self.evaluate
        d = stage.model_dump(exclude={"teachers"})
        models = list(d.get("models") or [])
        folder = (lambda p: _PLACEHOLDER_DIR) if _placeholder_folders else str
        if self.evaluates_teacher():
            models.append(ModelSpec(name=TEACHER_LABEL, path=folder(self.ensemble_dir())).model_dump())
        models += [ModelSpec(name=student_label(n), path=folder(self.student_dir(n))).model_dump()
                   for n, _, _ in self.trained_students()]
        d.update(models=models, output_dir=str(self.eval_dir()),
                 mlflow=self.stage_mlflow("evaluate").model_dump())
        return EvalConfig.model_validate(d)


def materialized(t: TeacherSpec) -> bool:
    """A given cross-encoder named by a hub name (or an HF folder) is saved once as a kd folder, so the ensemble
    folder names local kd folders only. Bi-encoder and BM25 members are used as they are."""
    if t.kind != "cross":
        return False
    return not (Path(t.path).expanduser() / "kd_config.json").is_file()
