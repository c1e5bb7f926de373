"""bench/training.py's rows that run `python -m jobs.distill` (ours_1w, ours_1w_1cpu, ours_2w), the sampler of their
Ray Train worker processes, and the thread probe.

Ours' rate comes from the job's own per-step `examples_per_second` MLflow metric (log_every=1, sqlite tracking store in
the temp dir; triples/s = triples / summed step time over the timed steps), plus the job's end-to-end wall time (Ray
start-up, model load, DeepSpeed init, final checkpoint and MLflow model logging included). Each job starts its own
local Ray instance (RAY_ADDRESS=local), so it never joins another cluster on the machine. While a job runs, its Ray
Train worker processes are sampled with psutil (WorkerMonitor): CPU cores used and busy threads over the timed steps
(and OMP_NUM_THREADS of its environment at exec time). The probe (a Ray Train run of the same ScalingConfig shapes,
in a child process: `bench/training.py --_probe`) reports torch.get_num_threads() inside the workers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import ROOT, other_load, proc_stat
from _training_data import job_config
from _training_report import rate_summary

WORKER_MATCH = "RayTrainWorker"
SCRIPT = ROOT / "bench" / "training.py"  # the probe's child runs the CLI with --_probe


class WorkerMonitor(threading.Thread):
    """Samples the Ray Train worker processes under `root_pid`: per-thread CPU times, process CPU, OMP env.

    Also sums the CPU time of the whole process tree (the job's own load), keeping the last value of processes
    that have exited, so that other processes' share of the machine can be computed for a window.
    """

    def __init__(self, root_pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.root_pid, self.interval = root_pid, interval
        self.samples: list[dict] = []
        self.workers: dict[int, dict] = {}
        self._tree_cpu: dict[int, float] = {}
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
        except psutil.Error:
            return
        while not self._halt.is_set():
            t = time.time()
            stat = proc_stat()
            threads: dict[int, dict[int, float]] = {}
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    ct = p.cpu_times()
                    self._tree_cpu[p.pid] = ct.user + ct.system
                    if p.pid not in self.workers:
                        cmd = " ".join(p.cmdline())
                        if WORKER_MATCH not in cmd:
                            continue
                        try:
                            env = p.environ()
                        except psutil.Error:
                            env = {}
                        self.workers[p.pid] = {"cmdline": cmd[:120], "env_OMP_NUM_THREADS": env.get("OMP_NUM_THREADS"),
                                               "env_MKL_NUM_THREADS": env.get("MKL_NUM_THREADS")}
                    threads[p.pid] = {th.id: th.user_time + th.system_time for th in p.threads()}
                    self.workers[p.pid]["max_threads"] = max(self.workers[p.pid].get("max_threads", 0),
                                                             len(threads[p.pid]))
                except psutil.Error:
                    continue
            self.samples.append({"t": t, "stat": stat, "tree_cpu": sum(self._tree_cpu.values()), "threads": threads})
            self._halt.wait(self.interval)

    def window(self, ta: float, tb: float) -> dict:
        """CPU use of the worker processes and of the whole job between wall-clock times ta and tb (epoch s)."""
        inside = [s for s in self.samples if ta - 1e-3 <= s["t"] <= tb + 1e-3]
        if len(inside) < 2 or inside[-1]["t"] - inside[0]["t"] <= 0:
            return {"sampled": False}
        a, b = inside[0], inside[-1]
        span = b["t"] - a["t"]
        workers = []
        for pid, tb_threads in b["threads"].items():
            ta_threads = a["threads"].get(pid)
            if ta_threads is None:
                continue
            deltas = sorted(((tb_threads[tid] - ta_threads.get(tid, 0.0)) / span for tid in tb_threads), reverse=True)
            workers.append({
                "pid": pid, "cores_used": round(sum(deltas), 3),
                "busy_threads_over_25pct": sum(d > 0.25 for d in deltas),
                "top_thread_utilisation": [round(d, 3) for d in deltas[:4]],
                **{k: v for k, v in self.workers.get(pid, {}).items() if k != "cmdline"},
            })
        return {"sampled": True, "window_s": round(span, 2), "workers": workers,
                "job_tree_cpu_s": b["tree_cpu"] - a["tree_cpu"],
                **other_load(a["stat"], b["stat"], b["tree_cpu"] - a["tree_cpu"])}


def run_ours(args, tmp: Path, data: dict, name: str, workers: int, cpus_per_worker: float) -> dict:
    """`python -m jobs.distill` once; retried (under a new run name) up to --job-retries times if it fails."""
    row: dict = {}
    for attempt in range(args.job_retries + 1):
        run_name = name if attempt == 0 else f"{name}-retry{attempt}"
        row = _run_ours_once(args, tmp, data, run_name, workers, cpus_per_worker)
        row["attempts"] = attempt + 1
        if "error" not in row:
            return row
        print(f"[bench] {run_name} failed (returncode {row['returncode']}): {row['error'][-600:]}", flush=True)
    return row


def _run_ours_once(args, tmp: Path, data: dict, name: str, workers: int, cpus_per_worker: float) -> dict:
    import yaml
    from mlflow import MlflowClient

    cfg = job_config(args, tmp, data, name, workers, cpus_per_worker)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a fresh local Ray per job; never join another cluster
    log_out, log_err = (tmp / f"{name}.stdout").open("w"), (tmp / f"{name}.stderr").open("w")
    t_start_epoch, t0 = time.time(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "jobs.distill", "--config", str(path)], cwd=ROOT, env=env,
                            stdout=log_out, stderr=log_err)
    monitor = WorkerMonitor(proc.pid)
    monitor.start()
    try:
        rc = proc.wait(timeout=args.job_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    wall = time.perf_counter() - t0
    t_end_epoch = time.time()
    monitor.stop()
    log_out.close(), log_err.close()
    row: dict = {"num_workers": workers, "cpus_per_worker": cpus_per_worker, "returncode": rc,
                 "end_to_end_wall_s": round(wall, 2), "config": str(path)}
    final_file = Path(cfg["run"]["storage_path"]) / name / "final.json"
    if rc != 0 or not final_file.exists():
        tail = ((tmp / f"{name}.stderr").read_text()[-3000:])
        row["error"] = f"jobs.distill exited with {rc}; stderr tail:\n{tail}"
        return row
    final = json.loads(final_file.read_text())
    client = MlflowClient(tracking_uri=cfg["mlflow"]["tracking_uri"])
    hist = sorted(client.get_metric_history(final["mlflow_run_id"], "examples_per_second"), key=lambda m: m.step)
    triples_per_step = args.micro_batch * workers
    timed = [m for m in hist if m.step > args.warmup]
    seconds = [triples_per_step / m.value for m in timed]
    row.update(rate_summary([triples_per_step] * len(timed), seconds))
    row.update(warmup_steps=args.warmup, final_step=final.get("step"), mlflow_run_id=final["mlflow_run_id"],
               step_seconds=[round(s, 4) for s in seconds],
               logged_steps=[m.step for m in hist])
    if hist:
        first_step_s = triples_per_step / hist[0].value
        row["startup_s"] = round(hist[0].timestamp / 1000 - first_step_s - t_start_epoch, 2)  # job start -> loop
        row["tail_s"] = round(t_end_epoch - hist[-1].timestamp / 1000, 2)  # checkpoint, model logging, shutdown
    if len(timed) >= 1:
        before = [m for m in hist if m.step == args.warmup]
        ta = before[0].timestamp / 1000 if before else timed[0].timestamp / 1000 - seconds[0]
        row["worker_usage"] = monitor.window(ta, timed[-1].timestamp / 1000)
    row["worker_processes"] = list(monitor.workers.values())
    return row


# ---------------------------------------------------------------------------------------------------- thread probe
def probe_main(spec: str) -> int:
    """Child mode: report torch threads inside Ray Train workers for each (workers, cpus_per_worker) shape."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    shapes = json.loads(spec)
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    def fn(config):
        import torch
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        info = {"rank": rank, "torch_num_threads": torch.get_num_threads(),
                "torch_num_interop_threads": torch.get_num_interop_threads(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "affinity": len(os.sched_getaffinity(0))}
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps(info))

    out = []
    with tempfile.TemporaryDirectory(prefix="kd-bench-probe-") as tmp:
        for i, (w, c) in enumerate(shapes):
            folder = Path(tmp, f"shape{i}")
            folder.mkdir()
            TorchTrainer(fn, train_loop_config={"out": str(folder)},
                         scaling_config=ScalingConfig(num_workers=w, resources_per_worker={"CPU": c}),
                         run_config=RunConfig(name=f"probe{i}", storage_path=str(Path(tmp, "runs")))).fit()
            ranks = [json.loads(f.read_text()) for f in sorted(folder.glob("rank*.json"))]
            out.append({"num_workers": w, "cpus_per_worker": c, "workers": ranks})
    ray.shutdown()
    print("PROBE_RESULT " + json.dumps(out))
    return 0


def probe_threads(shapes: list[tuple[int, float]], timeout: int) -> dict:
    env = {**os.environ, "RAY_ADDRESS": "local"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), "--_probe", json.dumps(shapes)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE_RESULT "):
            return {"shapes": json.loads(line.split(" ", 1)[1]), "seconds": round(time.perf_counter() - t0, 1)}
    return {"error": f"probe failed ({proc.returncode}): {proc.stderr[-1500:]}"}
