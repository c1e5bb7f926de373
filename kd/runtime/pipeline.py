"""jobs/pipeline.py runtime: mine → teachers → score → students → evaluate → register, resumable, tracked in MLflow.

Stages run in order (a no-KD twin's right after its KD student's, or beside it with `nokd_twin_concurrent`:
kd/runtime/concurrent_stages.py); each writes a completion marker `<output_dir>/stages/<stage>.json` (its summary)
last, after its output, and a stage whose marker and outputs all exist is skipped — printed as `skipped (output
exists: …)` — so an interrupted pipeline picks up where it stopped
(the distill and scoring jobs also resume inside a stage). To redo a stage, delete its marker (and output).

MLflow: one parent run per pipeline (tag kd.pipeline=<name>; a rerun reuses it) and one run per stage nested under
it (`mlflow.parentRunId`): the distill jobs' runs are created nested, the scoring job's run is adopted when it ends,
mine / evaluate / register runs are created here (the evaluation's per-(model, dataset) runs nest under the
evaluate run). Ray starts (or is joined, under `ray job submit`) only when a stage needs it. At the end the
pipeline prints its table and writes `<output_dir>/summary.json` (kd/pipeline_summary.py), also logged to the
parent run.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any, Callable

from kd.configs.base import fingerprint, to_flat_dict
from kd.configs.pipeline import PipelineConfig
from kd.configs.pipeline_stages import materialized, student_label
from kd.pipeline_summary import build_summary, format_table, rerank_depth
from kd.runtime.concurrent_stages import fits_together, run_together
from kd.runtime.pipeline_tracking import Tracker, _say
from kd.runtime.tracking import Tag, absolute_tracking_uri, tracking_uri

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
        for key in ("path", "corpus"):
            if t.get(key) and Path(t[key]).expanduser().exists():
                t[key] = str(Path(t[key]).expanduser().resolve())
    d["mlflow"]["tracking_uri"] = absolute_tracking_uri(tracking_uri(cfg.mlflow))
    return PipelineConfig.model_validate(d)


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


def _groups(stages: list["Stage"]) -> list[list["Stage"]]:
    """The stages in order, consecutive stages of one non-empty `group` together, every other stage alone."""
    out: list[list[Stage]] = []
    for s in stages:
        if out and s.group and out[-1][-1].group == s.group:
            out[-1].append(s)
        else:
            out.append([s])
    return out


# ------------------------------------------------------------------------------------------------ stages
@dataclass
class Stage:
    name: str
    output: Path  # what the stage produces (shown when skipped)
    fn: Callable[[], dict]
    needs_ray: bool = False
    fingerprint: str = ""
    also: tuple[Path, ...] = ()  # further outputs it is not done without
    group: str = ""  # consecutive stages of one non-empty group run at the same time (kd/runtime/concurrent_stages)
    needs: dict[str, float] | None = None  # the Ray resources it holds while it runs (a group must fit at once)
    abort: Callable[[BaseException], None] | None = None  # ends its open MLflow run when the job is interrupted


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
            stages.append(Stage("mine", Path(cfg.triples_path()), self.mine, fingerprint=fingerprint(
                cfg.mine.model_dump())))
        for t in cfg.teachers.given:
            if materialized(t):
                stages.append(Stage(f"teacher-{t.name}", cfg.teacher_dir(t.name), lambda t=t: self.materialize(t),
                                    fingerprint=fingerprint(t.model_dump())))
        for i, t in enumerate(cfg.teachers.train):
            stages.append(Stage(f"teacher-{t.name}", cfg.teacher_dir(t.name), lambda i=i: self.train_teacher(i),
                                needs_ray=True, fingerprint=fingerprint(t.model_dump())))
        if cfg.teacher_scores is None:
            from kd.teachers import ENSEMBLE_FILE

            stages.append(Stage("score", cfg.scores_dir() / "teacher_scores.tsv", self.score, needs_ray=True,
                                fingerprint=fingerprint({**cfg.score.model_dump(),
                                                         "teachers": cfg.teachers.model_dump()}),
                                also=(cfg.ensemble_dir() / ENSEMBLE_FILE,)))
        for name, i, twin in cfg.trained_students():
            stages.append(self._student_stage(name, i, twin))
        if cfg.evaluate is not None:
            stages.append(Stage("evaluate", cfg.eval_dir() / "results.json", self.evaluate,
                                needs_ray=cfg.evaluate.compute.backend != "local",
                                fingerprint=fingerprint(cfg.evaluate.model_dump())))
        if cfg.registration is not None and cfg.registration.enabled:
            stages.append(Stage("register", self.marker("register"), self.register,
                                fingerprint=fingerprint(cfg.registration.model_dump())))
        return stages

    def _student_stage(self, name: str, i: int, twin: bool) -> Stage:
        cfg, spec = self.cfg, self.cfg.students[i]
        stage = Stage(f"student-{name}", cfg.student_dir(name), lambda: self.train_student(i, twin), needs_ray=True,
                      fingerprint=fingerprint({**spec.model_dump(exclude={"nokd_twin_concurrent"}), "twin": twin}))
        if spec.nokd_twin_concurrent:
            from kd.runtime.distill import end_open_run
            from kd.runtime.run_guards import worker_resources

            t = spec.training
            stage.group = f"student-{spec.name}"
            stage.needs = {res: t.num_workers * each for res, each in worker_resources(t).items()}
            stage.abort = lambda exc: end_open_run(cfg.student_config(i, scores=cfg.scores_file(), twin=twin), exc)
        return stage

    def done(self, stage: Stage) -> bool:
        return self.marker(stage.name).is_file() and all(p.exists() for p in (stage.output, *stage.also))

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
        self.tracker.start()
        timings: dict[str, float] = {}
        heads = {s.name: f"[{n}/{len(stages)} {s.name}]" for n, s in enumerate(stages, 1)}
        try:
            for group in _groups(stages):
                pending = [s for s in group if not self._skip_if_done(s, heads[s.name])]
                if len(pending) > 1 and self._fit_together(pending):
                    self._run_together(pending, heads, timings)
                else:
                    for stage in pending:
                        self._run_stage(stage, heads[stage.name], timings)
        except BaseException as exc:
            self.tracker.end_open(exc)
            raise
        result = self.summary()
        if self.tracker.parent_id:
            self.tracker.metrics(self.tracker.parent_id, {f"stage_seconds.{k}": v for k, v in timings.items()})
            self.tracker.client.log_text(self.tracker.parent_id, result["table"], "summary.txt")
            if result["summary"] is not None:
                self.tracker.client.log_dict(self.tracker.parent_id, result["summary"], "summary.json")
            if result.get("model_uri"):
                self.tracker.client.set_tag(self.tracker.parent_id, Tag.MODEL_URI, result["model_uri"])
            self.tracker.end(self.tracker.parent_id)
        return result

    def _skip_if_done(self, stage: Stage, head: str) -> bool:
        if not self.done(stage):
            return False
        old = self.read_marker(stage.name)
        note = ""
        if old.get("_fingerprint") not in (None, stage.fingerprint):
            note = f"; its config changed since — delete {self.marker(stage.name)} to redo it"
        _say(f"{head} skipped (output exists: {stage.output}{note})")
        return True

    def _finish(self, stage: Stage, head: str, summary: dict, seconds: float, timings: dict[str, float]) -> None:
        timings[stage.name] = seconds
        _write_json(self.marker(stage.name), {**summary, "_seconds": seconds, "_fingerprint": stage.fingerprint})
        _say(f"{head} done in {seconds:.0f} s")

    def _run_stage(self, stage: Stage, head: str, timings: dict[str, float]) -> None:
        _say(f"{head} running")
        if stage.needs_ray:
            self.ensure_ray()
        t0 = time.perf_counter()
        summary = stage.fn()
        self._finish(stage, head, summary, time.perf_counter() - t0, timings)

    def _fit_together(self, stages: list[Stage]) -> bool:
        """Whether the cluster holds every stage's resources at once (else they run one after the other)."""
        import ray

        self.ensure_ray()
        short = fits_together({s.name: s.needs or {} for s in stages}, ray.cluster_resources())
        if short:
            _say(f"  {' and '.join(s.name for s in stages)} one after the other, not at the same time: together "
                 f"they need {short} of this cluster")
        return short is None

    def _run_together(self, stages: list[Stage], heads: dict[str, str], timings: dict[str, float]) -> None:
        for s in stages:
            _say(f"{heads[s.name]} running (at the same time as {', '.join(o.name for o in stages if o is not s)})")
        outcomes = run_together({s.name: s.fn for s in stages}, {s.name: s.abort for s in stages if s.abort})
        for s in stages:
            o = outcomes[s.name]
            if o.error is None:
                self._finish(s, heads[s.name], o.summary, o.seconds, timings)
        errors = [outcomes[s.name].error for s in stages if outcomes[s.name].error is not None]
        if errors:
            raise errors[0]

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

        run_id = self.tracker.create(f"teacher-{t.name}", params=to_flat_dict(t, prefix="teacher."))
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

    def train_student(self, i: int, twin: bool = False) -> dict:
        """Student i, or (`twin`) its no-KD twin: the same config with RankNet (PipelineConfig.student_config)."""
        dc = self.cfg.student_config(i, scores=self.cfg.scores_file(), twin=twin)
        name = dc.run.name.removeprefix(f"{self.cfg.name}-student-")
        return {**self._distill(dc, f"student-{name}", self.cfg.student_dir(name)), "loss": dc.loss.name,
                "nokd_twin": twin}

    def score(self) -> dict:
        from kd.runtime.scoring import score_teachers

        sc = self.cfg.score_config(triples=self.cfg.triples_path(), teachers=self.cfg.ensemble())
        summary = score_teachers(sc)
        self.tracker.adopt(summary.get("mlflow_run_id"), "score")
        _say(f"  scored {summary['triples']} triples with {len(sc.teachers)} member(s), combined by {sc.combine} → "
             f"{summary['output']}")
        return summary

    def evaluate(self) -> dict:
        from kd.runtime.evaluation import evaluate

        cfg = self.cfg
        ec = cfg.eval_config()
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
                    [self.tracker.experiment_id], filter_string=f"tags.`{Tag.JOB}` = 'evaluate' and "
                    f"attributes.start_time >= {started}", max_results=1000):
                if (r.info.run_name or "").startswith(prefix):
                    self.tracker.client.set_tag(r.info.run_id, Tag.PARENT, run_id)
                    self.tracker.client.set_tag(r.info.run_id, Tag.PIPELINE, cfg.name)
            from kd.training import metric_key

            self.tracker.metrics(run_id, {f"{r['model'] or 'baseline'}.{r['dataset']}.{metric_key(k)}": v
                                          for r in rows for k, v in r["metrics"].items()})
            self.tracker.client.log_text(run_id, self.table(self.summarize(rows)), "table.txt")
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
        """The chosen student's registered version (copied to `register.name` when that differs), tagged with the
        pipeline, the student and its evaluation (and what KD gained over its twin), under `register.alias`."""
        from mlflow import MlflowClient

        from kd.runtime.registry import publish_version

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
        tags = {"pipeline": cfg.name, "student": name, "source": f"models:/{src_name}/{final.get('registered_version')}"}
        if reg.dataset_tag:
            tags["dataset"] = reg.dataset_tag
        from kd.training import metric_key

        for r in rows:
            if r["model"] == student_label(name) and r["task"] != "efficiency":
                tags.update({f"eval.{r['dataset']}.{metric_key(k)}": f"{v:.6f}" for k, v in r["metrics"].items()})
        if rows:  # what KD gained over the twin, and the share of the teacher kept
            summ = self.summarize(rows, registered_student=student_label(name))
            for key in ("kd_gain", "ratio_to_teacher"):
                tags.update({f"eval.{d}.{key}": f"{v:.6f}" for d, v in summ[key].items()})
        uri = publish_version(target, version, reg.alias, tags, client=client)
        run_id = self.tracker.create("register", tags={Tag.MODEL_URI: uri})
        self.tracker.end(run_id)
        _say(f"  registered {uri} (version {version}, student {name!r})")
        return {"model_uri": uri, "name": target, "version": version, "student": name, "mlflow_run_id": run_id}

    # ------------------------------------------------------------------------------------------- summary
    def summarize(self, rows: list[dict], registered: str | None = None,
                  registered_student: str | None = None) -> dict:
        cfg = self.cfg
        return build_summary(cfg.evaluate, rows, cfg.model_roles(), cfg.nokd_twins(), registered=registered,
                             registered_student=registered_student)

    def table(self, summary: dict) -> str:
        return format_table(summary, rerank_depth=rerank_depth(self.cfg.evaluate))

    def summary(self) -> dict:
        """Print the table, the registered model and the MLflow UI command; write <output_dir>/summary.json."""
        cfg = self.cfg
        rows = self.read_marker("evaluate")["results"] if self.marker("evaluate").is_file() else []
        uri, student = None, None
        if self.marker("register").is_file():
            reg = self.read_marker("register")
            uri, student = reg["model_uri"], reg.get("student")
        else:
            for s in cfg.students:
                if self.marker(f"student-{s.name}").is_file():
                    uri = uri or self.read_marker(f"student-{s.name}").get("model_uri")
        summary = None
        if rows:
            summary = self.summarize(rows, uri, student_label(student) if student else None)
            _write_json(cfg.summary_file(), summary)
        table = self.table(summary) if summary else "(no evaluation stage)"
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
        if summary:
            _say(f"summary:          {cfg.summary_file()}")
        _say(f"MLflow UI:        {ui}")
        return {"table": table, "model_uri": uri, "mlflow_ui": ui, "results": rows, "summary": summary,
                "parent_run_id": self.tracker.parent_id}


def run_pipeline(cfg: PipelineConfig) -> dict:
    return Pipeline(cfg).run()
