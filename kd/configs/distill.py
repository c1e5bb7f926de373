"""Typed config of jobs/distill.py: one student, one loss, one teacher signal (a score file, a model in the loop,
or none in supervised mode), trained with Ray Train + DeepSpeed; every cross-field rule checked here, before Ray."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kd.configs.base import Strict
from kd.configs.catalog import (ARCHITECTURE_OPTIONS, ARCHITECTURES, LAYER_SCHEMES, LOSS_KINDS, LOSS_OPTIONS,
                               saved_num_layers)
from kd.configs.common import MLflowConfig
from kd.configs.fields import Alias, ExistingFile, Metric, SafeName, file_problem, model_source_error

MODES = ("score_file", "in_loop", "embedding", "supervised")
# which losses each mode can train with (kinds come from the loss registry)
MODE_LOSS_KINDS = {
    "score_file": ("pairwise", "pointwise", "listwise"),
    "in_loop": ("logits", "tinybert"),
    "embedding": ("embedding",),
    "supervised": ("pairwise",),
}


class InitConfig(Strict):
    """How the student starts. `backbone`: student.backbone's pretrained weights (optionally truncated to
    `num_layers`); `teacher_layers`: a copy of the teacher with a subset of its layers (scheme + num_layers, or an
    explicit index list); `other_model`: another encoder (student.backbone) + projection to the teacher's width."""

    strategy: Literal["backbone", "teacher_layers", "other_model"] = "backbone"
    layers: str | list[int] | None = None  # top-bottom | uniform | bottom | top | middle | [i, j, ...]
    num_layers: int | None = Field(None, ge=1)


class StudentConfig(Strict):
    architecture: str
    backbone: str = "sentence-transformers/all-MiniLM-L6-v2"
    options: dict[str, Any] = {}
    init: InitConfig = InitConfig()


class LossConfig(Strict):
    """`student_scale` α multiplies the student's scores before a score loss (Margin-MSE, RankNet, …): α·s. It
    changes no ranking, only the scale the loss sees. A student with bounded scores — the cosine of L2-normalised
    embeddings (all-MiniLM-L6-v2's BERT_DOT) is in [−1, 1] — cannot otherwise reach a teacher's margins (a z-scored
    ensemble's are ~0.8 ± 0.9): Margin-MSE then only pushes its margins to saturation. The temperature of
    contrastive bi-encoder losses (sentence-transformers' MultipleNegativesRankingLoss: scale 20) is the same idea."""

    name: str
    options: dict[str, Any] = {}
    student_scale: float = Field(1.0, gt=0)


class TeacherConfig(Strict):
    """score_file: `scores` (published teacher-file format); in_loop / embedding: `model` (a kd folder or HF model)."""

    scores: str | None = None
    model: str | None = None
    kind: Literal["cross", "bi"] = "cross"


class TrainDataConfig(Strict):
    """Training text. score_file reads ids from teacher.scores; supervised / in_loop read id triples (`triples`);
    embedding reads query files (`query_files`: queries.jsonl or id<TAB>text TSV, all their queries)."""

    queries: str | None = None
    passages: str | None = None
    triples: str | None = None
    query_files: list[str] = []
    exclude_query_ids_from: str | None = None  # e.g. a test qrels file: those queries are never trained on
    use_title: bool = True
    max_examples: int | None = Field(None, ge=1)
    strict: bool = True
    prepared: str | None = Field(
        None, description="a folder written by jobs.prepare (score_file / supervised modes): the workers "
                          "memory-map its tokenised examples instead of joining the files above, which may still be "
                          "named and must then be the files it was prepared from (kd/data/prepared.py)")

    @field_validator("prepared")
    @classmethod
    def _prepared_folder(cls, v: str | None) -> str | None:
        """An existing folder, resolved here (the workers may run in another working directory)."""
        if v is None:
            return v
        folder = Path(v).expanduser()
        if not folder.is_dir():
            raise ValueError(f"folder not found: {v} (write it with python -m jobs.prepare)")
        return str(folder.resolve())


class ValidationConfig(Strict):
    """Re-rank the top_k of a dev run every `every_steps` optimizer steps; metric from kd.metrics."""

    run: str | None = None
    qrels: str | None = None
    queries: str | None = None
    passages: str | None = None
    top_k: int = Field(100, ge=1)
    max_queries: int | None = Field(None, ge=1)
    every_steps: int = Field(500, ge=1)
    metric: Metric = "ndcg@10"
    relevance_level: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1)


class FaultInjection(Strict):
    """Testing aid: worker `rank` exits hard at optimizer step `at_step`, once per run (marker file)."""

    at_step: int = Field(ge=1)
    rank: int = Field(0, ge=0)


class TrainingConfig(Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0, description="also the worker's torch thread count on CPU")
    micro_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; caps epochs")
    lr: float = Field(7e-6, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    gradient_clipping: float = Field(1.0, ge=0)
    zero_stage: Literal[0, 1, 2, "auto"] = "auto"  # auto: 2 on GPU, 0 on CPU (ZeRO only costs time in host memory)
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast (fp32 weights and optimizer) where the hardware has native bf16 "
                            "(a CUDA GPU from Ampere on, a CPU with avx512_bf16/amx_bf16), fp32 elsewhere "
                            "(kd.precision.resolve_precision, as for evaluation); bf16: everywhere (warns where "
                            "emulated); fp32: never. The older `bf16: true|false` means auto|fp32")
    seed: int = 42
    group_by_length: int = Field(
        0, ge=0, description="a window in steps: 0 = off (the plain seeded batches); W > 0 = micro-batches of "
                             "examples of similar length, sorted inside mega-batches of W steps "
                             "(kd.training.length_grouped_batches); 50 is HF's largest")
    checkpoint_every: int = Field(100, ge=1)
    num_to_keep: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    log_every: int = Field(10, ge=1)
    fault_injection: FaultInjection | None = None
    deepspeed_config: ExistingFile | None = Field(
        None, description="DeepSpeed JSON (e.g. cluster/deepspeed/zero2.json) merged over the generated config; batch "
                          "sizes, optimizer, scheduler and precision always come from this section")

    @model_validator(mode="before")
    @classmethod
    def _legacy_bf16(cls, data):
        """`bf16: true|false` (before `precision`): true = bf16 where native (auto), false = fp32."""
        if isinstance(data, dict) and "bf16" in data:
            data = dict(data)
            legacy = data.pop("bf16")
            if not isinstance(legacy, bool):
                raise ValueError(f"bf16: true or false (or use precision: auto|fp32|bf16), not {legacy!r}")
            if "precision" in data:
                raise ValueError("give precision or the older bf16, not both")
            data["precision"] = "auto" if legacy else "fp32"
        return data

    @field_validator("group_by_length", mode="before")
    @classmethod
    def _window_not_bool(cls, v):
        """A window size, not a switch: `true` would silently become a window of 1 step, which sorts only inside
        one step's examples (almost no grouping). A size says how much order is traded for less padding: larger
        pads less and shuffles less; HF's group_by_length uses min(50, examples / (4 × batch))."""
        if isinstance(v, bool):
            raise ValueError(f"a window size in steps (e.g. 50), or 0 for off; not {str(v).lower()}")
        return v

    @field_validator("deepspeed_config")
    @classmethod
    def _deepspeed_json(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            data = json.loads(Path(v).expanduser().read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{v}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{v}: a DeepSpeed config is a JSON object")
        stage = (data.get("zero_optimization") or {}).get("stage", 0)
        if stage not in (0, 1, 2):
            raise ValueError(f"{v}: ZeRO stage {stage!r} is not supported by the distill loop (0, 1 or 2: it saves and "
                             "validates the student from full, unpartitioned parameters)")
        return v


class RegistryConfig(Strict):
    """Register the best student as `name` and point `alias` at the new version (`models:/name@alias`)."""

    name: SafeName | None = None  # None: log the model but do not register it
    alias: Alias = "current"
    dataset_tag: str | None = None


class RunSection(Strict):
    name: SafeName  # deterministic: rerunning with the same name resumes (Ray Train folder, MLflow tag kd.run_name)
    storage_path: str = "./outputs/runs"


Errors = list[tuple[str, str]]  # (dotted field, message)


class DistillConfig(Strict):
    mode: Literal["score_file", "in_loop", "embedding", "supervised"]
    student: StudentConfig
    loss: LossConfig
    teacher: TeacherConfig = TeacherConfig()
    data: TrainDataConfig = TrainDataConfig()
    validation: ValidationConfig = ValidationConfig()
    training: TrainingConfig = TrainingConfig()
    registry: RegistryConfig = RegistryConfig()
    mlflow: MLflowConfig = MLflowConfig(experiment="kd-distill")
    run: RunSection

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo):
        errors: Errors = []
        if self.student.architecture not in ARCHITECTURES:
            errors.append(("student.architecture",
                           f"unknown architecture {self.student.architecture!r}; known: {sorted(ARCHITECTURES)}"))
        errors += self._option_errors() + self._loss_errors() + self._mode_errors(info.context)
        errors += self._init_errors() + self._validation_errors(info.context)
        if errors:
            raise ValueError("\n".join(f"field {f}: {m}" for f, m in errors))
        return self

    def _loss_errors(self) -> Errors:
        """loss.name must be known and fit the mode: its kind, and a teacher in every mode but supervised."""
        def fits(name: str) -> bool:
            # score_file also takes a teacher-free pairwise loss: the no-KD twin (RankNet on the labels) of a KD
            # student, trained on the identical examples, order and steps of the same teacher file
            kind, needs_teacher = LOSS_KINDS[name]
            if self.mode == "score_file" and kind == "pairwise" and not needs_teacher:
                return True
            return kind in MODE_LOSS_KINDS[self.mode] and needs_teacher == (self.mode != "supervised")

        if self.loss.name not in LOSS_KINDS:
            return [("loss.name", f"unknown loss {self.loss.name!r}; known: {sorted(LOSS_KINDS)}")]
        if not fits(self.loss.name):
            ok = sorted(n for n in LOSS_KINDS if fits(n))
            return [("loss.name", f"loss {self.loss.name!r} does not fit mode {self.mode!r}; use one of {ok}")]
        if self.loss.student_scale != 1.0 and self.mode not in ("score_file", "supervised"):
            return [("loss.student_scale", f"scales ranking scores; mode {self.mode!r} trains on logits / "
                                           "embeddings: leave it at 1")]
        return []

    def _mode_errors(self, context: Any) -> Errors:
        """The files each mode reads (required, existing), the teacher model and student architecture it needs,
        models that can load (kd.configs.fields.model_source_error)."""
        d, errors = self.data, []
        text = [("data.queries", d.queries), ("data.passages", d.passages)]
        needs_file = {"score_file": [("teacher.scores", self.teacher.scores), *text],
                      "supervised": [("data.triples", d.triples), *text],
                      "in_loop": [("data.triples", d.triples), *text], "embedding": []}[self.mode]
        if d.prepared and self.mode not in ("score_file", "supervised"):
            errors.append(("data.prepared", f"mode {self.mode!r} trains on the raw path only (prepared folders: "
                                            "score_file, supervised)"))
        for field_name, value in needs_file:
            if value is None and d.prepared:  # the prepared folder holds them; named ones must match it
                continue
            problem = f"required in mode {self.mode!r}" if value is None else file_problem(value, context)
            if problem:
                errors.append((field_name, problem))
        if self.mode == "embedding":
            if not d.query_files:
                errors.append(("data.query_files", "embedding mode needs at least one query file"))
            errors += [(f"data.query_files.{i}", file_problem(f, context)) for i, f in enumerate(d.query_files)
                       if file_problem(f, context)]
            if self.student.architecture != "bert_dot":
                errors.append(("student.architecture", "embedding mode trains a bert_dot query encoder"))
        if self.mode in ("in_loop", "embedding") and not self.teacher.model:
            errors.append(("teacher.model", f"mode {self.mode!r} runs a teacher model inside the step"))
        if self.mode == "in_loop" and self.student.architecture != "tinybert_cat":
            errors.append(("student.architecture", "in_loop KD trains a tinybert_cat student (2-class logits)"))
        for field_name, value in (("student.backbone", self.student.backbone), ("teacher.model", self.teacher.model)):
            problem = model_source_error(value, context) if value else None
            if problem:
                errors.append((field_name, problem))
        if d.exclude_query_ids_from and file_problem(d.exclude_query_ids_from, context):
            errors.append(("data.exclude_query_ids_from", file_problem(d.exclude_query_ids_from, context)))
        return errors

    def _init_errors(self) -> Errors:
        """student.init: what each strategy needs, a known scheme, layer indices / counts the source model has."""
        init, errors = self.student.init, []
        if init.strategy == "teacher_layers":
            if not self.teacher.model:
                errors.append(("student.init.strategy", "teacher_layers init needs teacher.model"))
            if init.layers is None:
                errors.append(("student.init.layers", "give a scheme (top-bottom, uniform, ...) or an index list"))
            elif isinstance(init.layers, str) and init.num_layers is None:
                errors.append(("student.init.num_layers", f"scheme {init.layers!r} needs num_layers"))
        if isinstance(init.layers, str) and init.layers not in LAYER_SCHEMES:
            errors.append(("student.init.layers", f"unknown scheme {init.layers!r}; known: {list(LAYER_SCHEMES)}"))
        source = self.teacher.model if init.strategy == "teacher_layers" else self.student.backbone
        total = saved_num_layers(source) if source and (isinstance(init.layers, list) or init.num_layers) else None
        if total is not None:
            bad = [i for i in init.layers if not 0 <= i < total] if isinstance(init.layers, list) else []
            if bad:
                errors.append(("student.init.layers",
                               f"layer indices {bad} out of range for {source} ({total} layers: 0..{total - 1})"))
            if init.num_layers and init.num_layers > total:
                errors.append(("student.init.num_layers", f"{init.num_layers} > the {total} layers of {source}"))
        return errors

    def _validation_errors(self, context: Any) -> Errors:
        v, errors = self.validation, []
        if any([v.run, v.qrels, v.queries, v.passages]) and not all([v.run, v.qrels, v.queries, v.passages]):
            errors.append(("validation", "give all of run, qrels, queries, passages (or none)"))
        for name in ("run", "qrels", "queries", "passages"):
            value = getattr(v, name)
            if value and file_problem(value, context):
                errors.append((f"validation.{name}", file_problem(value, context)))
        return errors

    def _option_errors(self) -> Errors:
        """Keys of student.options / loss.options that the constructor they are passed to does not take.

        student.options go to the architecture's constructor (BertDot's for other_model init); teacher_layers init
        copies the teacher, options and all, so options given there would be dropped. Unknown options used to fail
        only as a TypeError inside the Ray workers, or not at all."""
        errors = []
        strategy = self.student.init.strategy
        if strategy == "teacher_layers" and self.student.options:
            errors.append(("student.options", "teacher_layers init copies the teacher's options; "
                                              f"{sorted(self.student.options)} would be ignored, remove them"))
        architecture = "bert_dot" if strategy == "other_model" else self.student.architecture
        for section, name, options, known in (
                ("student.options", architecture, self.student.options, ARCHITECTURE_OPTIONS),
                ("loss.options", self.loss.name, self.loss.options, LOSS_OPTIONS)):
            if name not in known or section == "student.options" and strategy == "teacher_layers":
                continue
            for key in options:
                if key not in known[name]:
                    allowed = f"its options: {list(known[name])}" if known[name] else "it takes no options"
                    errors.append((f"{section}.{key}", f"{name!r} has no option {key!r}; {allowed}"))
        return errors
