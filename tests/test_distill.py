"""jobs/distill.py end to end, every mode: 2 CPU workers, DeepSpeed ZeRO-2, real MiniLM weights, real SciFact/DL'19.

Each run trains for a few steps and must: lower its loss, log validation, leave an MLflow run with params/metrics,
register a new model version under the alias, and the registered folder must load back into the same scores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from kd.data import bm25_beir, load_beir, mine_triples, read_qrels, write_teacher_scores, write_triples
from kd.models import Ranker, TinyBertCat
from kd.teachers import load_bi_encoder_teacher

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster(ray_head):
    """A real local Ray cluster (head node) that every job joins through RAY_ADDRESS, as under `ray job submit`."""
    return ray_head


@pytest.fixture(scope="module")
def data(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("distill")
    scifact = shared_data / "beir" / "scifact"
    run = bm25_beir(scifact, split="train", top_k=100, show_progress=False)
    mined = mine_triples(run, read_qrels(scifact / "qrels" / "train.tsv"), n_negatives=1, top_k=100, seed=0)
    triples = mined.triples[:192]
    write_triples(root / "triples.tsv", triples)
    # teacher scores from a real teacher: the all-MiniLM-L6-v2 bi-encoder itself
    beir = load_beir(scifact, split=None)
    texts = beir.texts()
    teacher = load_bi_encoder_teacher()
    q = [beir.queries[t[0]] for t in triples]
    t_pos = teacher.predict(q, [texts[t[1]] for t in triples]).tolist()
    t_neg = teacher.predict(q, [texts[t[2]] for t in triples]).tolist()
    write_teacher_scores(root / "teacher_scores.tsv", [(a, b, *t) for a, b, t in zip(t_pos, t_neg, triples)])
    torch.manual_seed(0)
    TinyBertCat.from_backbone(max_length=160).save_pretrained(root / "ce_teacher")  # 6-layer cross-encoder teacher
    dl19 = shared_data / "trec-dl-2019"
    return {
        "root": root, "scifact": scifact,
        "validation": {
            "run": str(dl19 / "runs" / "BM25.top100.trec"), "qrels": str(dl19 / "qrels" / "test.tsv"),
            "queries": str(dl19 / "queries.jsonl"), "passages": str(dl19 / "corpus.jsonl"),
            "top_k": 10, "max_queries": 6, "every_steps": 6, "relevance_level": 2, "batch_size": 32,
        },
        "msmarco_queries": str(shared_data / "msmarco-dev-small" / "queries.tsv"),
    }


def _config(fx, name: str, mode: str, student: dict, loss: dict, **extra) -> Path:
    data = fx
    root = data["root"]
    cfg = {
        "mode": mode, "student": student, "loss": loss,
        "data": {"queries": str(data["scifact"] / "queries.jsonl"), "passages": str(data["scifact"] / "corpus.jsonl"),
                 "triples": str(root / "triples.tsv"), "max_examples": 64},
        "validation": data["validation"],
        # 64 examples seen 3 times (4 steps per epoch on 2 workers): the loss must come down on data it has seen
        "training": {"num_workers": 2, "zero_stage": 2, "micro_batch_size": 8, "epochs": 3, "max_steps": 12,
                     "lr": 2.0e-4, "checkpoint_every": 6, "log_every": 2, "seed": 7, "max_failures": 1},
        "registry": {"name": f"kd-test-{mode}", "alias": "current", "dataset_tag": "scifact-train"},
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "experiment": "distill-test"},
        "run": {"name": name, "storage_path": str(root / "runs")},
    }
    for key, value in extra.items():
        section, _, field = key.partition("__")
        if field:
            cfg.setdefault(section, {})[field] = value
        else:
            cfg[section] = value
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _distill(config: Path, head) -> dict:
    env = head.env()  # a `ray start` cluster uses token auth here (~/.ray/auth_token): ray_head opts clients in
    proc = subprocess.run([sys.executable, "-m", "jobs.distill", "--config", str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    cfg = yaml.safe_load(config.read_text())
    return json.loads((Path(cfg["run"]["storage_path"]) / cfg["run"]["name"] / "final.json").read_text())


def _check_run(config: Path, final: dict, sample_rows) -> None:
    import mlflow
    from mlflow import MlflowClient

    cfg = yaml.safe_load(config.read_text())
    mlflow.set_tracking_uri(cfg["mlflow"]["tracking_uri"])
    client = MlflowClient()
    run = client.get_run(final["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["mode"] == cfg["mode"] and run.data.params["loss.name"] == cfg["loss"]["name"]
    # training.precision (auto) as the worker resolved it on this CPU, with the reason
    from kd.precision import resolve_precision

    assert run.data.params["info.precision"] == resolve_precision("auto", "cpu").precision
    assert "native bf16" in run.data.params["info.precision_reason"]
    assert run.data.tags["kd.dataset"] == "scifact-train" and run.data.tags["kd.git_commit"]
    loss = [m.value for m in client.get_metric_history(run.info.run_id, "loss")]
    assert len(loss) >= 4
    assert sum(loss[-2:]) / 2 < sum(loss[:2]) / 2, f"loss did not decrease: {loss}"
    val = client.get_metric_history(run.info.run_id, "val_ndcg_at_10")
    assert [m.step for m in val] == [6, 12] and all(0 <= m.value <= 1 for m in val)
    assert client.get_metric_history(run.info.run_id, "examples_per_second")[-1].value > 0

    name, alias = cfg["registry"]["name"], cfg["registry"]["alias"]
    version = client.get_model_version_by_alias(name, alias)
    assert str(version.version) == final["registered_version"]
    assert version.tags["architecture"] == cfg["student"]["architecture"]
    # the registered folder loads back into the same scores as the run's best student
    from kd.runtime.pyfunc import download_ranker_folder

    folder = download_ranker_folder(f"models:/{name}@{alias}")
    db_dir = Path(cfg["mlflow"]["tracking_uri"][len("sqlite:///"):]).parent
    assert run.info.artifact_uri.startswith((db_dir / "mlartifacts").as_uri())  # not in a worker's temp dir
    registered = Ranker.from_pretrained(folder)
    runs_dir = Path(cfg["run"]["storage_path"]) / cfg["run"]["name"]
    latest = sorted(p for p in runs_dir.glob("checkpoint_*") if p.is_dir())[-1]
    best = Ranker.from_pretrained(latest / "best_student")
    q = [r["query"] for r in sample_rows[:4]]
    p = [r["passage"] for r in sample_rows[:4]]
    assert torch.equal(registered.predict(q, p), best.predict(q, p))
    assert best.architecture == cfg["student"]["architecture"]
    # final_model (what configs name as a teacher) is that same student, and the run stores it once (in the pyfunc)
    assert torch.equal(Ranker.from_pretrained(final["final_model"]).predict(q, p), best.predict(q, p))
    assert "student" not in [a.path for a in client.list_artifacts(run.info.run_id)]
    # and it serves through the pyfunc flavour too
    import pandas as pd

    served = mlflow.pyfunc.load_model(f"models:/{name}@{alias}").predict(pd.DataFrame({"query": q, "passage": p}))
    torch.testing.assert_close(torch.as_tensor(served), best.predict(q, p), atol=1e-5, rtol=1e-5)


MODES = {
    "score_file": dict(
        student={"architecture": "bert_dot", "options": {"pooling": "mean", "max_passage_length": 96},
                 "init": {"num_layers": 2}},
        loss={"name": "margin_mse"}, teacher={"scores": "{root}/teacher_scores.tsv"}),
    "supervised": dict(
        student={"architecture": "bert_cat", "options": {"max_passage_length": 96}, "init": {"num_layers": 2}},
        loss={"name": "ranknet"}),
    "in_loop": dict(
        student={"architecture": "tinybert_cat", "init": {"strategy": "teacher_layers", "layers": "uniform",
                                                          "num_layers": 3}},
        loss={"name": "simplified_tinybert"}, teacher={"model": "{root}/ce_teacher"}),
    "embedding": dict(
        student={"architecture": "bert_dot", "init": {"strategy": "teacher_layers", "layers": [0, 5]}},
        loss={"name": "embedding_alignment"}, teacher={"model": "sentence-transformers/all-MiniLM-L6-v2", "kind": "bi"}),
}


def _mode_config(data, mode: str, name: str, **extra) -> Path:
    spec = {k: json.loads(json.dumps(v).replace("{root}", str(data["root"]))) for k, v in MODES[mode].items()}
    if mode == "embedding":
        extra.setdefault("data", {
            "query_files": [data["msmarco_queries"], str(data["scifact"] / "queries.jsonl")],
            "exclude_query_ids_from": str(data["scifact"] / "qrels" / "test.tsv"), "max_examples": 64})
    if mode == "in_loop":
        extra.setdefault("training__micro_batch_size", 4)
        extra.setdefault("training__epochs", 6)
    return _config(data, name, mode, spec.pop("student"), spec.pop("loss"), **spec, **extra)


_FINALS: dict[str, dict] = {}


def _mode_run(data, mode: str, ray_cluster) -> tuple[Path, dict]:
    """Each mode's run happens once per module (the failure test reuses score_file's as its baseline)."""
    config = _mode_config(data, mode, f"{mode}-run")
    if mode not in _FINALS:
        _FINALS[mode] = _distill(config, ray_cluster)
    return config, _FINALS[mode]


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_trains_logs_and_registers(mode, data, ray_cluster, sample_rows):
    config, final = _mode_run(data, mode, ray_cluster)
    assert final["step"] == 12 and 0 <= final["best_ndcg_at_10"] <= 1
    _check_run(config, final, sample_rows)


def test_worker_failure_resumes_from_checkpoint_with_the_same_result(data, ray_cluster):
    _, baseline = _mode_run(data, "score_file", ray_cluster)  # the uninterrupted run, same seed and config
    config = _mode_config(data, "score_file", "fault-injected",
                          training={"num_workers": 2, "zero_stage": 2, "micro_batch_size": 8, "epochs": 3,
                                    "max_steps": 12, "lr": 2.0e-4, "checkpoint_every": 6, "log_every": 2, "seed": 7,
                                    "max_failures": 1, "fault_injection": {"at_step": 8, "rank": 1}})
    final = _distill(config, ray_cluster)
    marker = data["root"] / "runs" / "fault-injected" / ".fault_injected"
    assert marker.exists() and "killed at step 8" in marker.read_text()
    assert final["step"] == 12
    assert abs(final["best_ndcg_at_10"] - baseline["best_ndcg_at_10"]) < 1e-3
    assert abs(final["best_val_mrr_at_10"] - baseline["best_val_mrr_at_10"]) < 1e-3
    # rerunning a finished run neither retrains nor registers again
    again = _distill(config, ray_cluster)
    assert again["registered_version"] == final["registered_version"]


@pytest.mark.parametrize(
    "override,field,message",
    [
        ("student.architecture=bert_kat", "student.architecture", "unknown architecture 'bert_kat'"),
        ("loss.name=margin_mze", "loss.name", "unknown loss 'margin_mze'"),
        ("student.init.layers=[0,9]", "student.init.layers", "out of range"),
        ("teacher.scores=./no/such/file.tsv", "teacher.scores", "file not found"),
        ("loss.name=embedding_alignment", "loss.name", "does not fit mode 'score_file'"),
        ("loss.name=standard_kd", "loss.name", "does not fit mode 'score_file'"),
        ("registry.alias=latest", "registry.alias", "reserved"),
        ("training.zero_stage=3", "training.zero_stage", "'auto'"),
    ],
)
def test_invalid_config_fails_fast_before_ray(data, override, field, message):
    config = _mode_config(data, "score_file", "invalid")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.distill", "--config", str(config), "--set", override],
                          cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "RAY_ADDRESS": ""})
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"field {field}" in proc.stderr and message in proc.stderr
    assert "Ray" not in proc.stderr
    assert elapsed < 5, f"took {elapsed:.1f}s"


# ------------------------------------------------------------------------------ guards around a real run (issue 14)
def _job(config: Path, head, *overrides: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    args = [sys.executable, "-m", "jobs.distill", "--config", str(config)]
    for o in overrides:
        args += ["--set", o]
    start = time.perf_counter()
    try:
        proc = subprocess.run(args, cwd=REPO, env=head.env(), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"still running after {timeout:.0f} s:\n{(e.stderr or b'')[-3000:]}")
    return proc, time.perf_counter() - start


def test_changed_config_under_an_existing_run_name_is_refused(data, ray_cluster):
    """lr, teacher file and max_steps changed under a finished run's name: refused before Ray, naming the fields."""
    config, _ = _mode_run(data, "score_file", ray_cluster)
    other = data["root"] / "teacher_scores_v2.tsv"
    other.write_text((data["root"] / "teacher_scores.tsv").read_text())
    proc, elapsed = _job(config, ray_cluster, "training.lr=1e-3", "training.max_steps=14", f"teacher.scores={other}",
                         timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    for text in ("training.lr: 0.0002 → 0.001", "training.max_steps: 12 → 14", f"→ '{other}'",
                 f"delete {data['root'] / 'runs' / 'score_file-run'}"):
        assert text in proc.stderr, proc.stderr[-3000:]
    assert elapsed < 60 and "resumed at step" not in proc.stderr


def test_more_workers_than_the_cluster_holds_fail_fast(data, ray_cluster):
    """num_workers=4 on a 2-CPU cluster: today Ray Train waits for the 4 CPUs forever."""
    config = _mode_config(data, "score_file", "too-many-workers")
    proc, elapsed = _job(config, ray_cluster, "training.num_workers=4", timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "field training.num_workers: the workers need 4 CPU" in proc.stderr and "the cluster has 2" in proc.stderr
    assert elapsed < 90, f"took {elapsed:.0f} s"


_AUTOSCALE_PROBE = """
import logging, sys
import ray
from kd.configs import ConfigError, DistillConfig, load_config
from kd.runtime import run_guards
logging.basicConfig(level=logging.WARNING)
cfg = load_config(DistillConfig, sys.argv[1], ["training.num_workers=4"])
ray.init(log_to_driver=False)  # RAY_ADDRESS: the test's head
print("may_autoscale", run_guards.may_autoscale())
try:
    run_guards.check_resources(cfg)
except ConfigError as e:
    print("refused:", e)
run_guards.may_autoscale = lambda: True  # no autoscaler can exist here: stand in for one
run_guards.check_resources(cfg)
print("accepted")
"""


def test_a_cluster_that_may_autoscale_only_warns(data, ray_cluster):
    config = _mode_config(data, "score_file", "autoscale")
    proc = subprocess.run([sys.executable, "-c", _AUTOSCALE_PROBE, str(config)], cwd=REPO, env=ray_cluster.env(),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "may_autoscale False" in proc.stdout  # a `ray start` head: no autoscaler config in its GCS
    assert "refused: field training.num_workers: the workers need 4 CPU" in proc.stdout
    assert "accepted" in proc.stdout and "waiting for the autoscaler to add nodes" in proc.stderr


_PAYLOAD = """
import pathlib, sys, torch
class Payload:
    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(sys.argv[2]), "payload ran\\n"))
torch.save({"module": Payload()}, sys.argv[1])
"""


def test_failed_run_ends_failed_and_a_tampered_checkpoint_is_never_unpickled(data, ray_cluster, tmp_path):
    """A real run checkpoints every step and its only worker dies at step 4 (no retries): the job fails and its
    MLflow run ends FAILED. Then the checkpoint Ray Train would restore is tampered with on storage: appended bytes,
    then a pickle whose __reduce__ writes a marker file. A rerun is refused before Ray Train starts (driver, naming the
    file); with the driver's check out of the way (mlflow.enabled=false) the workers refuse it too, and the payload
    never runs."""
    import hashlib

    import mlflow

    config = _mode_config(data, "score_file", "tampered", validation={}, data__max_examples=16,
                          training={"num_workers": 1, "micro_batch_size": 8, "epochs": 3, "max_steps": 4,
                                    "checkpoint_every": 1, "log_every": 1, "seed": 7, "max_failures": 0,
                                    "fault_injection": {"at_step": 4, "rank": 0}})
    proc, _ = _job(config, ray_cluster)
    assert proc.returncode != 0 and (data["root"] / "runs" / "tampered" / ".fault_injected").exists()
    cfg = yaml.safe_load(config.read_text())
    client = mlflow.MlflowClient(cfg["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name(cfg["mlflow"]["experiment"]).experiment_id
    [run] = client.search_runs([experiment], filter_string="tags.`kd.run_name` = 'tampered'")
    assert run.info.status == "FAILED"
    folder = data["root"] / "runs" / "tampered"
    latest = json.loads((folder / "checkpoint_manager_snapshot.json").read_text())["latest_checkpoint_result"]
    ckpt, step = folder / latest["checkpoint_dir_name"], latest["metrics"]["step"]  # what Ray Train restores
    manifest = (ckpt / "kd_manifest.json").read_bytes()
    assert run.data.tags[f"kd.checkpoint_sha256.step_{step}"] == hashlib.sha256(manifest).hexdigest()

    model = ckpt / "ds" / "mp_rank_00_model_states.pt"
    original = model.read_bytes()
    model.write_bytes(original + b"\0appended")
    proc, elapsed = _job(config, ray_cluster, timeout=120)
    assert proc.returncode == 2 and f"{model}: sha256 differs" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and elapsed < 60

    marker = tmp_path / "payload-ran"
    subprocess.run([sys.executable, "-c", _PAYLOAD, str(model), str(marker)], check=True)
    probe = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"  # what DeepSpeed's load does
    subprocess.run([sys.executable, "-c", probe, str(model)], check=True)
    assert marker.read_text() == "payload ran\n"  # the payload is real
    marker.unlink()
    proc, _ = _job(config, ray_cluster, timeout=120)
    assert proc.returncode == 2 and f"{model}: sha256 differs" in proc.stderr, proc.stderr[-3000:]
    proc, _ = _job(config, ray_cluster, "mlflow.enabled=false")  # only the workers' check stands in the way
    assert proc.returncode != 0
    assert "refusing to resume run 'tampered'" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert not marker.exists(), "the tampered checkpoint was unpickled"
