#!/usr/bin/env python3
"""Training benchmark: Margin-MSE BERT_DOT training throughput (triples/s), ours vs sentence-transformers.

    python bench/training.py                                   # CPU defaults -> bench/results/training-cpu.json
    python bench/training.py --steps 4 --warmup 1 --micro-batch 4 --max-passage-length 64 --out /tmp/t.json  # smoke
    python bench/training.py --device cuda                     # GPU (bf16): -> bench/results/training-cuda.json

One (q, p+, p-) triple is one example. All rows train all-MiniLM-L6-v2 (kd.models.backbone.default_backbone(), mean
pooling, L2-normalised as the model folder declares, all 6 layers) with Margin-MSE on the same triples, the same micro
batch, the same max lengths (query --max-query-length, passages --max-passage-length), AdamW, grad clipping 1.0:

  peer          sentence-transformers' own loop pieces in this process: model.preprocess (its own tokenization, per
                column max_length), MarginMSELoss (its own forward: query column alone, p+/p- columns merged),
                torch.optim.AdamW, clip_grad_norm_, a linear warm-up/decay LambdaLR; fp32 on CPU
  kd_step       kd's own step (kd.training.DistillStep on the kd BERT_DOT student, margin_mse) in a plain torch
                AdamW loop in this process, same threads as the peer: no Ray, DeepSpeed or MLflow (diagnostic:
                separates model-side cost from runtime cost)
  ours_1w       `python -m jobs.distill` (score_file, margin_mse, bert_dot, the job's default ZeRO stage: 0 on CPU,
                2 on GPU; --zero-stage to force one), 1 Ray worker with the machine's CPUs (on CPU: as many torch
                threads as the peer uses) -- the headline row, ours_1w / peer is the target
  ours_1w_1cpu  the same with 1 worker x 1 CPU (the base of the scaling number)
  ours_2w       the same with 2 workers x 1 CPU (1-vs-2-worker scaling: ours_2w / ours_1w_1cpu)
  kd_step_ds    kd_step under the job's own DeepSpeed engine (kd.runtime.distill.deepspeed_config, same ZeRO stage)
                in this process, world size 1 (gloo): DeepSpeed's share of the runtime cost, without Ray or MLflow
  peer_1thread  (--peer-1thread) the peer at torch.set_num_threads(1): the thread budget of one 1-CPU Ray worker

Data: SciFact train, BM25 top-100 (kd.data.bm25_beir) -> kd.data.mine_triples(n_negatives=1, seed=0) -> the first K
triples, scored by the all-MiniLM-L6-v2 bi-encoder teacher (kd.teachers.load_bi_encoder_teacher) and written with
kd.data.write_teacher_scores. K = 2 x (warmup + steps) x micro batch, enough for the 2-worker run. The peer reads the
examples through kd.training.load_examples (identical text joins) and takes the batches kd.training.rank_batches gives
rank 0 of 1 worker, so peer, kd_step, ours_1w (and ours_1w_1cpu) train on exactly the same batches in the same
order.

Timing: --warmup steps are run and dropped, then --steps steps are timed. Peer: wall clock per step (tokenization,
forward, backward, clipping, optimizer). Ours: the job's own per-step `examples_per_second` MLflow metric (log_every=1,
sqlite tracking store in a temp dir; triples/s = triples / summed step time over the timed steps), plus the job's end-
to-end wall time (Ray start-up, model load, DeepSpeed init, final checkpoint and MLflow model logging included).
Each job starts its own local Ray instance (RAY_ADDRESS=local), so it never joins another cluster on the machine.
While a job runs, its Ray Train worker processes are sampled with psutil: CPU cores used and busy threads over the
timed steps (and OMP_NUM_THREADS of its environment at exec time). A probe Ray Train run (same ScalingConfig shapes) reports
torch.get_num_threads() inside a Ray Train worker (--no-thread-probe skips it).

Every number in the JSON comes from the run; only the targets are constants. Wall-clock numbers are only meaningful on
a quiet machine: `contended` is set when other processes used more than 10% of the machine during a timed window.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # both sides (inherited by the jobs): no fork warnings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import cpu_model, default_data_dir, quiet_hf  # noqa: E402

TARGETS = {"cpu_speedup_min": 1.0, "gpu_speedup_min": 1.3}
CONTENDED_SHARE = 0.10
WORKER_MATCH = "RayTrainWorker"


# ------------------------------------------------------------------------------------------------------- helpers
def _git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:  # pragma: no cover
            return None

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def proc_stat() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores (/proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    tck = os.sysconf("SC_CLK_TCK")
    total = sum(fields[:8])
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (total - idle) / tck, total / tck


def other_load(stat0, stat1, own_cpu_s: float | None) -> dict:
    """Share of the machine's CPU capacity that processes other than the measured ones used in a window."""
    if stat0 is None or stat1 is None or own_cpu_s is None:
        return {"machine_busy_share": None, "other_share": None}
    busy, total = stat1[0] - stat0[0], stat1[1] - stat0[1]
    if total <= 0:
        return {"machine_busy_share": None, "other_share": None}
    return {"machine_busy_share": round(busy / total, 4), "own_cpu_s": round(own_cpu_s, 3),
            "other_share": round(max(busy - own_cpu_s, 0.0) / total, 4)}


def _rate_summary(n_per_step: list[int], seconds: list[float]) -> dict:
    """Triples/s over the timed steps: total triples / total time (the harmonic mean of the per-step rates)."""
    per_step = [n / s for n, s in zip(n_per_step, seconds) if s > 0]
    return {
        "triples_per_s": sum(n_per_step) / sum(seconds) if seconds and sum(seconds) > 0 else None,
        "median_step_triples_per_s": statistics.median(per_step) if per_step else None,
        "min_step_triples_per_s": min(per_step) if per_step else None,
        "max_step_triples_per_s": max(per_step) if per_step else None,
        "timed_steps": len(seconds),
        "timed_triples": sum(n_per_step),
        "timed_seconds": sum(seconds),
    }


def machine_info(device: str) -> dict:
    import deepspeed
    import mlflow
    import psutil
    import ray
    import sentence_transformers
    import torch
    import transformers

    info = {
        "hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": list(os.getloadavg()),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__, "ray": ray.__version__,
        "deepspeed": deepspeed.__version__, "mlflow": mlflow.__version__,
        "driver_torch_num_threads": torch.get_num_threads(),
        "driver_torch_num_interop_threads": torch.get_num_interop_threads(),
        "env_OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "env_MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
        "env_TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"),
        "device": device, "git": _git_state(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(),
                    cuda=torch.version.cuda, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info


# -------------------------------------------------------------------------------------------------------- data
def prepare_data(args, tmp: Path) -> dict:
    """Mine SciFact train triples with BM25, keep the first K, score them with the bi-encoder teacher."""
    from kd.data import bm25_beir, load_beir, mine_triples, read_qrels, write_teacher_scores
    from kd.teachers import load_bi_encoder_teacher

    t0 = time.perf_counter()
    scifact = Path(args.data_dir) / "beir" / "scifact"
    run = bm25_beir(scifact, split="train", top_k=100, show_progress=False)
    mined = mine_triples(run, read_qrels(scifact / "qrels" / "train.tsv"), n_negatives=1, top_k=100, seed=0)
    want = 2 * (args.warmup + args.steps) * args.micro_batch  # enough for 2 workers without a second epoch
    triples = mined.triples[: min(want, len(mined.triples))]
    beir = load_beir(scifact, split=None)
    texts = beir.texts()
    teacher = load_bi_encoder_teacher()
    q = [beir.queries[t[0]] for t in triples]
    t_pos = teacher.predict(q, [texts[t[1]] for t in triples]).tolist()
    t_neg = teacher.predict(q, [texts[t[2]] for t in triples]).tolist()
    del teacher
    scores = tmp / "teacher_scores.tsv"
    write_teacher_scores(scores, [(a, b, *t) for a, b, t in zip(t_pos, t_neg, triples)])
    return {
        "scifact": str(scifact), "teacher_scores": str(scores), "mined_triples": len(mined.triples),
        "triples_used": len(triples), "triples_wanted": want, "teacher": "all-MiniLM-L6-v2 bi-encoder (kd)",
        "prepare_seconds": round(time.perf_counter() - t0, 2),
    }


def job_config(args, tmp: Path, data: dict, name: str, workers: int, cpus_per_worker: float) -> dict:
    from kd.models.backbone import default_backbone

    total = args.warmup + args.steps
    return {
        "mode": "score_file",
        "student": {"architecture": "bert_dot", "backbone": default_backbone(),
                    "options": {"pooling": "mean", "max_query_length": args.max_query_length,
                                "max_passage_length": args.max_passage_length}},
        "loss": {"name": "margin_mse"},
        "teacher": {"scores": data["teacher_scores"]},
        "data": {"queries": str(Path(data["scifact"]) / "queries.jsonl"),
                 "passages": str(Path(data["scifact"]) / "corpus.jsonl")},
        "training": {"num_workers": workers, "cpus_per_worker": cpus_per_worker, "use_gpu": args.device == "cuda",
                     "bf16": args.precision == "bf16", "micro_batch_size": args.micro_batch, "epochs": 1,
                     "max_steps": total, "lr": args.lr, "zero_stage": args.zero_stage, "seed": args.seed, "log_every": 1,
                     "checkpoint_every": total, "max_failures": 0, "gradient_clipping": 1.0},
        "registry": {"name": None},
        "mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "bench-training", "run_name": name},
        "run": {"name": name, "storage_path": str(tmp / "runs")},
    }


# ------------------------------------------------------------------------------------------------- process sampling
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


# ---------------------------------------------------------------------------------------------------------- rows
def run_peer(args, examples, batches: list[list[int]], threads: int | None) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss

    from kd.models.backbone import default_backbone

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    bf16 = args.device == "cuda" and args.precision == "bf16"
    try:
        torch.manual_seed(args.seed)
        model = SentenceTransformer(default_backbone(), device=str(device))
        model.train()
        loss_fn = MarginMSELoss(model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
        total = len(batches)
        warm = max(int(0.1 * total), 1)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else max(total - s, 0) / max(total - warm, 1))
        seconds, n_steps, tokens = [], [], {"padded": 0, "real": 0}
        stat0 = cpu0 = None
        for i, idx in enumerate(batches):
            if i == args.warmup:
                stat0, cpu0 = proc_stat(), time.process_time()
            t0 = time.perf_counter()
            b = examples.batch(idx)
            feats = [model.preprocess(b["query"], max_length=args.max_query_length),
                     model.preprocess(b["pos"], max_length=args.max_passage_length),
                     model.preprocess(b["neg"], max_length=args.max_passage_length)]
            if i >= args.warmup:
                for f in feats:
                    tokens["padded"] += int(f["attention_mask"].numel())
                    tokens["real"] += int(f["attention_mask"].sum())
            feats = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()} for f in feats]
            labels = (b["t_pos"] - b["t_neg"]).to(device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(feats, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            float(loss.detach())
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                seconds.append(time.perf_counter() - t0)
                n_steps.append(len(idx))
        out = _timed_summary(args, n_steps, seconds, stat0, cpu0,
                             padded_tokens_per_triple=tokens["padded"] / max(sum(n_steps), 1),
                             real_tokens_per_triple=tokens["real"] / max(sum(n_steps), 1))
        del model, loss_fn, opt
        return out
    finally:
        torch.set_num_threads(before)


def _timed_summary(args, n_steps: list[int], seconds: list[float], stat0, cpu0, **extra) -> dict:
    """The row fields every in-process timing loop reports, from its per-step counts and seconds and the
    /proc/stat + process-CPU readings taken when the timed steps began (now is their end)."""
    import torch

    stat1, cpu1 = proc_stat(), time.process_time()
    out = {"torch_num_threads": torch.get_num_threads(), **_rate_summary(n_steps, seconds),
           "warmup_steps": args.warmup, "step_seconds": [round(x, 4) for x in seconds], **extra,
           "process_cpu_s": round(cpu1 - cpu0, 3) if cpu0 is not None else None,
           **other_load(stat0, stat1, (cpu1 - cpu0) if cpu0 is not None else None)}
    if out["process_cpu_s"] and out["timed_seconds"]:
        out["cores_used"] = round(out["process_cpu_s"] / out["timed_seconds"], 3)
    return out


def run_kd_step(args, cfg, examples, batches: list[list[int]]) -> dict:
    """kd's own training step (DistillStep: student.score_triples(q, p+, p-), margin_mse) in a plain torch loop in this
    process: no Ray, DeepSpeed or MLflow. Separates the model-side cost from the runtime's."""
    import torch

    from kd.training import DistillStep, build_loss, build_student

    device = torch.device(args.device)
    bf16 = args.device == "cuda" and args.precision == "bf16"
    torch.manual_seed(args.seed)
    student = build_student(cfg, None)
    module = DistillStep(cfg.mode, student, build_loss(cfg, student, None)).to(device)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    seconds, n_steps = [], []
    stat0 = cpu0 = None
    for i, idx in enumerate(batches):
        if i == args.warmup:
            stat0, cpu0 = proc_stat(), time.process_time()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = module(examples.batch(idx))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - t0)
            n_steps.append(len(idx))
    return _timed_summary(args, n_steps, seconds, stat0, cpu0)


def run_kd_step_deepspeed(args, cfg, examples, batches: list[list[int]]) -> dict:
    """kd's step under the job's own DeepSpeed engine (kd.runtime.distill.deepspeed_config: --zero-stage, AdamW,
    WarmupDecayLR, clipping) in this process, world size 1 (gloo), without Ray or MLflow."""
    import torch.distributed as dist

    saved_env = {k: os.environ.get(k) for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
    os.environ.update(LOCAL_RANK="0", RANK="0", WORLD_SIZE="1")  # DeepSpeed asserts LOCAL_RANK; restored below
    try:
        return _kd_step_deepspeed(args, cfg, examples, batches)
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if dist.is_initialized():
            dist.destroy_process_group()


def _kd_step_deepspeed(args, cfg, examples, batches: list[list[int]]) -> dict:
    import socket

    import deepspeed
    import torch
    import torch.distributed as dist

    from kd.runtime.distill import deepspeed_config, zero_stage
    from kd.training import DistillStep, build_loss, build_student

    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # no MASTER_* / RANK env vars: they would leak into the jobs.distill subprocesses started later
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    torch.manual_seed(args.seed)
    student = build_student(cfg, None)
    module = DistillStep(cfg.mode, student, build_loss(cfg, student, None))
    engine, _, _, _ = deepspeed.initialize(model=module, config=deepspeed_config(cfg, len(batches)),
                                           model_parameters=[p for p in module.parameters() if p.requires_grad])
    engine.train()
    seconds, n_steps, parts = [], [], {"forward": 0.0, "backward": 0.0, "step": 0.0}
    stat0 = cpu0 = None
    for i, idx in enumerate(batches):
        if i == args.warmup:
            stat0, cpu0 = proc_stat(), time.process_time()
        t0 = time.perf_counter()
        loss = engine(examples.batch(idx))
        t1 = time.perf_counter()
        engine.backward(loss)
        t2 = time.perf_counter()
        engine.step()
        float(loss.detach())
        t3 = time.perf_counter()
        if i >= args.warmup:
            seconds.append(t3 - t0)
            n_steps.append(len(idx))
            parts["forward"] += t1 - t0
            parts["backward"] += t2 - t1
            parts["step"] += t3 - t2
    out = _timed_summary(args, n_steps, seconds, stat0, cpu0,
                         mean_seconds={k: round(v / max(len(seconds), 1), 4) for k, v in parts.items()},
                         zero_stage=zero_stage(cfg))
    del engine
    return out


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
    row.update(_rate_summary([triples_per_step] * len(timed), seconds))
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
def _probe_main(spec: str) -> int:
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
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_probe", json.dumps(shapes)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {timeout}s"}
    for line in proc.stdout.splitlines():
        if line.startswith("PROBE_RESULT "):
            return {"shapes": json.loads(line.split(" ", 1)[1]), "seconds": round(time.perf_counter() - t0, 1)}
    return {"error": f"probe failed ({proc.returncode}): {proc.stderr[-1500:]}"}


# ------------------------------------------------------------------------------------------------- token counts
def kd_token_counts(args, examples, batches: list[list[int]]) -> dict:
    """Padded/real tokens per triple that kd's DistillStep encodes: BertDot.score_triples encodes each query once
    and p+ / p- in one batch."""
    from transformers import AutoTokenizer

    from kd.models.backbone import default_backbone
    from kd.models.base import tokenize_texts

    tok = AutoTokenizer.from_pretrained(default_backbone())
    padded = real = n = 0
    for idx in batches:
        b = examples.batch(idx)
        q = tokenize_texts(tok, b["query"], args.max_query_length)["attention_mask"]
        d = tokenize_texts(tok, b["pos"] + b["neg"], args.max_passage_length)["attention_mask"]
        padded += q.numel() + d.numel()
        real += int(q.sum() + d.sum())
        n += len(idx)
    return {"padded_tokens_per_triple": padded / max(n, 1), "real_tokens_per_triple": real / max(n, 1)}


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per row (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2, help="steps run and dropped before timing")
    ap.add_argument("--micro-batch", type=int, default=8, help="triples per step per worker")
    ap.add_argument("--max-query-length", type=int, default=30)
    ap.add_argument("--max-passage-length", type=int, default=200)
    ap.add_argument("--lr", type=float, default=7e-6)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                    help="default: fp32 on CPU (kd always trains fp32 there), bf16 on CUDA")
    ap.add_argument("--data-dir", default=None, help="shared data folder (default: ../shared/data)")
    ap.add_argument("--out", default=None, help="default: bench/results/training-<device>.json")
    ap.add_argument("--no-diagnostics", action="store_true",
                    help="skip the diagnostic rows kd_step and kd_step_ds")
    ap.add_argument("--peer-1thread", action="store_true",
                    help="add the diagnostic row peer_1thread (the peer at torch.set_num_threads(1))")
    ap.add_argument("--job-retries", type=int, default=1,
                    help="rerun a failed jobs.distill this many times (e.g. a concurrent `ray stop --force`)")
    ap.add_argument("--no-two-workers", action="store_true", help="skip ours_1w_1cpu and ours_2w (no scaling number)")
    ap.add_argument("--zero-stage", default="auto", choices=["auto", 0, 1, 2],
                    type=lambda v: v if v == "auto" else int(v),
                    help="DeepSpeed ZeRO stage for ours and kd_step_ds (default: the job's own auto = 0 on CPU, 2 on GPU)")
    ap.add_argument("--no-thread-probe", action="store_true")
    ap.add_argument("--job-timeout", type=int, default=900, help="seconds per jobs.distill run")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp folder (configs, logs, mlflow.db)")
    ap.add_argument("--_probe", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._probe is None:
        if args.steps < 1 or args.warmup < 0 or args.micro_batch < 1:
            ap.error("--steps >= 1, --warmup >= 0, --micro-batch >= 1")
        args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
        if args.device == "cpu" and args.precision != "fp32":
            ap.error("CPU training is fp32 in kd (training.bf16 only applies on GPU)")
        args.data_dir = args.data_dir or str(default_data_dir("beir/scifact"))
        args.out = args.out or str(ROOT / "bench" / "results" / f"training-{args.device}.json")
    return args


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._probe is not None:
        return _probe_main(args._probe)
    import logging

    logging.basicConfig(level=logging.WARNING)
    quiet_hf()
    import torch

    from kd.config import DistillConfig
    from kd.training import load_examples, rank_batches

    t_all = time.perf_counter()
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and gpus == 0:
        print("error: --device cuda but no CUDA device", file=sys.stderr)
        return 2
    result: dict = {
        "benchmark": "training: Margin-MSE BERT_DOT, triples/s", "created": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine_info(args.device),
        "settings": {
            "steps_timed": args.steps, "warmup_steps": args.warmup, "micro_batch": args.micro_batch,
            "max_query_length": args.max_query_length, "max_passage_length": args.max_passage_length,
            "lr": args.lr, "seed": args.seed, "device": args.device, "precision": args.precision,
            "student": "bert_dot, all-MiniLM-L6-v2 (default_backbone()), mean pooling, normalize as declared, 6 layers",
            "ours": "jobs.distill score_file margin_mse, DeepSpeed (ZeRO stage: --zero-stage), AdamW (torch_adam), log_every=1, "
                    "validation off, registry.name null, MLflow sqlite in a temp dir, RAY_ADDRESS=local",
            "peer": "sentence-transformers MarginMSELoss + model.preprocess (per-column max_length) + torch AdamW + "
                    "clip_grad_norm_(1.0) + linear LambdaLR",
            "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"),
        },
        "rows": {}, "notes": [],
    }
    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-training-"))
    if args.keep_tmp:
        result["settings"]["tmp"] = str(tmp)
    rows = result["rows"]
    try:
        print(f"[bench] preparing data (BM25 + mining + teacher scores) in {tmp}", flush=True)
        data = prepare_data(args, tmp)
        result["data"] = {k: v for k, v in data.items() if k != "teacher_scores"}
        cfg = DistillConfig.model_validate(job_config(args, tmp, data, "peer-data", 1, 1))
        examples = load_examples(cfg)
        total = args.warmup + args.steps
        batches = rank_batches(len(examples), 0, args.seed, 0, 1, args.micro_batch)[:total]
        if len(batches) < total:
            raise SystemExit(f"only {len(examples)} triples: too few for {total} steps of {args.micro_batch}")
        result["data"]["examples_joined"] = len(examples)
        result["tokens"] = {"ours_kd_tokenization": kd_token_counts(args, examples, batches[args.warmup:])}

        plan = [("peer", None)]
        if args.peer_1thread and args.device == "cpu" and torch.get_num_threads() > 1:
            plan.append(("peer_1thread", 1))
        for name, threads in plan:
            print(f"[bench] {name}: {total} steps", flush=True)
            t_row = time.perf_counter()
            rows[name] = {"kind": "peer", **run_peer(args, examples, batches, threads)}
            rows[name]["row_seconds"] = round(time.perf_counter() - t_row, 1)
            print(f"[bench] {name}: {_fmt(rows[name]['triples_per_s'])} triples/s "
                  f"({rows[name]['row_seconds']} s)", flush=True)
        result["tokens"]["peer_st_tokenization"] = {
            k: rows["peer"][k] for k in ("padded_tokens_per_triple", "real_tokens_per_triple")}
        if not args.no_diagnostics:
            print(f"[bench] kd_step: {total} steps (DistillStep + torch AdamW in this process)", flush=True)
            t_row = time.perf_counter()
            rows["kd_step"] = {"kind": "kd_step", **run_kd_step(args, cfg, examples, batches)}
            rows["kd_step"]["row_seconds"] = round(time.perf_counter() - t_row, 1)
            print(f"[bench] kd_step: {_fmt(rows['kd_step']['triples_per_s'])} triples/s "
                  f"({rows['kd_step']['row_seconds']} s)", flush=True)
        if not args.no_diagnostics and args.device == "cpu":
            print(f"[bench] kd_step_ds: {total} steps (DistillStep + DeepSpeed ZeRO-{args.zero_stage} in "
                  "this process)", flush=True)
            rows["kd_step_ds"] = {"kind": "kd_step", **run_kd_step_deepspeed(args, cfg, examples, batches)}
            print(f"[bench] kd_step_ds: {_fmt(rows['kd_step_ds']['triples_per_s'])} triples/s "
                  f"(per step {rows['kd_step_ds']['mean_seconds']})", flush=True)

        if args.device == "cpu":  # the headline row gets the peer's thread budget: the whole machine
            jobs = [("ours_1w", 1, os.cpu_count() or 1)]
            if not args.no_two_workers and (os.cpu_count() or 1) >= 2:
                jobs += [("ours_1w_1cpu", 1, 1), ("ours_2w", 2, 1)]
        else:
            cpus = max(1, (os.cpu_count() or 2) // max(gpus, 1))
            jobs = [("ours_1w", 1, cpus)]
            if args.no_two_workers:
                pass
            elif gpus >= 2:
                jobs.append(("ours_2w", 2, cpus))
            else:
                result["notes"].append("ours_2w skipped: fewer than 2 GPUs")
        for name, w, c in jobs:
            print(f"[bench] {name}: jobs.distill, {w} worker(s) x {c} CPU, {total} steps", flush=True)
            rows[name] = {"kind": "ours", **run_ours(args, tmp, data, name.replace("_", "-"), w, c)}
            if "error" in rows[name]:
                print(f"[bench] {name} FAILED: {rows[name]['error'][-800:]}", flush=True)
            else:
                print(f"[bench] {name}: {_fmt(rows[name].get('triples_per_s'))} triples/s, end to end "
                      f"{rows[name]['end_to_end_wall_s']} s", flush=True)

        if not args.no_thread_probe and args.device == "cpu":
            shapes = sorted({(r["num_workers"], r["cpus_per_worker"]) for r in rows.values() if r["kind"] == "ours"})
            print(f"[bench] thread probe: Ray Train workers {shapes}", flush=True)
            result["thread_probe"] = probe_threads([list(s) for s in shapes], timeout=300)
            for shape in result["thread_probe"].get("shapes", []):
                for r in rows.values():
                    if r["kind"] == "ours" and (r["num_workers"], r["cpus_per_worker"]) == (
                            shape["num_workers"], shape["cpus_per_worker"]):
                        r["probe_torch_num_threads"] = [w["torch_num_threads"] for w in shape["workers"]]
                        r["probe_OMP_NUM_THREADS"] = [w["OMP_NUM_THREADS"] for w in shape["workers"]]
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------------------------------ derived numbers
    for r in rows.values():  # CPU seconds per triple: less sensitive to other load than wall clock
        if not r.get("timed_triples"):
            continue
        if r["kind"] in ("peer", "kd_step") and r.get("own_cpu_s") is not None:
            r["cpu_s_per_triple"] = r["own_cpu_s"] / r["timed_triples"]
        workers = (r.get("worker_usage") or {}).get("workers") or []
        if r["kind"] == "ours" and workers:
            r["cpu_s_per_triple"] = sum(w["cores_used"] for w in workers) * r["timed_seconds"] / r["timed_triples"]

    def tps(name):
        r = rows.get(name) or {}
        return r.get("triples_per_s")

    def ratio(a, b):
        return tps(a) / tps(b) if tps(a) and tps(b) else None

    speedup = ratio("ours_1w", "peer")
    result["speedup"] = {
        "ours_1w_vs_peer": speedup,
        "ours_1w_vs_peer_1thread": ratio("ours_1w", "peer_1thread"),
        "peer_vs_peer_1thread": ratio("peer", "peer_1thread"),
        "kd_step_vs_peer": ratio("kd_step", "peer"),
        "ours_1w_vs_kd_step": ratio("ours_1w", "kd_step"),
        "kd_step_ds_vs_kd_step": ratio("kd_step_ds", "kd_step"),
        "ours_1w_vs_ours_1w_1cpu": ratio("ours_1w", "ours_1w_1cpu"),
    }
    scaling = ratio("ours_2w", "ours_1w_1cpu" if args.device == "cpu" else "ours_1w")
    result["scaling"] = {"ours_2w_vs_1w": scaling, "efficiency": scaling / 2 if scaling else None}
    on_gpu = args.device == "cuda"
    result["targets"] = TARGETS
    result["checks"] = {
        "cpu_speedup_1worker": {"value": None if on_gpu else speedup, "target": TARGETS["cpu_speedup_min"],
                                "pass": None if on_gpu or speedup is None else speedup >= TARGETS["cpu_speedup_min"]},
        "gpu_speedup": {"value": speedup if on_gpu else None, "target": TARGETS["gpu_speedup_min"],
                        "pass": (speedup >= TARGETS["gpu_speedup_min"] if speedup is not None else None) if on_gpu
                        else None},
    }
    shares = []
    for r in rows.values():
        usage = r.get("worker_usage") or {}
        share = r.get("other_share", usage.get("other_share"))
        if share is not None:
            shares.append(share)
    result["max_other_share"] = max(shares) if shares else None
    result["contended"] = bool(shares) and max(shares) > CONTENDED_SHARE
    tok = result.get("tokens", {})
    if "peer_st_tokenization" in tok:
        o, p = tok["ours_kd_tokenization"], tok["peer_st_tokenization"]
        tok["ours_vs_peer_padded_tokens"] = o["padded_tokens_per_triple"] / p["padded_tokens_per_triple"]
    result["notes"] += [
        "triples/s = timed triples / summed step seconds over the timed steps (the harmonic mean of per-step rates); "
        "ours from the job's own per-step examples_per_second MLflow metric, peer from wall clock around each step.",
        "ours' step time includes its per-step loss all_reduce and the MLflow sqlite log_metrics call (log_every=1); "
        "end_to_end_wall_s additionally includes Ray start-up, data join, DeepSpeed init, the final checkpoint and "
        "MLflow model logging (startup_s / tail_s split it where the metric timestamps allow).",
        "ours_2w processes 2 x micro_batch triples per step (one micro batch per worker); its batches are each "
        "rank's stride of the same permutation, so the 2-worker row cannot use exactly the peer's batches.",
        "worker_usage: CPU cores used by each Ray Train worker process and threads busy > 25% of the timed window, "
        "sampled with psutil every 0.5 s; env_OMP_NUM_THREADS is the worker's environment at exec time (Ray may "
        "set OMP_NUM_THREADS later, inside the process: see thread_probe).",
        f"contended = some timed window had other processes using > {CONTENDED_SHARE:.0%} of the machine; wall-clock "
        "numbers from a contended run are not reliable: re-measure on a quiet machine.",
    ]
    if args.steps < 5:
        result["notes"].append(f"only {args.steps} timed steps: a smoke run, indicative only")
    if on_gpu:
        result["notes"].append("GPU: both sides bf16 autocast; cpus_per_worker = CPUs / GPUs for ours.")
    result["diagnosis"] = diagnose(result)
    result["seconds_total"] = round(time.perf_counter() - t_all, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    print(f"[bench] wrote {out} ({result['seconds_total']} s)")
    return 0


def diagnose(result: dict) -> list[str]:
    """Plain statements derived from this run's numbers: where ours gains or loses against the peer.

    ours_1w / peer = (kd_step / peer) x (ours_1w / kd_step): model side (same process, same threads) x runtime
    (Ray Train + DeepSpeed + per-step all_reduce/MLflow, same thread budget).
    """
    rows, sp, out = result["rows"], result["speedup"], []
    peer, ours = rows.get("peer", {}), rows.get("ours_1w", {})
    if sp.get("ours_1w_vs_peer") is None:
        return ["ours_1w or peer did not produce a rate"]
    usage = (ours.get("worker_usage") or {}).get("workers") or []
    cores = usage[0]["cores_used"] if usage else None
    busy = usage[0]["busy_threads_over_25pct"] if usage else None
    out.append(f"ours_1w/peer = {sp['ours_1w_vs_peer']:.3f}x. Threads: the peer runs with torch threads = "
               f"{peer.get('torch_num_threads')} ({peer.get('cores_used')} cores used); the Ray Train worker "
               f"({ours.get('cpus_per_worker')} CPU) used {cores} cores with {busy} busy thread(s)")
    if sp.get("kd_step_vs_peer") is not None:
        out.append(f"model side (same process and threads, no Ray/DeepSpeed/MLflow): kd_step/peer = "
                   f"{sp['kd_step_vs_peer']:.3f}x")
    tok = result.get("tokens", {})
    if tok.get("ours_vs_peer_padded_tokens"):
        o, p = tok["ours_kd_tokenization"], tok["peer_st_tokenization"]
        out.append(f"tokens encoded per triple: ours {o['padded_tokens_per_triple']:.1f} padded "
                   f"({o['real_tokens_per_triple']:.1f} real) vs peer {p['padded_tokens_per_triple']:.1f} "
                   f"({p['real_tokens_per_triple']:.1f}) = {tok['ours_vs_peer_padded_tokens']:.3f}x (both encode "
                   "each query once and p+/p- together)")
    if sp.get("ours_1w_vs_kd_step") is not None:
        out.append(f"runtime (Ray Train + DeepSpeed + per-step all_reduce/MLflow, same thread budget): "
                   f"ours_1w/kd_step = {sp['ours_1w_vs_kd_step']:.3f}x")
    if sp.get("kd_step_ds_vs_kd_step") is not None:
        ds = rows["kd_step_ds"]
        out.append(f"DeepSpeed alone (ZeRO-{ds.get('zero_stage')}, same process and threads): kd_step_ds/kd_step = "
                   f"{sp['kd_step_ds_vs_kd_step']:.3f}x; mean seconds per step {ds.get('mean_seconds')}")
    if sp.get("ours_1w_vs_ours_1w_1cpu") is not None:
        out.append(f"thread budget: 1 worker x {ours.get('cpus_per_worker')} CPUs vs 1 worker x 1 CPU = "
                   f"{sp['ours_1w_vs_ours_1w_1cpu']:.3f}x")
    if sp.get("ours_1w_vs_peer_1thread") is not None:
        out.append(f"ours_1w/peer_1thread = {sp['ours_1w_vs_peer_1thread']:.3f}x")
    sc = result.get("scaling", {})
    if sc.get("ours_2w_vs_1w") is not None:
        out.append(f"2 workers vs 1 (1 CPU each on CPU): {sc['ours_2w_vs_1w']:.3f}x (efficiency "
                   f"{sc['efficiency']:.2f})")
    for name in ("ours_1w", "ours_1w_1cpu", "ours_2w"):
        r = rows.get(name) or {}
        if r.get("end_to_end_wall_s") is not None and r.get("timed_seconds") is not None:
            out.append(f"{name} end to end {r['end_to_end_wall_s']:.1f} s: start-up to first step "
                       f"{_fmt(r.get('startup_s'), '.1f')} s, tail (checkpoint, model logging, shutdown) "
                       f"{_fmt(r.get('tail_s'), '.1f')} s")
    return out


def print_table(result: dict) -> None:
    rows = result["rows"]
    print()
    print(f"{'row':<14} {'triples/s':>10} {'median/step':>11} {'steps':>5} {'threads':>8} {'cores':>6} "
          f"{'cpu s/trip':>10} {'e2e wall s':>10} {'other load':>10}")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:<14} FAILED (returncode {r.get('returncode')})")
            continue
        usage = r.get("worker_usage") or {}
        workers = usage.get("workers") or []
        if r["kind"] in ("peer", "kd_step"):
            threads, cores, other = r.get("torch_num_threads"), r.get("cores_used"), r.get("other_share")
        else:
            threads = ",".join(str(w["busy_threads_over_25pct"]) for w in workers) or "-"
            cores = round(sum(w["cores_used"] for w in workers), 2) if workers else None
            other = usage.get("other_share")
        print(f"{name:<14} {_fmt(r.get('triples_per_s')):>10} {_fmt(r.get('median_step_triples_per_s')):>11} "
              f"{r.get('timed_steps', '-'):>5} {str(threads):>8} {_fmt(cores):>6} "
              f"{_fmt(r.get('cpu_s_per_triple'), '.3f'):>10} "
              f"{_fmt(r.get('end_to_end_wall_s'), '.1f'):>10} {_fmt(other, '.1%'):>10}")
    sp, sc = result["speedup"], result["scaling"]
    print()
    print(f"speedup ours_1w / peer: {_fmt(sp['ours_1w_vs_peer'], '.3f')}x   "
          f"2 workers / 1 worker: {_fmt(sc['ours_2w_vs_1w'], '.3f')}x")
    for name, c in result["checks"].items():
        print(f"check {name}: value {_fmt(c['value'], '.3f')} target >= {c['target']} pass {c['pass']}")
    probe = result.get("thread_probe") or {}
    for shape in probe.get("shapes", []):
        print(f"thread probe: {shape['num_workers']} worker(s) x {shape['cpus_per_worker']} CPU -> torch threads "
              f"{[w['torch_num_threads'] for w in shape['workers']]}, OMP_NUM_THREADS "
              f"{[w['OMP_NUM_THREADS'] for w in shape['workers']]}")
    if probe.get("error"):
        print(f"thread probe failed: {probe['error'][-300:]}")
    for line in result["diagnosis"]:
        print(f"- {line}")
    if result["contended"]:
        print(f"WARNING: contended run (other processes used up to {result['max_other_share']:.0%} of the machine); "
              "re-measure on a quiet machine")


if __name__ == "__main__":
    sys.exit(main())
