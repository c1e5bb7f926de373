"""bench/training.py's in-process rows: the peer (sentence-transformers), kd_step (kd's DistillStep in a plain torch
loop) and kd_step_ds (the same under the job's DeepSpeed engine), all on the same batches in the same order.

Each row runs --warmup steps and drops them, then times --steps steps (timed_loop: wall clock per step, a CpuWindow
over them all), and reports the fields of timed_summary.
"""
from __future__ import annotations

import os
import socket
import time

from _common import CpuWindow
from _training_report import rate_summary


def timed_loop(args, batches: list[list[int]], step, sync=None) -> tuple[list[int], list[float], CpuWindow]:
    """step(idx, timed) for every batch; the first --warmup are dropped (timed False), the others timed (wall clock,
    sync() included): (triples per timed step, seconds per timed step, the CPU window over the timed steps)."""
    window, n_steps, seconds = CpuWindow(), [], []
    for i, idx in enumerate(batches):
        if i == args.warmup:
            window.start()
        t0 = time.perf_counter()
        step(idx, i >= args.warmup)
        if sync is not None:
            sync()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - t0)
            n_steps.append(len(idx))
    return n_steps, seconds, window.stop()


def optimizer_step(loss, params, opt, sched=None) -> None:
    """backward, clip_grad_norm_(1.0), AdamW step (and the LR schedule's), zero_grad; the loss read back."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    if sched is not None:
        sched.step()
    opt.zero_grad(set_to_none=True)
    float(loss.detach())


def cuda_sync(device):
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else None


def timed_summary(args, n_steps: list[int], seconds: list[float], window: CpuWindow, **extra) -> dict:
    """The row fields every in-process timing loop reports, from its per-step counts and seconds and the CPU window
    over its timed steps."""
    import torch

    cpu = window.own_cpu_s
    out = {"torch_num_threads": torch.get_num_threads(), **rate_summary(n_steps, seconds),
           "warmup_steps": args.warmup, "step_seconds": [round(x, 4) for x in seconds], **extra,
           "process_cpu_s": round(cpu, 3) if cpu is not None else None, **window.load}
    if out["process_cpu_s"] and out["timed_seconds"]:
        out["cores_used"] = round(out["process_cpu_s"] / out["timed_seconds"], 3)
    return out


def run_peer(args, examples, batches: list[list[int]], threads: int | None, bf16: bool | None = None) -> dict:
    """sentence-transformers' own loop pieces: model.preprocess per column, MarginMSELoss, AdamW, clipping, a linear
    warm-up/decay LambdaLR; at torch.set_num_threads(threads) when given (restored after). `bf16`: the loss under
    bf16 autocast on the device (default: on CUDA when --precision is bf16; on CPU sentence-transformers' default,
    fp32)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MarginMSELoss

    from kd.models.backbone import default_backbone

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(args.device)
    bf16 = (args.device == "cuda" and args.precision == "bf16") if bf16 is None else bf16
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
        tokens = {"padded": 0, "real": 0}

        def step(idx, timed):
            b = examples.batch(idx)
            feats = [model.preprocess(b["query"], max_length=args.max_query_length),
                     model.preprocess(b["pos"], max_length=args.max_passage_length),
                     model.preprocess(b["neg"], max_length=args.max_passage_length)]
            if timed:
                for f in feats:
                    tokens["padded"] += int(f["attention_mask"].numel())
                    tokens["real"] += int(f["attention_mask"].sum())
            feats = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in f.items()} for f in feats]
            labels = (b["t_pos"] - b["t_neg"]).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(feats, labels)
            optimizer_step(loss, params, opt, sched)

        n_steps, seconds, window = timed_loop(args, batches, step, cuda_sync(device))
        return timed_summary(args, n_steps, seconds, window,
                             padded_tokens_per_triple=tokens["padded"] / max(sum(n_steps), 1),
                             real_tokens_per_triple=tokens["real"] / max(sum(n_steps), 1))
    finally:
        torch.set_num_threads(before)


def run_kd_step(args, cfg, examples, batches: list[list[int]]) -> dict:
    """kd's own training step (DistillStep: student.score_triples(q, p+, p-), margin_mse) in a plain torch loop in this
    process: no Ray, DeepSpeed or MLflow. Separates the model-side cost from the runtime's."""
    import torch

    from kd.training import DistillStep, build_student

    device = torch.device(args.device)
    bf16 = args.precision == "bf16"  # ours' training.precision, resolved
    torch.manual_seed(args.seed)
    student = build_student(cfg, None)
    module = DistillStep.from_config(cfg, student).to(device)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)

    def step(idx, timed):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = module(examples.batch(idx))
        optimizer_step(loss, params, opt)

    return timed_summary(args, *timed_loop(args, batches, step, cuda_sync(device)))


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
    import deepspeed
    import torch
    import torch.distributed as dist

    from kd.runtime.distill import deepspeed_config, zero_stage
    from kd.training import DistillStep, build_student

    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        # no MASTER_* / RANK env vars: they would leak into the jobs.distill subprocesses started later
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    torch.manual_seed(args.seed)
    student = build_student(cfg, None)
    module = DistillStep.from_config(cfg, student)
    engine, _, _, _ = deepspeed.initialize(model=module, config=deepspeed_config(cfg, len(batches)),
                                           model_parameters=[p for p in module.parameters() if p.requires_grad])
    engine.train()
    parts = {"forward": 0.0, "backward": 0.0, "step": 0.0}

    def step(idx, timed):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):  # as the job's worker
            loss = engine(examples.batch(idx))
        t1 = time.perf_counter()
        engine.backward(loss)
        t2 = time.perf_counter()
        engine.step()
        float(loss.detach())
        t3 = time.perf_counter()
        if timed:
            parts["forward"] += t1 - t0
            parts["backward"] += t2 - t1
            parts["step"] += t3 - t2

    n_steps, seconds, window = timed_loop(args, batches, step)
    return timed_summary(args, n_steps, seconds, window,
                         mean_seconds={k: round(v / max(len(seconds), 1), 4) for k, v in parts.items()},
                         zero_stage=zero_stage(cfg))
