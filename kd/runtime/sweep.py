"""jobs/sweep.py runtime: Ray Tune over distill configs, ASHA on the validation metric, MLflow parent/child runs,
the best trial registered with the alias `champion`.

Shape (Ray Train V2): Tune runs a *driver function* per trial (`_trial`), which builds the trial's DistillConfig
and calls the same `kd.runtime.distill.distill()` as jobs.distill — a TorchTrainer with its own workers. The driver
takes no CPU (only a little logical memory), so `max_concurrent_trials` = what the cluster's CPUs/GPUs hold of the
trials' workers.

Early stopping: the distill workers call `ray.train.report` at every validation; `ValidationToTune` (a Ray Train
`UserCallback`, i.e. TuneReportCallback filtered) forwards those reports that carry the validation metric to the
trial's Tune session, with `step` (optimizer steps) as ASHA's time. When ASHA decides STOP, Tune terminates the
trial's actor; the TorchTrainer's controller actor is owned by that process and its workers by the controller, so
Ray's ownership fate-sharing ends the whole trial, and Train V2's PlacementGroupCleaner frees the workers'
placement group (this is why `ray[default]` is required) before the next trial starts. The stopped trial's MLflow
run is then left RUNNING by its killed worker (or ended FAILED by its driver, when the worker group died first):
the sweep marks it KILLED with `kd.sweep.stopped_early=true`.
The last validation of a full trial is held back until the final report (after the model is logged), so a
finishing trial is never stopped half-way through logging its model.

Resumption: the Tune experiment is `<storage_path>/<name>`; rerunning the same sweep restores it
(`Tuner.restore(resume_unfinished, resume_errored)`): finished and early-stopped trials are kept, interrupted ones
restart their driver, whose distill run (same deterministic run name `<sweep>-<trial_id>`) resumes from its own
Ray Train checkpoint and continues the same MLflow run. A trial whose distill run already wrote final.json reports
it without training.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import yaml
from ray.tune.integration.ray_train import TuneReportCallback

from kd.configs.errors import ConfigError
from kd.configs.distill import DistillConfig
from kd.configs.base import fingerprint as config_fingerprint
from kd.runtime.tracking import Tag
from kd.configs.search_space import Dimension, apply_params, expected_trials, max_concurrent
from kd.configs.sweep import SweepConfig

logger = logging.getLogger(__name__)

STATE_FILE = "kd_sweep.json"


# ============================================================================================ trial side
class ValidationToTune(TuneReportCallback):
    """Forward the distill workers' validation reports (rank 0's) to the trial's Tune session.

    Reports without the metric (plain checkpoints) are dropped (Tune rejects results without its metric); the
    validation of the last step is held and sent with the final report, which comes after the model is logged.
    """

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric
        self._held: dict | None = None

    def after_report(self, run_context, metrics, checkpoint):
        m = dict(metrics[0])
        if self.metric in m:
            out = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if checkpoint is not None:
                out["checkpoint_path"] = checkpoint.path
            if out.get("step", 0) >= out.get("total_steps", math.inf):
                self._held = out
                return
            self._training_actor_item_queue.put(out)
        elif any(k.startswith("best_") for k in m):  # the final report (or a finished run's, on a rerun)
            out = {**(self._held or {}), **m, "completed": 1}
            out.setdefault(self.metric, m.get("best_" + self.metric))
            self._training_actor_item_queue.put(out)


def _trial(config: dict, spec: dict) -> None:
    """One Tune trial: the trial's DistillConfig → kd.runtime.distill.distill (a TorchTrainer inside the trial)."""
    import ray.tune

    from kd.runtime.distill import distill

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_distill_config(spec, config["params"], trial_id)
    final_file = Path(cfg.run.storage_path) / cfg.run.name / "final.json"
    if final_file.exists():  # trained and logged by an earlier driver: report, do not retrain
        final = json.loads(final_file.read_text())
        ray.tune.report({**{k: v for k, v in final.items() if isinstance(v, (int, float, str))},
                         spec["tune_metric"]: final.get("best_" + spec["tune_metric"]), "completed": 1})
        return
    tags = {Tag.PARENT: spec["parent_run_id"], Tag.SWEEP: spec["sweep"], Tag.TRIAL_ID: trial_id,
            Tag.SWEEP_PARAMS: json.dumps(config["params"], sort_keys=True)[:5000]}
    distill(cfg, callbacks=[ValidationToTune(spec["tune_metric"])], mlflow_tags=tags)


def trial_run_name(sweep: str, trial_id: str) -> str:
    return f"{sweep}-{trial_id}"


def trial_distill_config(spec: dict, params: dict, trial_id: str) -> DistillConfig:
    space = {k: Dimension.model_validate(v) for k, v in spec["space"].items()}
    data = apply_params(spec["base"], params, space)
    data["run"] = {"name": trial_run_name(spec["sweep"], trial_id), "storage_path": spec["train_runs"]}
    return DistillConfig.model_validate(data)


# =========================================================================================== driver side
def prepare_base(sweep: SweepConfig, tracking_uri: str | None) -> dict:
    """The trials' common distill config: absolute paths, the sweep's MLflow experiment (nested runs must share
    it), no registration per trial (only the champion is registered), validation selecting on the sweep metric."""
    from kd.runtime.distill import absolutize

    base = absolutize(sweep.base).model_dump(mode="json")
    base["mlflow"] = {**sweep.mlflow.model_dump(mode="json"), "tracking_uri": tracking_uri, "run_name": None,
                      "enabled": True}
    base["registry"] = {"name": None, "alias": "current", "dataset_tag": sweep.registry.dataset_tag
                        or sweep.base.registry.dataset_tag}
    base["validation"]["metric"] = sweep.target_metric
    return base


def fingerprint(sweep: SweepConfig) -> str:
    """What must not change when a sweep is resumed: the space, the base config, sampling and the scheduler."""
    keep = sweep.model_dump(mode="json", include={"base", "search_space", "num_samples", "metric", "scheduler",
                                                   "seed"})
    keep["base"].pop("run", None)
    return config_fingerprint(keep)


def _tune_domain(dim: Dimension):
    from ray import tune

    fn = {"grid": tune.grid_search, "choice": tune.choice}.get(dim.kind)
    if fn is not None:
        return fn(list(dim.args))
    return getattr(tune, dim.kind)(*dim.args)


def _parent_run(sweep: SweepConfig, client, exp_path: Path) -> str:
    """The sweep's parent run: a resumed sweep's (tag kd.sweep_name), RUNNING again, or a new one with the sweep's
    settings as params and its config as sweep_config.yaml."""
    from kd.runtime.tracking import find_or_create_run

    params = {"sweep.metric": sweep.target_metric, "sweep.num_samples": sweep.num_samples,
              "sweep.scheduler": sweep.scheduler.name, "sweep.grace_period": sweep.scheduler.grace_period,
              "sweep.reduction_factor": sweep.scheduler.reduction_factor, "sweep.max_t": sweep.max_t,
              "sweep.seed": sweep.seed, "sweep.registry.name": sweep.registry.name,
              "sweep.registry.alias": sweep.registry.alias}
    for key, dim in sweep.search_space.items():
        params[f"space.{key}"] = json.dumps({dim.kind: dim.args})
    run, created = find_or_create_run(
        sweep.mlflow.experiment, {Tag.SWEEP_NAME: sweep.name, Tag.JOB: "sweep"}, sweep.name,
        {Tag.SWEEP_PATH: str(exp_path), Tag.DATASET: sweep.registry.dataset_tag or ""}, params=params, client=client)
    if created:
        client.log_text(run.info.run_id, yaml.safe_dump(sweep.model_dump(mode="json"), sort_keys=False),
                        "sweep_config.yaml")
    return run.info.run_id


def _connect_ray() -> None:
    """Join the cluster named by $RAY_ADDRESS (or start a local one) like every job, and hand that address on to
    this job's workers.

    Why: when ASHA stops a trial, its Train controller dies with the trial's actor, and Train V2's
    PlacementGroupCleaner (a detached actor) must notice through Ray's state API (the dashboard, `ray[default]`) and
    free the workers' placement group — else the next trial waits for resources that never come back. Inside the
    cluster that actor finds the API server through RAY_ADDRESS, or by auto-detection, which fails on a machine
    that runs several Ray instances."""
    import ray

    from kd.runtime import cluster

    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized() or not address or address in ("auto", "local") or "://" in address:
        cluster.ensure_ray()
    else:
        forwarded = getattr(cluster, "forwarded_env", None)
        env = forwarded() if forwarded else {k: os.environ[k] for k in (
            "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "MLFLOW_TRACKING_URI") if k in os.environ}
        try:  # a submitted job's own runtime env may set RAY_ADDRESS already; Ray refuses to merge a duplicate
            job_env = (json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("runtime_env")
                       or {}).get("env_vars") or {}
        except (ValueError, AttributeError):
            job_env = {}
        if "RAY_ADDRESS" not in job_env:
            env["RAY_ADDRESS"] = address
        from kd.runtime.interrupts import keep_signal_handlers

        try:
            with keep_signal_handlers():  # ray.init's SIGTERM handler would exit 15 without unwinding the sweep
                ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        except ConnectionError:
            cluster.ensure_ray()  # raises again, with its hint about token authentication
    try:
        from ray.util.state import list_placement_groups

        list_placement_groups(limit=1, timeout=10, raise_on_missing_output=False)
    except Exception as e:  # noqa: BLE001 - a warning, the sweep still runs
        logger.warning("Ray's state API is not reachable (%s): trials that ASHA stops may keep their workers' "
                       "placement groups, and later trials then wait for resources. Run Ray with the dashboard "
                       "(`ray[default]`; `ray start` includes it unless --include-dashboard=false).",
                       str(e).splitlines()[0] if str(e) else type(e).__name__)


def run_sweep(sweep: SweepConfig) -> dict:
    """Run (or resume) a sweep; returns its summary (trials, how many ASHA stopped, the champion). Its parent MLflow
    run ends FINISHED with a champion, KILLED when interrupted (Ctrl+C at the driver, SIGTERM) and FAILED on an
    error."""
    import mlflow
    from mlflow import MlflowClient

    from kd.runtime.tracking import absolute_tracking_uri, use_experiment

    use_experiment(sweep.mlflow)
    tracking_uri = absolute_tracking_uri(mlflow.get_tracking_uri())
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)

    exp_path = Path(sweep.storage_path).expanduser().resolve() / sweep.name
    state_file = exp_path / STATE_FILE
    fp = fingerprint(sweep)
    if state_file.exists():
        saved = json.loads(state_file.read_text())
        if saved.get("fingerprint") != fp:
            raise ConfigError(
                f"sweep {sweep.name!r} already exists at {exp_path} with a different search space / base config "
                f"(fingerprint {saved.get('fingerprint')} != {fp}); a sweep resumes only unchanged — pick a new "
                "name, or remove that folder to start over")
    exp_path.mkdir(parents=True, exist_ok=True)
    parent_id = _parent_run(sweep, client, exp_path)
    try:
        return _run_tuner(sweep, client, exp_path, fp, state_file, tracking_uri, parent_id)
    except BaseException as exc:  # Ctrl+C / SIGTERM → KILLED, an error → FAILED: never left RUNNING
        from kd.runtime.interrupts import run_status

        client.set_terminated(parent_id, run_status(exc))
        raise


def _run_tuner(sweep: SweepConfig, client, exp_path: Path, fp: str, state_file: Path, tracking_uri: str,
               parent_id: str) -> dict:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from kd.runtime.interrupts import keep_signal_handlers

    spec = {  # what every trial needs (also kept in kd_sweep.json: a trial's config can be rebuilt from it)
        "sweep": sweep.name, "base": prepare_base(sweep, tracking_uri), "tune_metric": sweep.tune_metric,
        "space": {k: d.model_dump(mode="json", exclude_none=True) for k, d in sweep.search_space.items()},
        "train_runs": str(exp_path / "train_runs"), "parent_run_id": parent_id,
    }
    state_file.write_text(json.dumps({"fingerprint": fp, "config": sweep.model_dump(mode="json"), "spec": spec},
                                     indent=1) + "\n")
    _connect_ray()
    cluster = ray.cluster_resources()
    concurrent = max_concurrent(sweep, cluster)
    logger.info("sweep %s: %s trials at a time on %s", sweep.name, concurrent,
                {k: v for k, v in cluster.items() if k in ("CPU", "GPU")})
    client.set_tag(parent_id, Tag.MAX_CONCURRENT, str(concurrent))
    driver = sweep.trial_driver
    resources = {"cpu": driver.cpus, "memory": driver.memory_mb * 2**20, **driver.resources}
    trainable = tune.with_resources(tune.with_parameters(_trial, spec=spec), resources)

    if tune.Tuner.can_restore(str(exp_path)):
        logger.info("resuming sweep %s from %s", sweep.name, exp_path)
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        if sweep.scheduler.name == "asha":
            scheduler = ASHAScheduler(time_attr="step", max_t=sweep.max_t, grace_period=sweep.scheduler.grace_period,
                                      reduction_factor=sweep.scheduler.reduction_factor,
                                      brackets=sweep.scheduler.brackets, stop_last_trials=False)
        else:
            scheduler = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            param_space={"params": {k: _tune_domain(d) for k, d in sweep.search_space.items()}},
            tune_config=tune.TuneConfig(
                metric=sweep.tune_metric, mode="max", scheduler=scheduler, num_samples=sweep.num_samples,
                # the variant generator limits concurrency itself (TuneConfig.max_concurrent_trials is ignored with
                # a SearchGenerator such as this seeded one)
                search_alg=BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrent),
                trial_dirname_creator=lambda t: f"trial_{t.trial_id}",
            ),
            run_config=tune.RunConfig(name=sweep.name, storage_path=str(exp_path.parent),
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
                                      verbose=1),
        )
    with keep_signal_handlers():  # Tune's SIGINT handler would otherwise outlive the fit
        tuner.fit()
    return summarize(sweep, exp_path, spec, client, parent_id)


# ============================================================================================== summary
def _trial_records(sweep: SweepConfig, exp_path: Path, spec: dict, client) -> list[dict]:
    from ray import tune

    from kd.runtime.tracking import find_run

    analysis = tune.ExperimentAnalysis(str(exp_path))
    metric = sweep.tune_metric
    records = []
    for trial in analysis.trials:
        tid = trial.trial_id
        run_name = trial_run_name(sweep.name, tid)
        final_file = Path(spec["train_runs"]) / run_name / "final.json"
        final = json.loads(final_file.read_text()) if final_file.exists() else None
        df = analysis.trial_dataframes.get(tid)
        values = df[metric].dropna().tolist() if df is not None and metric in getattr(df, "columns", []) else []
        steps = df["step"].dropna().tolist() if df is not None and "step" in getattr(df, "columns", []) else []
        if final is not None:
            status, best = "completed", final.get("best_" + metric)
        elif trial.status == "TERMINATED":
            status, best = "stopped_early", max(values) if values else None
        elif trial.status == "ERROR":
            status, best = "error", max(values) if values else None
        else:
            status, best = "unfinished", max(values) if values else None
        run = find_run(sweep.mlflow.experiment, {Tag.RUN_NAME: run_name}, client=client)
        records.append({
            "trial_id": tid, "status": status, metric: best, "steps": int(max(steps)) if steps else 0,
            "validations": len(values), "params": (trial.config or {}).get("params", {}),
            "run_name": run_name, "mlflow_run_id": run.info.run_id if run else None,
            "run_status": run.info.status if run else None,
            "model_uri": (final or {}).get("model_uri"), "error": str(getattr(trial, "error_file", None) or "") if status == "error" else "",
        })
    return records


def _flat_params(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):  # a linked dimension: show the fields it set
            out.update({f"{k}:{f}": json.dumps(x) if not isinstance(x, (int, float, str)) else x for f, x in v.items()})
        else:
            out[k] = v if isinstance(v, (int, float, str)) or v is None else json.dumps(v)
    return out


def summary_table(records: list[dict], metric: str):
    import pandas as pd

    rows = [{"trial_id": r["trial_id"], "status": r["status"], metric: r[metric], "steps": r["steps"],
             **_flat_params(r["params"]), "mlflow_run_id": r["mlflow_run_id"]} for r in records]
    df = pd.DataFrame(rows)
    if not df.empty:
        df = df.sort_values([metric, "trial_id"], ascending=[False, True], na_position="last").reset_index(drop=True)
    return df


def close_stopped_runs(records: list[dict], metric: str, client) -> None:
    """Tag the runs of ASHA-stopped trials (`kd.sweep.stopped_early`, the step, their best metric) and end them
    KILLED. Such a run is left RUNNING by its killed worker, or ended FAILED by its driver when the worker group died
    first under the stop (a race): either way the stop is what ended it, not an error."""
    for r in records:
        if r["status"] == "stopped_early" and r["mlflow_run_id"]:
            client.set_tag(r["mlflow_run_id"], Tag.STOPPED_EARLY, "true")
            client.set_tag(r["mlflow_run_id"], Tag.STOPPED_AT_STEP, str(r["steps"]))
            if r[metric] is not None:
                client.log_metric(r["mlflow_run_id"], "best_" + metric.removeprefix("val_"), r[metric])
            if r["run_status"] in ("RUNNING", "FAILED"):
                client.set_terminated(r["mlflow_run_id"], "KILLED")
                r["run_status"] = "KILLED"


def summarize(sweep: SweepConfig, exp_path: Path, spec: dict, client, parent_id: str) -> dict:
    metric = sweep.tune_metric
    records = _trial_records(sweep, exp_path, spec, client)
    unfinished = [r for r in records if r["status"] == "unfinished"]
    # trials are created lazily (max_concurrent at a time): after an interruption some do not exist yet
    not_started = max(0, expected_trials(sweep) - len(records))
    close_stopped_runs(records, metric, client)
    table = summary_table(records, metric)
    out: dict[str, Any] = {
        "sweep": sweep.name, "path": str(exp_path), "parent_run_id": parent_id, "metric": metric,
        "trials": len(records) + not_started, "completed": sum(r["status"] == "completed" for r in records),
        "stopped_early": sum(r["status"] == "stopped_early" for r in records),
        "errored": sum(r["status"] == "error" for r in records), "unfinished": len(unfinished) + not_started,
        "results": records,
    }
    client.log_text(parent_id, table.to_csv(index=False), "sweep_summary.csv")
    client.log_text(parent_id, table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False),
                    "sweep_summary.md")
    client.log_table(parent_id, data=table, artifact_file="sweep_summary.json")
    for key in ("trials", "completed", "stopped_early", "errored", "unfinished"):
        client.log_metric(parent_id, f"trials_{key}" if key != "trials" else "trials", out[key])
    if out["unfinished"]:  # interrupted at the driver: the next run resumes; no champion from a partial sweep
        out["interrupted"] = True
        for r in unfinished:  # their drivers were stopped with the sweep: KILLED, not RUNNING, until resumed
            if r["mlflow_run_id"] and r["run_status"] == "RUNNING":
                client.set_terminated(r["mlflow_run_id"], "KILLED")
        client.set_terminated(parent_id, "KILLED")
        (exp_path / "summary.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
        return out
    scored = [r for r in records if r[metric] is not None and r["status"] in ("completed", "stopped_early")]
    if not scored:
        client.set_terminated(parent_id, "FAILED")
        raise RuntimeError(f"sweep {sweep.name}: no trial reported {metric} ({out['errored']} errored); see "
                           f"{exp_path}")
    best = sorted(scored, key=lambda r: (-r[metric], r["status"] != "completed", r["trial_id"]))[0]
    client.log_metric(parent_id, "best_" + metric, best[metric])
    client.set_tag(parent_id, Tag.BEST_TRIAL, best["trial_id"])
    client.set_tag(parent_id, Tag.BEST_RUN_ID, best["mlflow_run_id"] or "")
    out["best"] = {k: best[k] for k in ("trial_id", metric, "status", "params", "mlflow_run_id", "run_name")}
    if sweep.registry.name:
        out["champion"] = register_champion(sweep, best, spec, client, parent_id)
    client.set_terminated(parent_id, "FINISHED")
    (exp_path / "summary.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _log_from_checkpoint(record: dict, spec: dict, client) -> str:
    """An early-stopped champion: log the best student of its last Ray Train checkpoint into its run."""
    import mlflow

    from kd.runtime.pyfunc import log_ranker

    folder = Path(spec["train_runs"]) / record["run_name"]
    ckpts = sorted((p for p in folder.glob("checkpoint_*") if (p / "best_student").is_dir()), key=lambda p: p.name)
    if not ckpts:
        raise RuntimeError(f"trial {record['trial_id']}: no checkpoint with best_student under {folder}")
    with mlflow.start_run(run_id=record["mlflow_run_id"]):
        info = log_ranker(ckpts[-1] / "best_student")
    client.set_terminated(record["mlflow_run_id"], "KILLED")
    return info.model_uri


def register_champion(sweep: SweepConfig, record: dict, spec: dict, client, parent_id: str) -> dict:
    """Register the best trial's logged model as a new version of `registry.name` and point the alias at it.
    The previous champion keeps its version (and is named in the new version's tags). Idempotent per sweep."""
    import mlflow

    from kd.runtime.registry import alias_version, publish_version, version_tags

    name, alias, metric = sweep.registry.name, sweep.registry.alias, sweep.tune_metric
    tags = client.get_run(parent_id).data.tags
    if tags.get(Tag.CHAMPION_RUN_ID) == record["mlflow_run_id"] and tags.get(Tag.CHAMPION_VERSION):
        version = tags[Tag.CHAMPION_VERSION]
        return {"name": name, "alias": alias, "version": version, "uri": f"models:/{name}@{alias}",
                "trial_id": record["trial_id"], metric: record[metric], "already_registered": True}
    model_uri = record["model_uri"] or _log_from_checkpoint(record, spec, client)
    previous = alias_version(name, alias, client=client)
    mv = mlflow.register_model(model_uri, name)
    cfg = trial_distill_config(spec, record["params"], record["trial_id"])
    publish_version(name, mv.version, alias, {
        **version_tags(cfg), "sweep": sweep.name, "sweep_parent_run_id": parent_id, "trial_id": record["trial_id"],
        "run_id": record["mlflow_run_id"] or "", "metric": sweep.target_metric, metric: f"{record[metric]:.6f}",
        "loss": cfg.loss.name, "params": json.dumps(record["params"], sort_keys=True)[:5000],
        "trial_status": record["status"], "previous_champion_version": previous or "",
    }, client=client)
    client.set_tag(parent_id, Tag.CHAMPION_RUN_ID, record["mlflow_run_id"] or "")
    client.set_tag(parent_id, Tag.CHAMPION_VERSION, str(mv.version))
    client.set_tag(parent_id, Tag.CHAMPION_URI, f"models:/{name}@{alias}")
    logger.info("champion: trial %s (%s=%.4f) → models:/%s/%s @%s (previous: %s)", record["trial_id"], metric,
                record[metric], name, mv.version, alias, previous)
    return {"name": name, "alias": alias, "version": str(mv.version), "uri": f"models:/{name}@{alias}",
            "trial_id": record["trial_id"], metric: record[metric], "previous_version": previous,
            "model_uri": model_uri}
