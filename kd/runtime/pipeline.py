"""jobs/pipeline.py runtime: mine → teachers → score → students → evaluate → register, resumable, tracked in MLflow.

Stages run in order; each writes a completion marker `<output_dir>/stages/<stage>.json` (its summary) last, after its
output, and a stage whose marker and output both exist is skipped — printed as `skipped (output exists: …)` — so an
interrupted pipeline picks up where it stopped (the distill and scoring jobs also resume inside a stage). To redo a
stage, delete its marker (and output).

MLflow: one parent run per pipeline (tag kd.pipeline=<name>; a rerun reuses it) and one run per stage nested under
it (`mlflow.parentRunId`): the distill jobs' runs are created nested, the scoring job's run is adopted when it ends,
mine / evaluate / register runs are created here (the evaluation's per-(model, dataset) runs nest under the
evaluate run). Ray starts (or is joined, under `ray job submit`) only when a stage needs it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable

from kd.config import to_flat_dict
from kd.pipeline_config import PipelineConfig, materialized

logger = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"


def _say(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ set-up
def absolute(cfg: PipelineConfig) -> PipelineConfig:
    """Resolve the paths the pipeline hands between processes (Ray workers may run elsewhere) and a relative sqlite
    tracking URI (`sqlite:///mlflow.db` means the working folder's mlflow.db, in every process)."""
    d = cfg.model_dump()
    d["output_dir"] = str(Path(cfg.output_dir).expanduser().resolve())
    for key in ("queries", "passages"):
        d["data"][key] = str(Path(d["data"][key]).expanduser().resolve())
    for key in ("triples", "teacher_scores"):
        if d.get(key):
            d[key] = str(Path(d[key]).expanduser().resolve())
    for t in d["teachers"]["given"]:
        if Path(t["path"]).expanduser().exists():
            t["path"] = str(Path(t["path"]).expanduser().resolve())
    d["mlflow"]["tracking_uri"] = absolute_tracking_uri(cfg.mlflow.tracking_uri)
    return PipelineConfig.model_validate(d)


def absolute_tracking_uri(uri: str | None) -> str | None:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def _fingerprint(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj):
        return asdict(obj)
    return obj


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _copy_folder(src: Path, dst: Path) -> Path:
    """Copy a model folder into place atomically (a half-copied folder never looks complete)."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst


# ---------------------------------------------------------------------------------------------- tracking
class Tracker:
    """The pipeline's parent MLflow run and its stage runs (MlflowClient only: no active-run state in this
    process, so the stage runtimes are free to start their own runs).

    The runs it created and has not ended yet are kept (`open`): when a stage raises, Ctrl+C and SIGTERM included,
    `end_open` ends them and the parent KILLED / FAILED (`run_status`) instead of leaving them RUNNING."""

    def __init__(self, cfg: PipelineConfig):
        self.cfg = cfg
        self.enabled = cfg.mlflow.enabled
        self.client = None
        self.experiment_id: str | None = None
        self.parent_id: str | None = None
        self.open: list[str] = []

    def start(self, config_dump: dict) -> None:
        if not self.enabled:
            return
        import mlflow
        from mlflow import MlflowClient

        from kd.runtime.tracking import filter_literal, git_commit, use_experiment

        use_experiment(self.cfg.mlflow)
        self.client = MlflowClient()
        self.experiment_id = mlflow.get_experiment_by_name(self.cfg.mlflow.experiment).experiment_id
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`kd.pipeline` = {filter_literal(self.cfg.name)} and tags.`kd.job` = 'pipeline'",
            order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
            _say(f"MLflow: resuming pipeline run {self.parent_id}")
            return
        run = self.client.create_run(self.experiment_id, run_name=self.cfg.name, tags={
            "kd.pipeline": self.cfg.name, "kd.job": "pipeline", "kd.git_commit": git_commit() or "unknown"})
        self.parent_id = run.info.run_id
        self.params(self.parent_id, to_flat_dict_dump(config_dump))
        _say(f"MLflow: pipeline run {self.parent_id} in experiment {self.cfg.mlflow.experiment!r}")

    def child_tags(self, stage: str) -> dict[str, str]:
        tags = {"kd.pipeline": self.cfg.name, "kd.stage": stage}
        if self.parent_id:
            tags[PARENT_TAG] = self.parent_id
        return tags

    def create(self, stage: str, params: dict | None = None, tags: dict | None = None) -> str | None:
        if not self.enabled:
            return None
        from kd.runtime.tracking import git_commit

        run = self.client.create_run(self.experiment_id, run_name=f"{self.cfg.name}/{stage}", tags={
            **self.child_tags(stage), "kd.job": f"pipeline.{stage.split('-')[0]}",
            "kd.git_commit": git_commit() or "unknown", **(tags or {})})
        self.open.append(run.info.run_id)
        if params:
            self.params(run.info.run_id, params)
        return run.info.run_id

    def params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def metrics(self, run_id: str | None, metrics: dict[str, float]) -> None:
        if run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float))]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def adopt(self, run_id: str | None, stage: str) -> None:
        """Nest a run that a stage runtime created on its own under the pipeline run."""
        if run_id is None or not self.enabled:
            return
        for k, v in self.child_tags(stage).items():
            self.client.set_tag(run_id, k, v)

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id is not None:
            self.client.set_terminated(run_id, status=status)
            if run_id in self.open:
                self.open.remove(run_id)

    def end_open(self, exc: BaseException) -> None:
        """A stage raised `exc`: end the stage runs still open, then the parent, with `run_status(exc)`."""
        from kd.runtime.interrupts import run_status

        status = run_status(exc)
        for run_id in [*self.open, self.parent_id]:
            if run_id is None:
                continue
            try:
                self.end(run_id, status)
            except Exception as e:  # noqa: BLE001 - the stage's own error is the one to report
                logger.warning("could not end MLflow run %s as %s: %s", run_id, status, e)


def to_flat_dict_dump(dump: dict, prefix: str = "") -> dict:
    out: dict = {}

    def walk(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        else:
            out[key] = value

    walk(prefix.rstrip("."), dump)
    return out


# ------------------------------------------------------------------------------------------------ stages
@dataclass
class Stage:
    name: str
    output: Path  # what the stage produces (shown when skipped)
    fn: Callable[[], dict]
    needs_ray: bool = False
    fingerprint: str = ""


class Pipeline:
    def __init__(self, cfg: PipelineConfig):
        self.cfg = absolute(cfg)
        self.tracker = Tracker(self.cfg)
        self.ray_started = False

    # ----------------------------------------------------------------------------------------- plan
    def marker(self, stage: str) -> Path:
        return self.cfg.out / "stages" / f"{stage}.json"

    def read_marker(self, stage: str) -> dict:
        return json.loads(self.marker(stage).read_text())

    def plan(self) -> list[Stage]:
        cfg = self.cfg
        stages: list[Stage] = []
        if cfg.mine is not None:
            stages.append(Stage("mine", Path(cfg.triples_path()), self.mine, fingerprint=_fingerprint(
                cfg.mine.model_dump())))
        for t in cfg.teachers.given:
            if materialized(t):
                stages.append(Stage(f"teacher-{t.name}", cfg.teacher_dir(t.name), lambda t=t: self.materialize(t),
                                    fingerprint=_fingerprint(t.model_dump())))
        for i, t in enumerate(cfg.teachers.train):
            stages.append(Stage(f"teacher-{t.name}", cfg.teacher_dir(t.name), lambda i=i: self.train_teacher(i),
                                needs_ray=True, fingerprint=_fingerprint(t.model_dump())))
        if cfg.teacher_scores is None:
            stages.append(Stage("score", cfg.scores_dir() / "teacher_scores.tsv", self.score, needs_ray=True,
                                fingerprint=_fingerprint(cfg.score.model_dump())))
        for i, s in enumerate(cfg.students):
            stages.append(Stage(f"student-{s.name}", cfg.student_dir(s.name), lambda i=i: self.train_student(i),
                                needs_ray=True, fingerprint=_fingerprint(s.model_dump())))
        if cfg.evaluate is not None:
            stages.append(Stage("evaluate", cfg.eval_dir() / "results.json", self.evaluate,
                                needs_ray=cfg.evaluate.compute.backend != "local",
                                fingerprint=_fingerprint(cfg.evaluate.model_dump())))
        if cfg.registration is not None and cfg.registration.enabled:
            stages.append(Stage("register", self.marker("register"), self.register,
                                fingerprint=_fingerprint(cfg.registration.model_dump())))
        return stages

    def done(self, stage: Stage) -> bool:
        return self.marker(stage.name).is_file() and stage.output.exists()

    def ensure_ray(self) -> None:
        if not self.ray_started:
            from kd.runtime.cluster import ensure_ray

            ensure_ray(self.cfg.ray.address, self.cfg.ray.num_cpus)
            self.ray_started = True

    # ------------------------------------------------------------------------------------------ run
    def run(self) -> dict:
        cfg = self.cfg
        cfg.out.mkdir(parents=True, exist_ok=True)
        stages = self.plan()
        _say(f"pipeline {cfg.name}: {' → '.join(s.name for s in stages)}  (outputs: {cfg.out})")
        self.tracker.start(cfg.model_dump(mode="json"))
        timings: dict[str, float] = {}
        try:
            for n, stage in enumerate(stages, 1):
                head = f"[{n}/{len(stages)} {stage.name}]"
                if self.done(stage):
                    old = self.read_marker(stage.name)
                    note = ""
                    if old.get("_fingerprint") not in (None, stage.fingerprint):
                        note = f"; its config changed since — delete {self.marker(stage.name)} to redo it"
                    _say(f"{head} skipped (output exists: {stage.output}{note})")
                    continue
                _say(f"{head} running")
                if stage.needs_ray:
                    self.ensure_ray()
                t0 = time.perf_counter()
                summary = stage.fn()
                seconds = time.perf_counter() - t0
                timings[stage.name] = seconds
                _write_json(self.marker(stage.name), {**summary, "_seconds": seconds,
                                                      "_fingerprint": stage.fingerprint})
                _say(f"{head} done in {seconds:.0f} s")
        except BaseException as exc:
            self.tracker.end_open(exc)
            raise
        result = self.summary()
        if self.tracker.parent_id:
            self.tracker.metrics(self.tracker.parent_id, {f"stage_seconds.{k}": v for k, v in timings.items()})
            self.tracker.client.log_text(self.tracker.parent_id, result["table"], "summary.txt")
            if result.get("model_uri"):
                self.tracker.client.set_tag(self.tracker.parent_id, "kd.model_uri", result["model_uri"])
            self.tracker.end(self.tracker.parent_id)
        return result

    # ------------------------------------------------------------------------------------- stage bodies
    def mine(self) -> dict:
        from kd.data.mine_file import mine_to_file

        mc = self.cfg.mine_config()
        run_id = self.tracker.create("mine", params=to_flat_dict(mc))
        n, mined = mine_to_file(mc)  # the job's body: the same checks before anything is written
        out = Path(mc.output)
        stats = _jsonable(mined.stats)
        _say(f"  {n} triples → {out}  ({mined.stats.summary()})")
        self.tracker.metrics(run_id, {"triples": n, **{f"mining.{k}": v for k, v in stats.items()}})
        self.tracker.end(run_id)
        return {"triples": n, "output": str(out), "stats": stats, "mlflow_run_id": run_id}

    def materialize(self, t) -> dict:
        """A given hub/HF cross-encoder, saved once as a kd folder (evaluation then loads it as a cross-encoder)."""
        from kd.teachers import load_cross_encoder_teacher

        run_id = self.tracker.create(f"teacher-{t.name}", params={f"teacher.{k}": v for k, v in t.model_dump().items()})
        dst = self.cfg.teacher_dir(t.name)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        load_cross_encoder_teacher(t.path, max_length=t.max_length).save_pretrained(tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)
        self.tracker.end(run_id)
        return {"teacher": t.name, "source": t.path, "folder": str(dst), "mlflow_run_id": run_id}

    def _distill(self, dc, stage: str, dst: Path) -> dict:
        from kd.runtime.distill import distill

        final = distill(dc, mlflow_tags=self.tracker.child_tags(stage) if self.tracker.enabled else None)
        src = final.get("final_model")
        if not src or not Path(src).is_dir():
            ckpt = final.get("checkpoint")
            src = str(Path(ckpt) / "best_student") if ckpt else None
        if not src or not Path(src).is_dir():
            raise RuntimeError(f"stage {stage}: the distill job left no model folder (final: {final})")
        _copy_folder(Path(src), dst)
        shown = {k: v for k, v in final.items() if k.startswith("best_") or k in ("model_uri", "registered_version")}
        _say(f"  {stage}: {json.dumps(shown, default=str)} → {dst}")
        return {**final, "folder": str(dst), "architecture": dc.student.architecture}

    def train_teacher(self, i: int) -> dict:
        t = self.cfg.teachers.train[i]
        dc = self.cfg.teacher_config(i, triples=self.cfg.triples_path())
        return self._distill(dc, f"teacher-{t.name}", self.cfg.teacher_dir(t.name))

    def train_student(self, i: int) -> dict:
        s = self.cfg.students[i]
        dc = self.cfg.student_config(i, scores=self.cfg.scores_file())
        return self._distill(dc, f"student-{s.name}", self.cfg.student_dir(s.name))

    def score(self) -> dict:
        from kd.runtime.scoring import score_teachers

        sc = self.cfg.score_config(triples=self.cfg.triples_path(), teachers=self.cfg.ensemble())
        summary = score_teachers(sc)
        self.tracker.adopt(summary.get("mlflow_run_id"), "score")
        _say(f"  scored {summary['triples']} triples with {len(sc.teachers)} teacher(s) → {summary['output']}")
        return summary

    def evaluate(self) -> dict:
        from kd.runtime.evaluation import evaluate

        cfg = self.cfg
        ec = cfg.eval_config(teachers=cfg.ensemble(), students={s.name: str(cfg.student_dir(s.name))
                                                                for s in cfg.students})
        run_id = self.tracker.create("evaluate", params={f"task.{t.name}": t.task for t in ec.tasks})
        started = int(time.time() * 1000)

        def progress(r) -> None:
            shown = " ".join(f"{k}={v:.4f}" for k, v in r.metrics.items() if not k.startswith("eff_"))
            _say(f"  [{r.task}] {r.model or 'baseline'} / {r.dataset}: {shown or 'done'}")

        results = evaluate(ec, on_result=progress)
        rows = [r.to_dict() for r in results]
        if run_id is not None:  # nest the per-(model, dataset) runs under this stage's run
            prefix = f"{cfg.name}/evaluate/"
            for r in self.tracker.client.search_runs(
                    [self.tracker.experiment_id], filter_string=f"tags.`kd.job` = 'evaluate' and "
                    f"attributes.start_time >= {started}", max_results=1000):
                if (r.info.run_name or "").startswith(prefix):
                    self.tracker.client.set_tag(r.info.run_id, PARENT_TAG, run_id)
                    self.tracker.client.set_tag(r.info.run_id, "kd.pipeline", cfg.name)
            from kd.training import metric_key

            self.tracker.metrics(run_id, {f"{r['model'] or 'baseline'}.{r['dataset']}.{metric_key(k)}": v
                                          for r in rows for k, v in r["metrics"].items()})
            self.tracker.client.log_text(run_id, format_summary(cfg, rows), "table.txt")
            self.tracker.end(run_id)
        return {"results": rows, "mlflow_run_id": run_id}

    def _chosen_student(self, rows: list[dict]) -> tuple[str, dict]:
        cfg = self.cfg
        finals = {s.name: self.read_marker(f"student-{s.name}") for s in cfg.students}
        if len(finals) == 1:
            return next(iter(finals.items()))
        sel = cfg.registration.select_by
        if sel:
            dataset, _, metric = sel.rpartition(":")
            score = {r["model"]: r["metrics"].get(metric) for r in rows if r["dataset"] == dataset}
            best = max(finals, key=lambda n: score.get(f"student-{n}") or float("-inf"))
        else:
            def val(n: str) -> float:
                v = [x for k, x in finals[n].items() if k.startswith("best_") and isinstance(x, (int, float))]
                return v[0] if v and v[0] == v[0] else float("-inf")

            best = max(finals, key=val)
        return best, finals[best]

    def register(self) -> dict:
        from mlflow import MlflowClient

        cfg, reg = self.cfg, self.cfg.registration
        if not self.tracker.enabled:
            raise RuntimeError("the register stage needs MLflow (mlflow.enabled: true and a database-backed store)")
        rows = self.read_marker("evaluate")["results"] if self.marker("evaluate").is_file() else []
        name, final = self._chosen_student(rows)
        src_name, version = final.get("registered_name"), final.get("registered_version")
        if not src_name:
            raise RuntimeError(f"student {name!r} was not registered (set students[].registry.name)")
        client = MlflowClient()
        target = reg.name or src_name
        if target != src_name:
            mv = client.copy_model_version(f"models:/{src_name}/{version}", target)
            version = str(mv.version)
        client.set_registered_model_alias(target, reg.alias, version)
        tags = {"pipeline": cfg.name, "student": name, "source": f"models:/{src_name}/{final.get('registered_version')}"}
        if reg.dataset_tag:
            tags["dataset"] = reg.dataset_tag
        from kd.training import metric_key

        for r in rows:
            if r["model"] == f"student-{name}" and r["task"] != "efficiency":
                tags.update({f"eval.{r['dataset']}.{metric_key(k)}": f"{v:.6f}" for k, v in r["metrics"].items()})
        for k, v in tags.items():
            client.set_model_version_tag(target, version, k, v)
        uri = f"models:/{target}@{reg.alias}"
        run_id = self.tracker.create("register", tags={"kd.model_uri": uri})
        self.tracker.end(run_id)
        _say(f"  registered {uri} (version {version}, student {name!r})")
        return {"model_uri": uri, "name": target, "version": version, "student": name, "mlflow_run_id": run_id}

    # ------------------------------------------------------------------------------------------- summary
    def summary(self) -> dict:
        cfg = self.cfg
        rows = self.read_marker("evaluate")["results"] if self.marker("evaluate").is_file() else []
        table = format_summary(cfg, rows) if rows else "(no evaluation stage)"
        uri = None
        if self.marker("register").is_file():
            uri = self.read_marker("register")["model_uri"]
        else:
            for s in cfg.students:
                if self.marker(f"student-{s.name}").is_file():
                    uri = uri or self.read_marker(f"student-{s.name}").get("model_uri")
        tracking = cfg.mlflow.tracking_uri or ""
        if tracking.startswith("sqlite:"):
            ui = f"mlflow ui --backend-store-uri {tracking}"
        elif tracking.startswith("http"):
            ui = f"open {tracking} (the MLflow server)"
        else:
            ui = "mlflow ui" + (f" --backend-store-uri {tracking}" if tracking else "")
        _say("")
        _say(table)
        _say("")
        _say(f"registered model: {uri}" if uri else "registered model: (none)")
        _say(f"MLflow UI:        {ui}")
        return {"table": table, "model_uri": uri, "mlflow_ui": ui, "results": rows,
                "parent_run_id": self.tracker.parent_id}


def format_summary(cfg: PipelineConfig, rows: list[dict]) -> str:
    """Baselines, teachers and students side by side: nDCG@10 per evaluation dataset, and speed."""
    ev = cfg.evaluate
    run_files = {t.name: getattr(t, "run", None) for t in ev.tasks}
    datasets = [t.name for t in ev.tasks if t.task in ("rerank", "dense")]
    baseline_col = {}
    for t in ev.tasks:
        if t.task == "run":
            match = [d for d in datasets if run_files.get(d) == t.run]
            baseline_col[t.name] = match[0] if match else t.name
            if not match:
                datasets.append(t.name)
    runs = [t.name for t in ev.tasks if t.task == "run"]
    first_stage = "BM25 (first stage)" if runs and all("bm25" in n.lower() for n in runs) else "first stage (run)"
    eff = {r["model"]: r["metrics"] for r in rows if r["task"] == "efficiency"}
    arch = {r["model"]: r["info"].get("architecture") for r in rows if r["info"].get("architecture")}
    table: dict[str, dict[str, float]] = {}
    order: list[str] = []
    for r in rows:
        if r["task"] == "efficiency":
            continue
        label = first_stage if r["model"] is None else r["model"]
        col = baseline_col.get(r["dataset"], r["dataset"]) if r["model"] is None else r["dataset"]
        if label not in table:
            table[label] = {}
            order.append(label)
        if "ndcg@10" in r["metrics"]:
            table[label][col] = r["metrics"]["ndcg@10"]
    for m in eff:
        if m not in table:
            table[m] = {}
            order.append(m)

    def qps(model: str | None, part: str) -> str:
        m = eff.get(model) or {}
        keys = [k for k in m if k.startswith(f"eff_{part}_bs") and k.endswith("_qps")]
        if not keys:
            return "-"
        k = max(keys, key=lambda k: int(k[len(f"eff_{part}_bs"):-4]))
        return f"{m[k]:.3g} (bs{k[len(f'eff_{part}_bs'):-4]})"

    head = ["model", "arch", *[f"nDCG@10 {d}" for d in datasets], "re-rank q/s", "query-encode q/s"]
    body = []
    for label in order:
        model = None if label == first_stage else label
        body.append([label, arch.get(model, "-") if model else "-",
                     *(f"{table[label][d]:.4f}" if d in table[label] else "-" for d in datasets),
                     qps(model, "rerank"), qps(model, "query_encode") if arch.get(model) == "bert_dot" else "-"])
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    notes = ["re-rank q/s: queries re-ranked per second, each query = its top-"
             f"{_depth(ev)} candidates scored on the fly; query-encode q/s: a dual encoder's per-query cost when "
             "passages are pre-encoded."]
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in body), *notes])


def _depth(ev) -> int:
    for t in ev.tasks:
        if t.task == "efficiency":
            return t.rerank_depth
    return 100


def run_pipeline(cfg: PipelineConfig) -> dict:
    return Pipeline(cfg).run()
