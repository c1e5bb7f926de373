"""jobs.distill's guards before (and around) Ray Train, on real files, without starting a Ray cluster.

- bad training data, malformed triples and a teacher/student vocabulary mismatch fail on the driver in seconds,
  naming the file and line (exit code 2), not inside the Ray workers after start-up and a retry;
- one run name, one run: a second job with the same run.name fails at once naming the holder of the lock; a changed
  config under an existing run.name is refused, naming the fields;
- checkpoints: only files the job saved are resumed (manifest digests), checked on every rank before loading;
- resources: what num_workers × per-worker resources need against what the cluster has;
- the MLflow run of a failed / interrupted job ends FAILED / KILLED.
The same guards on a real Ray cluster and real checkpoints: tests/test_distill.py.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kd.configs.errors import ConfigError
from kd.configs.distill import DistillConfig
from kd.configs.loader import load_config

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """A tiny real MS MARCO-style data set: queries and collection TSVs, a teacher-score file and id triples."""
    (tmp_path / "queries.tsv").write_text("q1\twhat causes fever\nq2\thow do vaccines work\n")
    (tmp_path / "collection.tsv").write_text(
        "p1\tFever is caused by pyrogens that raise the hypothalamic set point.\n"
        "p2\tThe stock market closed higher on Tuesday.\n"
        "p3\tVaccines train the immune system with an antigen.\n"
        "p4\tA recipe for lemon cake.\n")
    (tmp_path / "scores.tsv").write_text("1.5\t0.5\tq1\tp1\tp2\n2.0\t-1.0\tq2\tp3\tp4\n")
    (tmp_path / "triples.tsv").write_text("q1\tp1\tp2\nq2\tp3\tp4\n")
    return {"root": tmp_path, **{p.stem: p for p in tmp_path.glob("*.tsv")}}


def _config(files, name: str = "guarded", mode: str = "score_file", **sections) -> Path:
    root = files["root"]
    cfg = {
        "mode": mode,
        "student": {"architecture": "bert_dot", "init": {"num_layers": 1}},
        "loss": {"name": {"score_file": "margin_mse", "supervised": "ranknet"}.get(mode, "standard_kd")},
        "teacher": {"scores": str(files["scores"])} if mode == "score_file" else {},
        "data": {"queries": str(files["queries"]), "passages": str(files["collection"]),
                 **({} if mode == "score_file" else {"triples": str(files["triples"])})},
        "training": {"num_workers": 1, "micro_batch_size": 2, "max_steps": 2},
        "mlflow": {"tracking_uri": f"sqlite:///{root}/mlflow.db", "experiment": "guards"},
        "run": {"name": name, "storage_path": str(root / "runs")},
    }
    for section, value in sections.items():
        cfg[section] = {**cfg.get(section, {}), **value}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _job(config: Path, *overrides: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    """`python -m jobs.distill` as a user runs it; RAY_ADDRESS empty: it would start its own local Ray."""
    args = [sys.executable, "-m", "jobs.distill", "--config", str(config)]
    for o in overrides:
        args += ["--set", o]
    start = time.perf_counter()
    try:
        proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "RAY_ADDRESS": ""})
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the job was still running after {timeout:.0f} s (it got past the checks into Ray):\n"
                    f"{(e.stderr or b'')[-3000:]}")
    return proc, time.perf_counter() - start


def _refused_before_ray(proc: subprocess.CompletedProcess, *expected: str) -> None:
    assert proc.returncode == 2, proc.stderr[-4000:]
    for text in expected:
        assert text in proc.stderr, proc.stderr[-4000:]
    assert "Started a local Ray instance" not in proc.stderr and "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------- data checked on the driver
def test_nan_teacher_score_fails_on_the_driver_naming_file_and_line(files):
    files["scores"].write_text("1.5\t0.5\tq1\tp1\tp2\nnan\t-1.0\tq2\tp3\tp4\n")
    proc, elapsed = _job(_config(files))
    _refused_before_ray(proc, f"{files['scores']}, line 2", "non-finite")
    assert elapsed < 60, f"took {elapsed:.0f} s"


def test_malformed_triples_fail_on_the_driver_naming_file_and_line(files):
    files["triples"].write_text("q1\tp1\tp2\nq2\tp3\n")
    proc, _ = _job(_config(files, mode="supervised", student={"architecture": "bert_cat"}))
    _refused_before_ray(proc, f"{files['triples']}, line 2")


def test_vocabulary_mismatch_fails_on_the_driver(files, minilm_path):
    """In-loop KD with a student backbone whose tokenizer is not the teacher's (a real, tiny BERT with its own
    10-token vocabulary)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = files["root"] / "tiny-bert"
    folder.mkdir()
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "fever", "cause", "vaccine", "a", "b"]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=16)).save_pretrained(folder)
    config = _config(files, mode="in_loop", student={"architecture": "tinybert_cat", "backbone": str(folder)},
                     teacher={"model": minilm_path}, loss={"name": "standard_kd"})
    proc, _ = _job(config)
    _refused_before_ray(proc, "field student.backbone", "vocabulary", str(folder))


def test_the_driver_check_counts_what_the_workers_load(files):
    """check_examples is the same readers and joins as load_examples (the workers'), only streamed."""
    from kd.training import check_examples, load_examples

    files["scores"].write_text("1.5\t0.5\tq1\tp1\tp2\n2.0\t-1.0\tq2\tp3\tp4\n3.0\t1.0\tq9\tp3\tp4\n")
    cfg = load_config(DistillConfig, _config(files, data={"strict": False}))
    assert check_examples(cfg) == load_examples(cfg).stats
    assert check_examples(cfg)["missing_query"] == 1 and check_examples(cfg)["examples"] == 2
    files["scores"].write_text("3.0\t1.0\tq9\tp3\tp4\n")
    with pytest.raises(Exception, match="no training examples") as err:
        check_examples(cfg)
    assert str(files["scores"]) in str(err.value)


# --------------------------------------------------------------------------------------- one run name, one run
_HOLDER = """
import sys, time
from kd.configs import DistillConfig, load_config
from kd.runtime.distill import absolutize
from kd.runtime.run_guards import run_lock
with run_lock(absolutize(load_config(DistillConfig, sys.argv[1]))):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_job_with_the_same_run_name_fails_at_once_naming_the_holder(files):
    config = _config(files)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(config)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc, elapsed = _job(config)
        _refused_before_ray(proc, "in use by another job", f"pid {holder.pid} on host {socket.gethostname()}",
                            str(files["root"] / "runs" / "guarded" / ".kd_lock"))
        assert elapsed < 60
    finally:
        holder.kill()
        holder.wait()
    from kd.runtime.distill import absolutize
    from kd.runtime.run_guards import run_lock

    with run_lock(absolutize(load_config(DistillConfig, config))):  # the kernel released the dead holder's lock
        pass


def test_changed_config_under_a_run_name_is_refused_naming_the_fields(files):
    from kd.runtime.distill import absolutize
    from kd.runtime.run_guards import check_same_run

    config = _config(files)
    check_same_run(absolutize(load_config(DistillConfig, config)))  # the first job records the run's fields
    # what does not define the run may change: tracking, registry, fault tolerance
    check_same_run(absolutize(load_config(DistillConfig, config, ["training.max_failures=3", "mlflow.experiment=x",
                                                                  "registry.alias=other"])))
    other = files["root"] / "other_scores.tsv"
    other.write_text(files["scores"].read_text())
    changed = absolutize(load_config(DistillConfig, config, ["training.lr=1e-3", "training.max_steps=5",
                                                             f"teacher.scores={other}"]))
    with pytest.raises(ConfigError) as err:
        check_same_run(changed)
    message = str(err.value)
    for text in ("field run.name", "teacher.scores: ", str(other), "training.lr: 7e-06 → 0.001",
                 "training.max_steps: 2 → 5", "pick a new run.name", f"delete {files['root'] / 'runs' / 'guarded'}"):
        assert text in message, message
    assert "max_failures" not in message


# ------------------------------------------------------------------------------------------------ cluster size
@pytest.mark.parametrize("training,total,node,expected", [
    ({"num_workers": 4}, {"CPU": 2.0}, {"CPU": 2.0}, ["4 CPU (training.num_workers 4 × 1 CPU per worker, "
                                                      "training.cpus_per_worker) but the cluster has 2"]),
    ({"num_workers": 2}, {"CPU": 2.0}, {"CPU": 2.0}, []),
    ({"num_workers": 2, "cpus_per_worker": 2}, {"CPU": 4.0}, {"CPU": 2.0}, []),
    ({"num_workers": 1, "cpus_per_worker": 3}, {"CPU": 4.0}, {"CPU": 2.0},
     ["3 CPU per worker on one node, but the largest node has 2"]),
    ({"num_workers": 2, "use_gpu": True}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0},
     ["2 GPU (training.num_workers 2 × 1 GPU per worker) but the cluster has 1"]),
])
def test_resource_shortfall_names_what_is_needed_and_what_exists(files, training, total, node, expected):
    from kd.runtime.run_guards import resource_shortfall

    cfg = load_config(DistillConfig, _config(files, training=training))
    assert resource_shortfall(cfg, total, node) == expected


def test_how_a_cluster_that_may_autoscale_is_recognised(tmp_path, monkeypatch):
    """The signs an autoscaling cluster leaves (none can exist here, so they are put in place): KubeRay's pod env,
    the cluster launcher's bootstrap file on the head. Without them (and no autoscaler config in a GCS) a need above
    the cluster's total fails (tests/test_distill.py, on a real head)."""
    from kd.runtime.run_guards import may_autoscale

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_USAGE_STATS_KUBERAY_IN_USE", raising=False)
    assert not may_autoscale()
    monkeypatch.setenv("RAY_USAGE_STATS_KUBERAY_IN_USE", "1")
    assert may_autoscale()
    monkeypatch.delenv("RAY_USAGE_STATS_KUBERAY_IN_USE")
    (tmp_path / "ray_bootstrap_config.yaml").write_text("cluster_name: kd\n")
    assert may_autoscale()


# ------------------------------------------------------------------------------------------ checkpoint integrity
def _saved_checkpoint(folder: Path, cfg) -> set[str]:
    """A checkpoint folder as two ranks save it, sealed by rank 0 as the job does; returns the trusted digests."""
    from kd.runtime.run_guards import file_digests, seal_checkpoint

    (folder / "ds").mkdir(parents=True)
    (folder / "ds" / "mp_rank_00_model_states.pt").write_bytes(b"model states")
    (folder / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"rank 0 shard")
    rank1 = folder.parent / "rank1"
    (rank1 / "ds").mkdir(parents=True)
    (rank1 / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"rank 1 shard")
    per_rank = [file_digests(folder), file_digests(rank1)]
    seal_checkpoint(cfg, folder, 6, per_rank)
    (folder / "ds" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"rank 1 shard")  # Ray merges them
    return {hashlib.sha256((folder / "kd_manifest.json").read_bytes()).hexdigest()}


def test_checkpoint_problem_refuses_what_the_job_did_not_write(files, tmp_path, monkeypatch):
    from kd.runtime.run_guards import checkpoint_problem, trusted_digests

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the no-MLflow ledger lives in ~/.cache/kd
    cfg = load_config(DistillConfig, _config(files, mlflow={"enabled": False}))
    ckpt = tmp_path / "ckpt"
    trusted = _saved_checkpoint(ckpt, cfg)
    assert trusted_digests(cfg) == trusted and checkpoint_problem(ckpt, trusted) is None
    model = ckpt / "ds" / "mp_rank_00_model_states.pt"
    original = model.read_bytes()
    model.write_bytes(original + b"appended")
    assert "mp_rank_00_model_states.pt: sha256 differs" in checkpoint_problem(ckpt, trusted)
    model.write_bytes(original)
    extra = ckpt / "ds" / "zero_pp_rank_2_mp_rank_00_optim_states.pt"  # DeepSpeed globs the shards
    extra.write_bytes(b"planted")
    assert "not written by the job" in checkpoint_problem(ckpt, trusted)
    extra.unlink()
    manifest = ckpt / "kd_manifest.json"
    edited = json.loads(manifest.read_text())
    edited["files"]["ds/mp_rank_00_model_states.pt"] = hashlib.sha256(b"evil").hexdigest()
    manifest.write_text(json.dumps(edited))  # a rewritten manifest is not one the job recorded
    assert "not a manifest this run recorded" in checkpoint_problem(ckpt, trusted)
    manifest.unlink()
    assert "no kd_manifest.json" in checkpoint_problem(ckpt, trusted)


def test_every_rank_verifies_before_loading(files, tmp_path, monkeypatch):
    """verify_restored in a real (1-process, gloo) process group, rank 0 reading the run's record."""
    import torch
    import torch.distributed as dist

    from kd.data import FormatError
    from kd.runtime.run_guards import verify_restored

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_config(DistillConfig, _config(files, mlflow={"enabled": False}))
    ckpt = tmp_path / "ckpt"
    _saved_checkpoint(ckpt, cfg)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        verify_restored(cfg, ckpt, 0, torch.device("cpu"))
        (ckpt / "best_student").mkdir()
        (ckpt / "best_student" / "model.safetensors").write_bytes(b"swapped weights")
        with pytest.raises(FormatError, match="refusing to resume run 'guarded'.*best_student/model.safetensors: not "
                                              "written by the job.*delete"):
            verify_restored(cfg, ckpt, 0, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


# -------------------------------------------------------------------------------------------- MLflow lifecycle
@pytest.mark.parametrize("exc,status", [(KeyboardInterrupt(), "KILLED"), (RuntimeError("worker died"), "FAILED")])
def test_the_driver_ends_a_run_left_running(files, exc, status):
    """A worker killed with the job cannot end its MLflow run; the driver ends it (real sqlite tracking store)."""
    from mlflow import MlflowClient

    from kd.runtime.distill import end_open_run
    from kd.runtime.tracking import use_experiment

    cfg = load_config(DistillConfig, _config(files))
    use_experiment(cfg.mlflow)
    client = MlflowClient(cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("guards").experiment_id
    other = client.create_run(experiment, tags={"kd.run_name": "guarded-2"})  # a name that merely starts alike
    run = client.create_run(experiment, tags={"kd.run_name": "guarded"})
    end_open_run(cfg, exc)
    assert client.get_run(run.info.run_id).info.status == status
    assert client.get_run(other.info.run_id).info.status == "RUNNING"
