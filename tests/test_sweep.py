"""jobs/sweep.py end to end on real SciFact data: a 6-trial CPU sweep against a real `mlflow server` (sqlite) and a
real Ray head, interrupted at the driver after the first finished trial and resumed with the same command.

The sweep is sized to this 2-CPU machine: every trial is 1 worker × 1 CPU (a 2-layer MiniLM BERT_DOT, 4 steps,
validation every 2 steps on 4 DL'19 queries), so 2 trials run at a time. It must: finish all 6 trials after the
resume without redoing the finished ones, have ASHA stop at least one trial early, leave one parent MLflow run with
a summary table and 6 nested child runs, and register the best trial's model as `models:/<name>@champion`.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kd.configs.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
NAME = "test-sweep"
REGISTERED = "kd-sweep-test"
METRIC = "val_ndcg_at_10"
STEPS = 4  # a full trial; validation (an ASHA rung candidate) every 2 steps


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    from kd.data import bm25_beir, load_beir, mine_triples, read_qrels, write_teacher_scores, write_triples
    from kd.teachers import load_bi_encoder_teacher

    root = tmp_path_factory.mktemp("sweep")
    scifact = shared_data / "beir" / "scifact"
    run = bm25_beir(scifact, split="train", top_k=100, show_progress=False)
    triples = mine_triples(run, read_qrels(scifact / "qrels" / "train.tsv"), n_negatives=1, top_k=100,
                           seed=0).triples[:64]
    write_triples(root / "triples.tsv", triples)
    beir = load_beir(scifact, split=None)
    texts = beir.texts()
    teacher = load_bi_encoder_teacher()  # a real teacher: the all-MiniLM-L6-v2 bi-encoder
    q = [beir.queries[t[0]] for t in triples]
    t_pos = teacher.predict(q, [texts[t[1]] for t in triples]).tolist()
    t_neg = teacher.predict(q, [texts[t[2]] for t in triples]).tolist()
    write_teacher_scores(root / "teacher_scores.tsv", [(a, b, *t) for a, b, t in zip(t_pos, t_neg, triples)])
    return {"root": root, "scifact": scifact}


def sweep_config(data, tracking_uri: str) -> dict:
    """The shipped CPU sweep (sweeps/scifact_cpu.yaml), made tiny: 3 objectives × 2 layer subsets, sampled lr."""
    cfg = yaml.safe_load((REPO / "sweeps" / "scifact_cpu.yaml").read_text())
    root, scifact = data["root"], data["scifact"]
    base = cfg["base"]
    base["teacher"]["scores"] = str(root / "teacher_scores.tsv")
    base["data"].update(queries=str(scifact / "queries.jsonl"), passages=str(scifact / "corpus.jsonl"),
                        triples=str(root / "triples.tsv"), max_examples=64)
    base["student"]["options"]["max_passage_length"] = 64
    base["validation"].update(max_queries=4, top_k=10, every_steps=2, batch_size=40)
    base["training"].update(micro_batch_size=8, max_steps=STEPS, checkpoint_every=STEPS, log_every=2, seed=7)
    cfg.update(
        name=NAME, storage_path=str(root / "sweeps"),
        search_space={
            "objective": {"grid": [{"loss.name": "margin_mse"}, {"loss.name": "kl"},
                                   {"loss.name": "ranknet", "mode": "supervised"}]},
            "student.init.layers": {"grid": ["top-bottom", "bottom"]},
            "training.lr": {"loguniform": [1.0e-4, 1.0e-3]},
        },
        scheduler={"name": "asha", "grace_period": 2, "reduction_factor": 2},
        registry={"name": REGISTERED, "alias": "champion", "dataset_tag": "scifact-train"},
        mlflow={"experiment": "sweep-test", "tracking_uri": tracking_uri},
    )
    return cfg


@pytest.fixture(scope="module")
def ray_cluster():
    """A real Ray head with the dashboard: Train V2 frees the workers of a trial that ASHA stopped through Ray's
    state API (PlacementGroupCleaner), which the dashboard serves."""
    from ray_head import RayHead

    with RayHead(num_cpus=2, dashboard=True) as head:
        yield head


@pytest.fixture(scope="module")
def sweep(data, ray_cluster, mlflow_server):
    """Start the sweep, SIGINT the driver once a trial has finished, then rerun the same command to resume."""
    path = data["root"] / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep_config(data, mlflow_server.uri)))
    exp = data["root"] / "sweeps" / NAME
    env = ray_cluster.env(MLFLOW_TRACKING_URI=mlflow_server.uri)
    cmd = [sys.executable, "-m", "jobs.sweep", "--config", str(path)]
    t0 = time.perf_counter()
    log1 = data["root"] / "first.log"
    with open(log1, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        finished: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None and not finished:
            finished = sorted((exp / "train_runs").glob("*/final.json"))
            time.sleep(0.5)
        assert finished, f"no trial finished (rc={proc.poll()}):\n{log1.read_text()[-5000:]}"
        before = {p.parent.name: p.stat().st_mtime_ns for p in sorted((exp / "train_runs").glob("*/final.json"))}
        proc.send_signal(signal.SIGINT)  # Ctrl+C at the driver
        rc1 = proc.wait(timeout=300)
    first = json.loads((exp / "summary.json").read_text()) if (exp / "summary.json").exists() else {}
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    t2 = time.perf_counter()
    assert proc.returncode == 0, f"first run:\n{log1.read_text()[-3000:]}\nresume:\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-6000:]}"
    summary = json.loads((exp / "summary.json").read_text())
    print(f"\nsweep: first run {t1 - t0:.0f}s (rc {rc1}), resumed run {t2 - t1:.0f}s; trials {summary['trials']}, "
          f"completed {summary['completed']}, stopped early {summary['stopped_early']}, "
          f"champion {summary.get('champion')}")
    return {"summary": summary, "first": first, "rc1": rc1, "before": before, "exp": exp, "config": path,
            "uri": mlflow_server.uri, "first_log": log1.read_text(), "resume_log": proc.stdout + proc.stderr}


def _client(uri):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _children(client, parent_id):
    exp = client.get_experiment_by_name("sweep-test")
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'")


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_redoing_finished_trials(sweep):
    assert sweep["rc1"] == 130, sweep["first_log"][-3000:]  # the driver reported an unfinished sweep
    assert sweep["first"].get("interrupted") and sweep["first"]["unfinished"] >= 1
    assert "champion" not in sweep["first"]
    assert "resuming sweep" in sweep["resume_log"]
    exp = sweep["exp"]
    after = {p.parent.name: p.stat().st_mtime_ns for p in (exp / "train_runs").glob("*/final.json")}
    for run_name, mtime in sweep["before"].items():  # finished trials were neither retrained nor re-logged
        assert after[run_name] == mtime, run_name
    summary = sweep["summary"]
    assert summary["trials"] == 6 and summary["unfinished"] == 0 and summary["errored"] == 0
    client = _client(sweep["uri"])
    children = _children(client, summary["parent_run_id"])
    names = [r.data.tags["kd.run_name"] for r in children]
    assert len(names) == len(set(names)) == 6  # one MLflow run per trial, across both driver runs


@pytest.mark.slow
def test_sweep_stops_trials_early_and_nests_trial_runs_under_the_parent(sweep):
    summary = sweep["summary"]
    assert summary["completed"] + summary["stopped_early"] == 6
    assert summary["stopped_early"] >= 1, summary["results"]
    for r in summary["results"]:
        if r["status"] == "stopped_early":
            assert r["steps"] < STEPS and r[METRIC] is not None
        else:
            assert r["steps"] == STEPS
    losses = {json.dumps(r["params"]["objective"], sort_keys=True) for r in summary["results"]}
    assert len(losses) == 3 and len({r["params"]["student.init.layers"] for r in summary["results"]}) == 2
    client = _client(sweep["uri"])
    parent = client.get_run(summary["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["kd.job"] == "sweep"
    assert parent.data.metrics["trials"] == 6 and parent.data.metrics["trials_stopped_early"] >= 1
    import pandas as pd
    from mlflow.artifacts import download_artifacts

    table = pd.read_csv(download_artifacts(run_id=parent.info.run_id, artifact_path="sweep_summary.csv",
                                           tracking_uri=sweep["uri"]))
    assert len(table) == 6 and set(table["status"]) <= {"completed", "stopped_early"}
    assert table[METRIC].tolist() == sorted(table[METRIC].tolist(), reverse=True)
    children = {r.data.tags["kd.trial_id"]: r for r in _children(client, parent.info.run_id)}
    assert set(children) == {r["trial_id"] for r in summary["results"]}
    for r in summary["results"]:
        run = children[r["trial_id"]]
        assert run.data.tags["kd.sweep"] == NAME
        assert run.data.params["loss.name"] == r["params"]["objective"]["loss.name"]
        assert run.data.params["student.init.layers"] == r["params"]["student.init.layers"]
        assert abs(float(run.data.params["training.lr"]) - r["params"]["training.lr"]) < 1e-12
        if r["status"] == "stopped_early":
            assert run.info.status == "KILLED" and run.data.tags["kd.sweep.stopped_early"] == "true"
        else:
            assert run.info.status == "FINISHED"
        assert abs(run.data.metrics["best_ndcg_at_10"] - r[METRIC]) < 1e-9
    supervised = [r for r in children.values() if r.data.params["loss.name"] == "ranknet"]
    assert supervised and all(r.data.params["mode"] == "supervised" for r in supervised)


@pytest.mark.slow
def test_champion_alias_resolves_to_the_best_trials_model(sweep, sample_rows, tmp_path):
    import numpy as np

    import kd

    summary = sweep["summary"]
    client = _client(sweep["uri"])
    children = _children(client, summary["parent_run_id"])
    best = max(r.data.metrics["best_ndcg_at_10"] for r in children)
    version = client.get_model_version_by_alias(REGISTERED, "champion")
    champion_run = client.get_run(version.run_id)
    assert champion_run.data.tags["mlflow.parentRunId"] == summary["parent_run_id"]
    assert champion_run.data.metrics["best_ndcg_at_10"] == best  # no trial validated better (ties: any of them)
    assert version.tags["trial_id"] == champion_run.data.tags["kd.trial_id"] == summary["best"]["trial_id"]
    assert abs(float(version.tags[METRIC]) - best) < 1e-6
    assert summary["champion"]["version"] == version.version and summary["champion"]["name"] == REGISTERED
    ranker = kd.load(f"models:/{REGISTERED}@champion", tracking_uri=sweep["uri"], cache_dir=tmp_path)
    assert ranker.version == version.version and ranker.architecture == "bert_dot"
    # the registered model is the champion trial's best student (same scores as its logged model)
    from kd.models import Ranker
    from kd.runtime.pyfunc import download_ranker_folder

    logged = Ranker.from_pretrained(download_ranker_folder(summary["champion"]["model_uri"],
                                                           tracking_uri=sweep["uri"]))
    q, p = sample_rows[0]["query"], [r["passage"] for r in sample_rows[:6]]
    np.testing.assert_array_equal(ranker.rerank(q, p), logged.predict([q] * len(p), p).numpy())


@pytest.mark.slow
def test_a_new_champion_moves_the_alias_and_the_previous_keeps_its_version(sweep):
    from kd.configs.loader import load_config
    from kd.runtime.sweep import register_champion
    from kd.configs.sweep import SweepConfig

    summary = sweep["summary"]
    client = _client(sweep["uri"])
    old = client.get_model_version_by_alias(REGISTERED, "champion")
    runner_up = sorted((r for r in summary["results"] if r["status"] == "completed"), key=lambda r: -r[METRIC])
    runner_up = [r for r in runner_up if r["trial_id"] != summary["best"]["trial_id"]][0]
    cfg = load_config(SweepConfig, sweep["config"])
    spec = json.loads((sweep["exp"] / "kd_sweep.json").read_text())["spec"]
    import mlflow

    mlflow.set_tracking_uri(sweep["uri"])
    new = register_champion(cfg, runner_up, spec, client, summary["parent_run_id"])
    try:
        assert int(new["version"]) == int(old.version) + 1 and new["previous_version"] == old.version
        now = client.get_model_version_by_alias(REGISTERED, "champion")
        assert now.version == new["version"] and now.tags["previous_champion_version"] == old.version
        kept = client.get_model_version(REGISTERED, old.version)  # still there, addressable by number
        assert kept.run_id == old.run_id and kept.tags["trial_id"] == summary["best"]["trial_id"]
    finally:
        client.set_registered_model_alias(REGISTERED, "champion", old.version)


@pytest.mark.parametrize(
    "override,message",
    [
        ("search_space={loss.name: {grid: [margin_mse, standard_kd]}}", "does not fit mode 'score_file'"),
        ("search_space={trainng.lr: {grid: [0.001]}}", "field search_space.trainng.lr: the distill config has no "
                                                       "field 'trainng' (did you mean 'training'?)"),
        ("search_space={student.init.num_layers: {grid: [2, 9]}}", "9 > the 6 layers"),
        ("search_space={training.lr: {loguniform: [0.0, 0.001]}}", "loguniform: low must be > 0"),
        ("search_space={objective: {grid: [{loss.name: kl}, {los.name: mse}]}}",
         "field search_space.objective.grid.1.los.name"),
        ("registry.alias=latest", "reserved"),
        ("base.validation.run=null", "field base.validation"),
    ],
)
def test_invalid_sweep_fails_fast_before_ray(data, override, message):
    path = data["root"] / "invalid.yaml"
    path.write_text(yaml.safe_dump(sweep_config(data, "sqlite:///unused.db")))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.sweep", "--config", str(path), "--set", override],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": ""})
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr
    assert "Ray" not in proc.stderr and elapsed < 5, f"{elapsed:.1f}s"


def test_sweep_config_is_import_light_and_sizes_trials_to_the_cluster(data):
    code = "import sys, kd.configs.sweep, jobs.sweep; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["False", "False"]
    from kd.configs.errors import ConfigError
    from kd.configs.sweep import SweepConfig
    from kd.configs.search_space import max_concurrent

    cfg = SweepConfig.model_validate(sweep_config(data, "sqlite:///unused.db"))
    assert max_concurrent(cfg, {"CPU": 2.0}) == 2 and max_concurrent(cfg, {"CPU": 16.0, "GPU": 4.0}) == 16
    gpu = sweep_config(data, "sqlite:///unused.db")
    gpu["base"]["training"].update(num_workers=2, use_gpu=True, cpus_per_worker=4)
    gpu_cfg = SweepConfig.model_validate(gpu)
    assert max_concurrent(gpu_cfg, {"CPU": 64.0, "GPU": 8.0}) == 4  # GPUs are the limit: 8 // 2
    with pytest.raises(ConfigError, match="one trial needs 2 GPU"):
        max_concurrent(gpu_cfg, {"CPU": 64.0, "GPU": 1.0})


def _tiny_sweep(tmp_path, shared_data) -> Path:
    """A valid sweep YAML on real validation files and placeholder training files (config checks only)."""
    for name in ("scores.tsv", "triples.tsv"):
        (tmp_path / name).write_text("")
    dl19, scifact = shared_data / "trec-dl-2019", shared_data / "beir" / "scifact"
    cfg = {
        "name": "tiny", "scheduler": {"name": "fifo"},
        "base": {"mode": "score_file", "student": {"architecture": "bert_dot"}, "loss": {"name": "margin_mse"},
                 "teacher": {"scores": str(tmp_path / "scores.tsv")},
                 "data": {"queries": str(scifact / "queries.jsonl"), "passages": str(scifact / "corpus.jsonl"),
                          "triples": str(tmp_path / "triples.tsv")},
                 "validation": {"run": str(dl19 / "runs" / "BM25.top100.trec"), "qrels": str(dl19 / "qrels" / "test.tsv"),
                                "queries": str(dl19 / "queries.jsonl"), "passages": str(dl19 / "corpus.jsonl")},
                 "training": {"max_steps": 4}},
        "search_space": {"training.lr": {"grid": [1.0e-4]}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_set_reaches_dotted_search_space_keys(tmp_path, shared_data):
    from kd.configs.loader import load_config
    from kd.configs.sweep import SweepConfig

    path = _tiny_sweep(tmp_path, shared_data)
    cfg = load_config(SweepConfig, path, ["search_space.training.lr={loguniform: [1e-5, 1e-3]}",
                                          "search_space.student.init.num_layers={grid: [2, 3]}",
                                          "trial_driver.resources.node:10.0.0.1=0.01"])
    assert cfg.search_space["training.lr"].loguniform == [1e-5, 1e-3] and cfg.search_space["training.lr"].grid is None
    assert cfg.search_space["student.init.num_layers"].grid == [2, 3]
    assert cfg.trial_driver.resources == {"node:10.0.0.1": 0.01}  # Ray resource names hold dots too
    cfg = load_config(SweepConfig, path, ["search_space.training.lr.grid=[1.0e-4, 3.0e-4]",  # a field of an entry
                                          "search_space.training.max_steps.grid=[2, 4]"])
    assert cfg.search_space["training.lr"].grid == [1e-4, 3e-4] and cfg.search_space["training.max_steps"].grid == [2, 4]
    assert load_config(SweepConfig, path, ["search_space.training.lr.grid.0=2.0e-4"]).search_space["training.lr"].grid \
        == [2e-4]
    with pytest.raises(ConfigError, match=r"field search_space.trainng.lr: the distill config has no field 'trainng'"):
        load_config(SweepConfig, path, ["search_space.trainng.lr={grid: [1e-4]}"])


def test_sweep_names_and_metric_are_checked(tmp_path, shared_data):
    from kd.configs.loader import load_config
    from kd.configs.sweep import SweepConfig

    path = _tiny_sweep(tmp_path, shared_data)
    assert load_config(SweepConfig, path, ["metric=MRR@10"]).target_metric == "mrr@10"
    for sets, message in ((["name=it's"], "field name: \"it's\": a name is"),
                          (["registry.name=../m"], "field registry.name: '../m': a name is"),
                          (["metric=ndcg@ten"], "field metric: unknown metric 'ndcg@ten'"),
                          (["base.run.name="], "field base.run.name: empty name"),
                          ([f"name={'s' * 81}"], "field name: '" + "s" * 81 + "': a sweep name is at most 80")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(SweepConfig, path, sets)


@pytest.mark.parametrize("left_as", ["RUNNING", "FAILED"])
def test_a_stopped_trials_run_ends_killed_whichever_way_its_worker_died(tmp_path, left_as):
    """ASHA's stop kills the trial's worker group: its run is left RUNNING, or ended FAILED by the trial's driver when
    the group died first (a race seen in CI). Both are a stop, not an error: the summary ends the run KILLED."""
    import mlflow

    from kd.runtime.sweep import close_stopped_runs

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("stops")
    stopped, done = client.create_run(exp), client.create_run(exp)
    if left_as != "RUNNING":
        client.set_terminated(stopped.info.run_id, left_as)
    client.set_terminated(done.info.run_id, "FINISHED")
    records = [{"status": "stopped_early", "mlflow_run_id": stopped.info.run_id, "run_status": left_as, "steps": 2,
                METRIC: 0.5},
               {"status": "completed", "mlflow_run_id": done.info.run_id, "run_status": "FINISHED", "steps": 4,
                METRIC: 0.6}]
    close_stopped_runs(records, METRIC, client)
    run = client.get_run(stopped.info.run_id)
    assert run.info.status == "KILLED" and records[0]["run_status"] == "KILLED"
    assert run.data.tags["kd.sweep.stopped_early"] == "true" and run.data.metrics["best_ndcg_at_10"] == 0.5
    assert client.get_run(done.info.run_id).info.status == "FINISHED"
