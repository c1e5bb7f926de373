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
rank 0 of 1 worker (grouped by length with --group-by-length W, as the job's training.group_by_length = W), so
peer, kd_step, ours_1w (and ours_1w_1cpu) train on exactly the same batches in the same order.

Padding: `padding` holds padding_fraction_before / _after, pad tokens / all tokens of every micro-batch of the epoch
(kd.training.padding_fraction: the kd student's tokenization and max lengths), plain vs grouped by length (window W,
or 50 when W is 0). The epoch is the bench's own K triples, so a window of 50 sorts all of them.

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
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # both sides (inherited by the jobs): no fork warnings

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _common import default_data_dir, fmt, machine, quiet_hf  # noqa: E402
from _training_data import (job_config, kd_token_counts, length_keys, padding_fractions, prepare_data,  # noqa: E402
                            train_batches)
from _training_inproc import run_kd_step, run_kd_step_deepspeed, run_peer  # noqa: E402
from _training_jobs import probe_main, probe_threads, run_ours  # noqa: E402
from _training_report import derive, print_table  # noqa: E402

PACKAGES = ("transformers", "sentence_transformers", "ray", "deepspeed", "mlflow")
# this script's JSON keys for machine facts that _common.machine names otherwise (committed results use these)
MACHINE_KEYS = {"torch_threads": "driver_torch_num_threads", "torch_interop_threads": "driver_torch_num_interop_threads",
                "loadavg": "load_average_at_start", "gpu": "gpu_name"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per row (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2, help="steps run and dropped before timing")
    ap.add_argument("--micro-batch", type=int, default=8, help="triples per step per worker")
    ap.add_argument("--max-query-length", type=int, default=30)
    ap.add_argument("--max-passage-length", type=int, default=200)
    ap.add_argument("--lr", type=float, default=7e-6)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--group-by-length", type=int, default=0, metavar="W",
                    help="train every row on length-grouped batches, window W steps (training.group_by_length; "
                         "default 0: the plain batches); the padding comparison uses W, or 50 when 0")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="ours' training.precision and kd_step's autocast (default auto: bf16 where the device has "
                         "native bf16, kd.precision.resolve_precision); the peer runs at sentence-transformers' "
                         "default (fp32) on CPU, plus a peer_bf16 row under CPU autocast when ours is bf16")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense peak TFLOP/s at the trained precision: adds mfu (ours_1w) to the JSON")
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
        if args.steps < 1 or args.warmup < 0 or args.micro_batch < 1 or args.group_by_length < 0:
            ap.error("--steps >= 1, --warmup >= 0, --micro-batch >= 1, --group-by-length >= 0")
        from kd.precision import resolve_precision

        decision = resolve_precision(args.precision, args.device)
        args.precision_requested, args.precision, args.precision_reason = (args.precision, decision.precision,
                                                                           decision.reason)
        args.data_dir = args.data_dir or str(default_data_dir("beir/scifact"))
        args.out = args.out or str(ROOT / "bench" / "results" / f"training-{args.device}.json")
    return args


def new_result(args) -> dict:
    """The JSON's head: what ran, where, with which settings; rows and notes are filled in by the run."""
    return {
        "benchmark": "training: Margin-MSE BERT_DOT, triples/s", "created": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(args.device, packages=PACKAGES, names=MACHINE_KEYS),
        "settings": {
            "steps_timed": args.steps, "warmup_steps": args.warmup, "micro_batch": args.micro_batch,
            "max_query_length": args.max_query_length, "max_passage_length": args.max_passage_length,
            "lr": args.lr, "seed": args.seed, "device": args.device, "precision": args.precision,
            "precision_requested": args.precision_requested, "precision_reason": args.precision_reason,
            "group_by_length": args.group_by_length,
            "student": "bert_dot, all-MiniLM-L6-v2 (default_backbone()), mean pooling, normalize as declared, 6 layers",
            "ours": "jobs.distill score_file margin_mse, DeepSpeed (ZeRO stage: --zero-stage), AdamW (torch_adam), log_every=1, "
                    "validation off, registry.name null, MLflow sqlite in a temp dir, RAY_ADDRESS=local",
            "peer": "sentence-transformers MarginMSELoss + model.preprocess (per-column max_length) + torch AdamW + "
                    "clip_grad_norm_(1.0) + linear LambdaLR",
            "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"),
        },
        "rows": {}, "notes": [],
    }


def timed_row(rows: dict, name: str, kind: str, run) -> dict:
    """rows[name] = {"kind": kind, **run()} with the row's wall seconds (row_seconds)."""
    t_row = time.perf_counter()
    rows[name] = {"kind": kind, **run()}
    rows[name]["row_seconds"] = round(time.perf_counter() - t_row, 1)
    return rows[name]


def in_process_rows(args, result: dict, cfg, examples, batches: list[list[int]]) -> None:
    """peer (and peer_1thread), then the diagnostics kd_step and (on CPU) kd_step_ds, on the same batches."""
    import torch

    rows, total = result["rows"], len(batches)
    plan = [("peer", None, None)]
    if args.device == "cpu" and args.precision == "bf16":  # like for like: the peer under the same CPU autocast
        plan.append(("peer_bf16", None, True))
    if args.peer_1thread and args.device == "cpu" and torch.get_num_threads() > 1:
        plan.append(("peer_1thread", 1, None))
    for name, threads, bf16 in plan:
        print(f"[bench] {name}: {total} steps", flush=True)
        r = timed_row(rows, name, "peer", lambda: run_peer(args, examples, batches, threads, bf16))
        print(f"[bench] {name}: {fmt(r['triples_per_s'])} triples/s ({r['row_seconds']} s)", flush=True)
    result["tokens"]["peer_st_tokenization"] = {
        k: rows["peer"][k] for k in ("padded_tokens_per_triple", "real_tokens_per_triple")}
    if not args.no_diagnostics:
        print(f"[bench] kd_step: {total} steps (DistillStep + torch AdamW in this process)", flush=True)
        r = timed_row(rows, "kd_step", "kd_step", lambda: run_kd_step(args, cfg, examples, batches))
        print(f"[bench] kd_step: {fmt(r['triples_per_s'])} triples/s ({r['row_seconds']} s)", flush=True)
    if not args.no_diagnostics and args.device == "cpu":
        print(f"[bench] kd_step_ds: {total} steps (DistillStep + DeepSpeed ZeRO-{args.zero_stage} in "
              "this process)", flush=True)
        rows["kd_step_ds"] = {"kind": "kd_step", **run_kd_step_deepspeed(args, cfg, examples, batches)}
        print(f"[bench] kd_step_ds: {fmt(rows['kd_step_ds']['triples_per_s'])} triples/s "
              f"(per step {rows['kd_step_ds']['mean_seconds']})", flush=True)


def job_plan(args, gpus: int, notes: list[str]) -> list[tuple[str, int, float]]:
    """(row, workers, CPUs per worker) of each jobs.distill run. On CPU the headline row gets the peer's thread
    budget: the whole machine."""
    if args.device == "cpu":
        jobs = [("ours_1w", 1, os.cpu_count() or 1)]
        if not args.no_two_workers and (os.cpu_count() or 1) >= 2:
            jobs += [("ours_1w_1cpu", 1, 1), ("ours_2w", 2, 1)]
        return jobs
    cpus = max(1, (os.cpu_count() or 2) // max(gpus, 1))
    jobs = [("ours_1w", 1, cpus)]
    if args.no_two_workers:
        pass
    elif gpus >= 2:
        jobs.append(("ours_2w", 2, cpus))
    else:
        notes.append("ours_2w skipped: fewer than 2 GPUs")
    return jobs


def job_rows(args, result: dict, tmp: Path, data: dict, gpus: int) -> None:
    rows, total = result["rows"], args.warmup + args.steps
    for name, w, c in job_plan(args, gpus, result["notes"]):
        print(f"[bench] {name}: jobs.distill, {w} worker(s) x {c} CPU, {total} steps", flush=True)
        rows[name] = {"kind": "ours", **run_ours(args, tmp, data, name.replace("_", "-"), w, c)}
        if "error" in rows[name]:
            print(f"[bench] {name} FAILED: {rows[name]['error'][-800:]}", flush=True)
        else:
            print(f"[bench] {name}: {fmt(rows[name].get('triples_per_s'))} triples/s, end to end "
                  f"{rows[name]['end_to_end_wall_s']} s", flush=True)


def thread_probe(result: dict) -> None:
    """torch threads inside Ray Train workers of each shape the job rows used, into result and those rows."""
    rows = result["rows"]
    shapes = sorted({(r["num_workers"], r["cpus_per_worker"]) for r in rows.values() if r["kind"] == "ours"})
    print(f"[bench] thread probe: Ray Train workers {shapes}", flush=True)
    result["thread_probe"] = probe_threads([list(s) for s in shapes], timeout=300)
    for shape in result["thread_probe"].get("shapes", []):
        for r in rows.values():
            if r["kind"] == "ours" and (r["num_workers"], r["cpus_per_worker"]) == (
                    shape["num_workers"], shape["cpus_per_worker"]):
                r["probe_torch_num_threads"] = [w["torch_num_threads"] for w in shape["workers"]]
                r["probe_OMP_NUM_THREADS"] = [w["OMP_NUM_THREADS"] for w in shape["workers"]]


def run_rows(args, result: dict, tmp: Path, gpus: int) -> None:
    """Data, then every row, in the order: in-process rows, job rows, thread probe."""
    from kd.configs.distill import DistillConfig
    from kd.training import load_examples

    print(f"[bench] preparing data (BM25 + mining + teacher scores) in {tmp}", flush=True)
    data = prepare_data(args, tmp)
    result["data"] = {k: v for k, v in data.items() if k != "teacher_scores"}
    cfg = DistillConfig.model_validate(job_config(args, tmp, data, "peer-data", 1, 1))
    examples = load_examples(cfg)
    total = args.warmup + args.steps
    student, lengths = length_keys(cfg, examples)
    batches = train_batches(args, examples, lengths)[:total]
    if len(batches) < total:
        raise SystemExit(f"only {len(examples)} triples: too few for {total} steps of {args.micro_batch}")
    result["data"]["examples_joined"] = len(examples)
    result["padding"] = padding_fractions(args, student, examples, lengths)
    result["settings"]["non_embedding_params"] = sum(  # the model size MFU counts (_training_report.MFU_FORMULA)
        p.numel() for n, p in student.encoder.named_parameters() if not n.startswith("embeddings."))
    del student  # only its tokenizer and max lengths were needed: the rows build their own
    print(f"[bench] padding fraction over the epoch's {result['padding']['micro_batches']} micro-batches: plain "
          f"{result['padding']['padding_fraction_before']:.4f}, grouped by length (window "
          f"{result['padding']['window']}) {result['padding']['padding_fraction_after']:.4f}", flush=True)
    result["tokens"] = {"ours_kd_tokenization": kd_token_counts(args, examples, batches[args.warmup:])}
    in_process_rows(args, result, cfg, examples, batches)
    job_rows(args, result, tmp, data, gpus)
    if not args.no_thread_probe and args.device == "cpu":
        thread_probe(result)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._probe is not None:
        return probe_main(args._probe)
    import logging

    logging.basicConfig(level=logging.WARNING)
    quiet_hf()
    import torch

    t_all = time.perf_counter()
    gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.device == "cuda" and gpus == 0:
        print("error: --device cuda but no CUDA device", file=sys.stderr)
        return 2
    result = new_result(args)
    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-training-"))
    if args.keep_tmp:
        result["settings"]["tmp"] = str(tmp)
    try:
        run_rows(args, result, tmp, gpus)
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    derive(args, result)
    result["seconds_total"] = round(time.perf_counter() - t_all, 1)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_table(result)
    print(f"[bench] wrote {out} ({result['seconds_total']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
