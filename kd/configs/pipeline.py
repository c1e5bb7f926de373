"""Typed config of jobs/pipeline.py: mine → teachers → score → students → evaluate → register.

The pipeline composes the job configs instead of redefining them: each stage section takes the fields of its job's
config (MineTriplesConfig, DistillConfig, ScoreTeachersConfig, EvalConfig) minus the ones the pipeline owns (the
files one stage hands to the next, MLflow, run names). Before any Ray work, every stage's full job config is built
and validated on its real paths — the files and folders earlier stages will write count as existing there
(kd.configs.fields.planned_context) — so a bad field anywhere fails in well under a second with its full path
(`students.0.loss.name: ...`).

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

The no-KD twin (`nokd_twin: true`) is the KD student's DistillConfig with only the loss (RankNet; its
`loss.student_scale` kept), the run / MLflow names and the registry (none: the twin is not registered) changed. It reads the SAME teacher-score file — RankNet
ignores the scores — so it gets the identical examples in the identical seeded order for the identical number of
optimizer steps, from the same initialisation: the difference between the two is the teacher's signal alone.

`${KD_RESOURCES}` in any string is the folder of data shipped with the package (kd/resources; the environment
variable KD_RESOURCES overrides it), so the quickstart config works from any working directory. The stage sections
are kd.configs.pipeline_stages. Import-light: pydantic, yaml and the other config modules only (no torch, ray or
mlflow).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kd.configs.base import Strict
from kd.configs.catalog import LOSS_KINDS, resources_dir
from kd.configs.common import MLflowConfig, TextSource
from kd.configs.distill import DistillConfig, RegistryConfig, ValidationConfig
from kd.configs.errors import error_lines
from kd.configs.evaluate import EvalConfig
from kd.configs.fields import ExistingFile, SafeName, check_metric, check_name, planned_context, repeated
from kd.configs.mine import MineTriplesConfig
from kd.configs.pipeline_stages import (NOKD_SUFFIX, TEACHER_LABEL, EvalStage, MineStage, RayConfig, RegisterStage,
                                        ScoreStage, StudentStage, TeachersStage, bm25_defaults, expand_resources,
                                        materialized, student_label, twin_name)
from kd.configs.score_teachers import ScoreTeachersConfig, TeacherSpec


class PipelineConfig(Strict):
    """jobs/pipeline.py: the end-to-end pipeline (see the module docstring)."""

    name: SafeName = Field(description="pipeline name: parent MLflow run, Ray Train run names")
    output_dir: str = "outputs/pipeline"
    mlflow: MLflowConfig = MLflowConfig(experiment="kd-pipeline")
    ray: RayConfig = RayConfig()
    data: TextSource
    teacher_scores: ExistingFile | None = Field(
        None, description="a given teacher-score file (e.g. the published T2 ensemble's "
                          "bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv): no mining, teacher or scoring stage")
    triples: ExistingFile | None = Field(None, description="given id triples (qid pos neg): no mining stage")
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
        return bm25_defaults(expand_resources(data, str(resources_dir()))) if isinstance(data, dict) else data

    # ------------------------------------------------------------------------------------------------- checks
    @model_validator(mode="after")
    def _compose(self):
        """Every stage's job config, built and validated as it will run (see the module docstring)."""
        errors = self._own_errors()
        if errors:  # the stage configs below would only repeat these
            raise ValueError("\n".join(errors))
        checks: list[tuple[str, Callable[[], BaseModel]]] = []
        if self.mine is not None:
            checks.append(("mine", self.mine_config))
        checks += [(f"teachers.train.{i}",
                    lambda i=i: self.teacher_config(i, triples=self.triples_path(), planned=True))
                   for i in range(len(self.teachers.train))]
        if self.teacher_scores is None:
            checks.append(("score", lambda: self.score_config(triples=self.triples_path(), teachers=self.ensemble(),
                                                              planned=True)))
        checks += [(f"students.{i}" + (".nokd_twin" if twin else ""),
                    lambda i=i, twin=twin: self.student_config(i, scores=self.scores_file(), twin=twin, planned=True))
                   for _, i, twin in self.trained_students()]
        if self.evaluate is not None:
            checks.append(("evaluate", lambda: self.eval_config(planned=True)))
        for prefix, build in checks:
            try:
                build()
            except (ValidationError, ValueError) as e:
                errors.extend(error_lines(e, prefix))
        if errors:
            raise ValueError("\n".join(errors))
        return self

    def _own_errors(self) -> list[str]:
        """The pipeline's own rules (stage wiring, names, twins, registration), before any stage config is built."""
        errors = self._wiring_errors()
        names = [t.name for t in self.teachers.given] + [t.name for t in self.teachers.train]
        for what, items in (("teachers", names), ("students", [n for n, _, _ in self.trained_students()])):
            dupes = repeated(items)
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
            if s.nokd_twin_concurrent and not s.nokd_twin:
                errors.append(f"field students.{i}.nokd_twin_concurrent: needs nokd_twin: true (there is no twin "
                              "to train beside the student)")
        if self.evaluates_teacher():
            dense = [t.name for t in self.evaluate.tasks if t.task == "dense"]
            if dense:
                errors.append(f"field evaluate.teachers: the teacher is an ensemble (it re-ranks; no single-vector "
                              f"encoder) and task(s) {dense} are dense retrieval; set evaluate.teachers: false")
        return errors + self._register_errors()

    def _wiring_errors(self) -> list[str]:
        """Which stages there are: a given teacher file replaces mining, teachers and scoring; else triples come
        from exactly one of `mine` and `triples`, and there is at least one teacher."""
        errors: list[str] = []
        if self.teacher_scores is not None:
            for key in ("triples", "mine"):
                if getattr(self, key) is not None:
                    errors.append(f"field {key}: not used with a given teacher_scores file (no scoring stage)")
            if self.teachers.given or self.teachers.train:
                errors.append("field teachers: not used with a given teacher_scores file (no scoring stage)")
            return errors
        if (self.triples is None) == (self.mine is None):
            errors.append("field mine: give either `mine` (mine triples) or `triples` (a given triples file)")
        if not self.teachers.given and not self.teachers.train:
            errors.append("field teachers: give teachers (`given`) or train at least one (`train`), or a "
                          "teacher_scores file")
        return errors

    def _register_errors(self) -> list[str]:
        errors: list[str] = []
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

    def planned_outputs(self) -> list[str]:
        """The files and folders that stages write and later stages read: the mined triples, the teachers'
        folders, the teacher-score file and the ensemble, the students' folders."""
        out = [self.triples_path()] if self.mine is not None else []
        if self.teacher_scores is None:
            out += [str(self.teacher_dir(t.name)) for t in self.teachers.given if materialized(t)]
            out += [str(self.teacher_dir(t.name)) for t in self.teachers.train]
            out += [self.scores_file(), str(self.ensemble_dir())]
        return out + [str(self.student_dir(n)) for n, _, _ in self.trained_students()]

    def _validate(self, cls: type[BaseModel], data: dict, planned: bool) -> Any:
        """`cls` validated from `data`; `planned`: before the stages run, with `planned_outputs` counted as there."""
        return cls.model_validate(data, context=planned_context(self.planned_outputs()) if planned else None)

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

    def teacher_config(self, i: int, *, triples: str, planned: bool = False) -> DistillConfig:
        spec = self.teachers.train[i]
        d = spec.model_dump(exclude={"name", "weight"})
        d.update(mode="supervised", data=self._distill_data(spec, triples), validation=self._validation(spec),
                 mlflow=self.stage_mlflow(f"teacher-{spec.name}").model_dump(),
                 run={"name": f"{self.name}-teacher-{spec.name}", "storage_path": str(self.out / "runs")})
        return self._validate(DistillConfig, d, planned)

    def student_config(self, i: int, *, scores: str, twin: bool = False, planned: bool = False) -> DistillConfig:
        """Student i's distill job; `twin`: its no-KD twin (RankNet, own run/MLflow names, not registered)."""
        spec = self.students[i]
        name = twin_name(spec.name) if twin else spec.name
        d = spec.model_dump(exclude={"name", "nokd_twin", "nokd_twin_concurrent"})
        teacher = dict(d.get("teacher") or {})
        teacher["scores"] = teacher.get("scores") or scores
        d.update(mode="score_file", teacher=teacher, data=self._distill_data(spec, None),
                 validation=self._validation(spec), mlflow=self.stage_mlflow(f"student-{name}").model_dump(),
                 run={"name": f"{self.name}-student-{name}", "storage_path": str(self.out / "runs")})
        if twin:
            # the same student's scores, so the same loss.student_scale: only the teacher signal differs
            d.update(loss={"name": "ranknet", "options": {}, "student_scale": d["loss"].get("student_scale", 1.0)},
                     registry=RegistryConfig().model_dump())
        return self._validate(DistillConfig, d, planned)

    def ensemble(self) -> list[TeacherSpec]:
        """The scoring ensemble's members: given ones as they are (a hub cross-encoder from its materialized kd
        folder), trained ones from their exported folders."""
        out = [t.model_copy(update={"path": str(self.teacher_dir(t.name))}) if materialized(t) else t
               for t in self.teachers.given]
        return out + [TeacherSpec.model_construct(name=t.name, path=str(self.teacher_dir(t.name)), kind="cross",
                                                  weight=t.weight) for t in self.teachers.train]

    def score_config(self, *, triples: str, teachers: list[TeacherSpec], planned: bool = False) -> ScoreTeachersConfig:
        d = self.score.model_dump()
        d.update(input=triples, text=self.data.model_dump(), teachers=[t.model_dump() for t in teachers],
                 combine=self.teachers.combine, output_dir=str(self.scores_dir()),
                 mlflow=self.stage_mlflow("score").model_dump())
        return self._validate(ScoreTeachersConfig, d, planned)

    def eval_config(self, *, planned: bool = False, _placeholder_folders: bool = False) -> EvalConfig:
        """evaluate's job config: the listed models, then the teacher ensemble (`teacher`), then every trained
        student (twins included) from its folder. `planned`: validated before the stages that fill those folders
        have run (`_placeholder_folders` is its former name)."""
        d = self.evaluate.model_dump(exclude={"teachers"})
        models = list(d.get("models") or [])
        if self.evaluates_teacher():
            models.append({"name": TEACHER_LABEL, "path": str(self.ensemble_dir())})
        models += [{"name": student_label(n), "path": str(self.student_dir(n))} for n, _, _ in self.trained_students()]
        d.update(models=models, output_dir=str(self.eval_dir()), mlflow=self.stage_mlflow("evaluate").model_dump())
        return self._validate(EvalConfig, d, planned or _placeholder_folders)
