"""Ctrl+C and SIGTERM: jobs stop within seconds with 130 / 143, their MLflow runs end KILLED (FAILED on an error),
Ray's signal handlers do not outlive its fits, and a job tears down the local Ray it started.

The job tests run the real `jobs.pipeline` in a subprocess on a tiny config whose only stage to run is `evaluate`
(the student is the packaged all-MiniLM-L6-v2, marked done), tracked to a real sqlite MLflow store."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from kd.runtime.interrupts import Terminated, exit_code, keep_signal_handlers, run_status, sigterm_raises

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "kd-interrupts"


# ------------------------------------------------------------------------------------------------------ units
def test_run_status_names_how_the_body_ended():
    assert run_status(None) == "FINISHED"
    assert run_status(KeyboardInterrupt()) == "KILLED"
    assert run_status(Terminated()) == "KILLED"
    assert run_status(ValueError("bad")) == "FAILED"
    assert run_status(SystemExit(1)) == "FAILED"


def test_exit_codes_are_128_plus_the_signal():
    assert exit_code(KeyboardInterrupt()) == 130
    assert exit_code(Terminated()) == 143


def test_sigterm_raises_terminated_and_restores_the_default():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with sigterm_raises():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before


def test_ray_train_and_tune_sigint_handlers_do_not_outlive_the_fit():
    """The handlers Ray Train V2's `fit()` (DataParallelTrainer._register_sigint_handler) and Ray Tune's `fit()`
    (tune._setup_signal_catching) install, with Ray's own code, are gone after keep_signal_handlers."""
    from ray.train.torch import TorchTrainer
    from ray.tune.tune import _setup_signal_catching

    before = signal.getsignal(signal.SIGINT)
    with keep_signal_handlers():
        TorchTrainer._register_sigint_handler(None, controller=None)  # uses no trainer state
        assert signal.getsignal(signal.SIGINT) is not before  # Ray Train's "Gracefully aborting" handler
    assert signal.getsignal(signal.SIGINT) is before
    usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        with keep_signal_handlers():
            _setup_signal_catching()
            assert signal.getsignal(signal.SIGINT) is not before
        assert signal.getsignal(signal.SIGINT) is before
    finally:
        signal.signal(signal.SIGUSR1, usr1)


def test_the_systemexit_of_ray_trains_abort_becomes_keyboardinterrupt():
    from ray.train.torch import TorchTrainer

    with pytest.raises(KeyboardInterrupt):
        with keep_signal_handlers():
            TorchTrainer._register_sigint_handler(None, controller=None)
            raise SystemExit(1)  # what fit() raises after its handler aborted the run (see the slow test below)
    with pytest.raises(SystemExit):  # any other SystemExit is left alone
        with keep_signal_handlers():
            raise SystemExit(1)


def test_run_job_turns_interrupts_into_130_and_143(tmp_path, capsys):
    from jobs._common import run_job
    from kd.configs.mine import MineTriplesConfig
    from kd.configs.catalog import resources_dir

    cfg = tmp_path / "mine.yaml"
    scifact = resources_dir() / "quickstart" / "scifact"
    cfg.write_text(f"beir: {scifact}\nsplit: dev\nrun: {scifact / 'runs' / 'bm25.dev.trec'}\n"
                   f"output: {tmp_path / 'x.tsv'}\n")

    def ctrl_c(_cfg):
        raise KeyboardInterrupt

    def sigterm(_cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    class Unhandled(Exception):
        pass

    def unhandled(signum, frame):  # this process is pytest: a SIGTERM that run_job leaves alone must not kill it
        raise Unhandled("run_job did not handle SIGTERM")

    try:
        assert run_job("doc", MineTriplesConfig, ctrl_c, ["--config", str(cfg)]) == 130
    except KeyboardInterrupt:
        pytest.fail("run_job let KeyboardInterrupt through")
    assert "interrupted (Ctrl+C)" in capsys.readouterr().err
    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        assert run_job("doc", MineTriplesConfig, sigterm, ["--config", str(cfg)]) == 143
        assert signal.getsignal(signal.SIGTERM) is unhandled, "run_job must put the handler back"
    finally:
        signal.signal(signal.SIGTERM, before)
    assert "interrupted (SIGTERM)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- a real Ray fit
FIT_SCRIPT = textwrap.dedent("""
    import os, signal, sys, threading, time
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from kd.runtime.interrupts import keep_signal_handlers

    def loop(config):
        time.sleep(120)

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    original = signal.getsignal(signal.SIGINT)

    def ctrl_c_once_ray_trains_handler_is_in():
        while signal.getsignal(signal.SIGINT) is original:
            time.sleep(0.2)
        time.sleep(1)
        print("SIGINT", flush=True)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=ctrl_c_once_ray_trains_handler_is_in, daemon=True).start()
    t0 = time.monotonic()
    try:
        with keep_signal_handlers():
            TorchTrainer(loop, scaling_config=ScalingConfig(num_workers=1),
                         run_config=RunConfig(name="fit", storage_path=sys.argv[1])).fit()
        print("RESULT returned")
    except KeyboardInterrupt:
        print("RESULT KeyboardInterrupt", round(time.monotonic() - t0))
    print("RESTORED", signal.getsignal(signal.SIGINT) is original, flush=True)
    ray.shutdown()
""")


@pytest.mark.slow
def test_ctrl_c_during_a_real_ray_train_fit_is_a_keyboardinterrupt_and_the_handler_is_restored(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "-c", FIT_SCRIPT, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    out = proc.stdout
    assert "SIGINT" in out, proc.stderr[-3000:]
    assert "RESULT KeyboardInterrupt" in out and "RESTORED True" in out, out + proc.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ real jobs
def _pipeline_config(tmp_path: Path, minilm_path: str, backend: str) -> Path:
    """The smoke pipeline cut down to its evaluate stage: teacher scores given (no mining, teachers, scoring), the
    student stage marked done with the packaged MiniLM as the student, no registration."""
    scores = tmp_path / "teacher_scores.tsv"
    scores.write_text("1.0\t0.5\t1\t2\t3\n")
    out = tmp_path / "out"
    student = out / "students" / "bert-dot"
    student.parent.mkdir(parents=True)
    student.symlink_to(minilm_path, target_is_directory=True)
    (out / "stages").mkdir()
    (out / "stages" / "student-bert-dot.json").write_text("{}")
    overrides = {"mine": None, "teachers": {"train": []}, "teacher_scores": str(scores), "register": None,
                 "output_dir": str(out), "name": "intr",
                 "mlflow": {"experiment": EXPERIMENT, "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
                 "ray": {"num_cpus": 1}}
    import yaml

    from kd.configs.catalog import resources_dir

    cfg = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    cfg.update(overrides)
    # all 43 DL'19 queries x top 50 (about 2,150 passages for the bi-encoder to encode, once per distinct text): the
    # student's re-ranking lasts several seconds, so the Ctrl+C lands inside it even on a loaded machine (with 12
    # queries it lasted 2 s, and once the job finished first), yet a rerun stays short
    run = tmp_path / "bm25.small.trec"
    full = Path(cfg["evaluate"]["tasks"][0]["run"].replace("${KD_RESOURCES}", str(resources_dir())))
    keep: dict[str, list[str]] = {}
    for line in full.read_text().splitlines():
        qid = line.split()[0]
        if len(keep.setdefault(qid, [])) < 50:
            keep[qid].append(line)
    run.write_text("".join(line + "\n" for lines in keep.values() for line in lines))
    cfg["evaluate"]["tasks"] = [{**t, "run": str(run)} for t in cfg["evaluate"]["tasks"][:2]]  # run + rerank
    cfg["evaluate"].update(teachers=False)
    cfg["evaluate"]["compute"].update(backend=backend, precision="fp32")
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _start(config: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    # SIGINT at its default disposition, as in a terminal's foreground job: a process started in the background of
    # a non-interactive shell (`cmd &`, as some CI runners do) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler, so the test's Ctrl+C would be ignored by the job instead of tested
    return subprocess.Popen([sys.executable, "-m", "jobs.pipeline", "--config", str(config)], cwd=REPO, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(log: Path, proc: subprocess.Popen, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before {text!r}:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no {text!r} within {timeout} s:\n{log.read_text()[-4000:]}")


def _runs(tmp_path: Path) -> dict[str, str]:
    """run name → status in the job's sqlite store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(EXPERIMENT)
    return {r.info.run_name: r.info.status for r in client.search_runs([exp.experiment_id])}


@pytest.mark.slow
def test_ctrl_c_mid_stage_exits_130_within_seconds_runs_killed_and_a_rerun_finishes(tmp_path, minilm_path):
    config = _pipeline_config(tmp_path, minilm_path, backend="local")
    log = tmp_path / "first.log"
    proc = _start(config, log)
    _wait_for(log, proc, "] baseline / dl19-bm25: ")  # the stage's first result; the student's tasks come next
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    rc = proc.wait(timeout=60)
    seconds = time.monotonic() - t0
    text = log.read_text()
    assert rc == 130, text[-4000:]
    assert seconds < 15, f"took {seconds:.0f} s to stop"
    assert "interrupted (Ctrl+C)" in text and "Traceback" not in text, text[-4000:]
    assert not (tmp_path / "out" / "stages" / "evaluate.json").exists(), "the stage must not look finished"
    runs = _runs(tmp_path)
    assert runs["intr"] == "KILLED" and runs["intr/evaluate"] == "KILLED", runs
    assert "RUNNING" not in runs.values(), runs

    proc = _start(config, tmp_path / "second.log")
    assert proc.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()[-4000:]
    second = (tmp_path / "second.log").read_text()
    assert "resuming pipeline run" in second and "student-bert-dot] skipped" in second
    assert json.loads((tmp_path / "out" / "stages" / "evaluate.json").read_text())["results"]
    runs = _runs(tmp_path)
    assert runs["intr"] == "FINISHED" and "RUNNING" not in runs.values(), runs


def _ray_processes(pid: int) -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process(pid).children(recursive=True)
                if p.name() in ("gcs_server", "raylet") or p.name().startswith("ray::")]
    except psutil.Error:
        return []


@pytest.mark.slow
def test_sigterm_exits_143_and_tears_down_the_local_ray_the_job_started(tmp_path, minilm_path):
    config = _pipeline_config(tmp_path, minilm_path, backend="ray")  # the stage needs Ray: the job starts one
    log = tmp_path / "job.log"
    proc = _start(config, log)
    _wait_for(log, proc, "kd.runtime.cluster: Ray: ")  # the local Ray it started is up, the stage starts
    ray_procs = _ray_processes(proc.pid)
    assert any(p.name() == "gcs_server" for p in ray_procs) and any(p.name() == "raylet" for p in ray_procs), \
        [p.name() for p in ray_procs]
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    text = log.read_text()
    assert rc == 143, text[-4000:]
    assert "interrupted (SIGTERM)" in text, text[-4000:]
    deadline = time.monotonic() + 20
    alive = ray_procs
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.5)
    assert not alive, f"Ray processes left behind: {[(p.pid, p.name()) for p in alive]}"
    runs = _runs(tmp_path)
    assert runs["intr"] == "KILLED" and "RUNNING" not in runs.values(), runs


def _sweep_config(tmp_path: Path):
    """The shipped CPU sweep pointed at the packaged quickstart data and a real sqlite store."""
    from kd.configs.loader import load_config
    from kd.configs.catalog import resources_dir
    from kd.configs.sweep import SweepConfig

    r = resources_dir() / "quickstart"
    train = r / "scifact" / "qrels" / "train.tsv"
    return load_config(SweepConfig, REPO / "sweeps" / "scifact_cpu.yaml", [
        f"base.teacher.scores={train}", f"base.data.triples={train}", f"base.data.queries={r / 'scifact' / 'queries.jsonl'}",
        f"base.data.passages={r / 'scifact' / 'corpus.jsonl.gz'}",
        f"base.validation.run={r / 'dl19' / 'runs' / 'BM25.top100.trec'}",
        f"base.validation.qrels={r / 'dl19' / 'qrels' / 'test.tsv'}",
        f"base.validation.queries={r / 'dl19' / 'queries.jsonl'}",
        f"base.validation.passages={r / 'dl19' / 'corpus.jsonl.gz'}",
        f"storage_path={tmp_path / 'sweeps'}", f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        "mlflow.experiment=" + EXPERIMENT, "name=intr-sweep"])


@pytest.mark.parametrize("exc, status", [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")])
def test_an_interrupted_or_failed_sweep_ends_its_parent_run(tmp_path, monkeypatch, exc, status):
    """Ctrl+C / SIGTERM / an error once the sweep's parent run exists (here: while joining Ray)."""
    from kd.runtime import sweep as runtime

    def interrupted():
        raise exc("while connecting to Ray")

    monkeypatch.setattr(runtime, "_connect_ray", interrupted)
    with pytest.raises(exc):
        runtime.run_sweep(_sweep_config(tmp_path))
    assert _runs(tmp_path) == {"intr-sweep": status}
