"""bench/training.py's numbers derived from the rows, and how they are printed.

Every row reports triples/s over its timed steps (rate_summary); from the rows come the speed-ups (ours_1w / peer is
the target), the 1-vs-2-worker scaling, CPU seconds per triple, the checks against TARGETS, `contended` (some timed
window had other processes using more than CONTENDED_SHARE of the machine) and `diagnosis`: plain statements of
where ours gains or loses against the peer.
"""
from __future__ import annotations

import statistics

from _common import fmt

TARGETS = {"cpu_speedup_min": 1.25, "gpu_speedup_min": 1.3}  # issue 19: ours_1w / the peer
CONTENDED_SHARE = 0.10

NOTES = [  # into result["notes"], before the run-specific ones
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


def rate_summary(n_per_step: list[int], seconds: list[float]) -> dict:
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


def cpu_per_triple(rows: dict) -> None:
    """CPU seconds per triple into each row: less sensitive to other load than wall clock."""
    for r in rows.values():
        if not r.get("timed_triples"):
            continue
        if r["kind"] in ("peer", "kd_step") and r.get("own_cpu_s") is not None:
            r["cpu_s_per_triple"] = r["own_cpu_s"] / r["timed_triples"]
        workers = (r.get("worker_usage") or {}).get("workers") or []
        if r["kind"] == "ours" and workers:
            r["cpu_s_per_triple"] = sum(w["cores_used"] for w in workers) * r["timed_seconds"] / r["timed_triples"]


def speedups(rows: dict, device: str) -> tuple[dict, dict]:
    """(speedup, scaling): the ratios of the rows' triples/s (None where either row has no rate)."""
    def tps(name):
        r = rows.get(name) or {}
        return r.get("triples_per_s")

    def ratio(a, b):
        return tps(a) / tps(b) if tps(a) and tps(b) else None

    speedup = {
        "ours_1w_vs_peer": ratio("ours_1w", "peer"),
        "ours_1w_vs_peer_bf16": ratio("ours_1w", "peer_bf16"),
        "peer_bf16_vs_peer": ratio("peer_bf16", "peer"),
        "ours_1w_vs_peer_1thread": ratio("ours_1w", "peer_1thread"),
        "peer_vs_peer_1thread": ratio("peer", "peer_1thread"),
        "kd_step_vs_peer": ratio("kd_step", "peer"),
        "ours_1w_vs_kd_step": ratio("ours_1w", "kd_step"),
        "kd_step_ds_vs_kd_step": ratio("kd_step_ds", "kd_step"),
        "ours_1w_vs_ours_1w_1cpu": ratio("ours_1w", "ours_1w_1cpu"),
    }
    scaling = ratio("ours_2w", "ours_1w_1cpu" if device == "cpu" else "ours_1w")
    return speedup, {"ours_2w_vs_1w": scaling, "efficiency": scaling / 2 if scaling else None}


def checks(speedup: float | None, on_gpu: bool) -> dict:
    """ours_1w / peer against the CPU target (on CPU) or the GPU target (on GPU); None where not measured."""
    return {
        "cpu_speedup_1worker": {"value": None if on_gpu else speedup, "target": TARGETS["cpu_speedup_min"],
                                "pass": None if on_gpu or speedup is None else speedup >= TARGETS["cpu_speedup_min"]},
        "gpu_speedup": {"value": speedup if on_gpu else None, "target": TARGETS["gpu_speedup_min"],
                        "pass": (speedup >= TARGETS["gpu_speedup_min"] if speedup is not None else None) if on_gpu
                        else None},
    }


def max_other_share(rows: dict) -> float | None:
    """The largest share of the machine other processes used in any row's timed window."""
    shares = []
    for r in rows.values():
        usage = r.get("worker_usage") or {}
        share = r.get("other_share", usage.get("other_share"))
        if share is not None:
            shares.append(share)
    return max(shares) if shares else None


MFU_FORMULA = ("3 x forward FLOPs (forward + backward) per triple x ours_1w triples/s / --peak-tflops; forward FLOPs "
               "per triple = 2 * non-embedding params * real tokens per triple (query + p+ + p-, attention's "
               "L^2 terms not counted)")


def model_flops_utilisation(result: dict, peak_tflops: float | None) -> tuple[float | None, str]:
    """ours_1w's achieved training FLOP/s over the device's peak (None without a peak, a rate or the model size)."""
    rate = (result["rows"].get("ours_1w") or {}).get("triples_per_s")
    tokens = (result.get("tokens", {}).get("ours_kd_tokenization") or {}).get("real_tokens_per_triple")
    params = result.get("settings", {}).get("non_embedding_params")
    if not (peak_tflops and rate and tokens and params):
        return None, MFU_FORMULA
    return 3 * 2 * params * tokens * rate / (peak_tflops * 1e12), MFU_FORMULA


def derive(args, result: dict) -> None:
    """Everything the JSON holds beside the rows, computed from them (in place)."""
    rows = result["rows"]
    cpu_per_triple(rows)
    result["speedup"], result["scaling"] = speedups(rows, args.device)
    on_gpu = args.device == "cuda"
    result["targets"] = TARGETS
    result["checks"] = checks(result["speedup"]["ours_1w_vs_peer"], on_gpu)
    # the issue's keys at the top level: ours (training.precision as run) / the peer at sentence-transformers' default
    result["speedup_vs_st"] = result["speedup"]["ours_1w_vs_peer"]
    result["speedup_vs_st_same_precision"] = result["speedup"]["ours_1w_vs_peer_bf16"] or (
        result["speedup"]["ours_1w_vs_peer"] if args.precision == "fp32" or on_gpu else None)
    for key in ("padding_fraction_before", "padding_fraction_after"):
        result[key] = (result.get("padding") or {}).get(key)
    result["speedup_vs_peer"] = result["speedup_vs_st"]  # bench/gpu.sh's common key
    result["mfu"], result["mfu_flop_formula"] = model_flops_utilisation(result, getattr(args, "peak_tflops", None))
    result["max_other_share"] = max_other_share(rows)
    result["contended"] = result["max_other_share"] is not None and result["max_other_share"] > CONTENDED_SHARE
    tok = result.get("tokens", {})
    if "peer_st_tokenization" in tok:
        o, p = tok["ours_kd_tokenization"], tok["peer_st_tokenization"]
        tok["ours_vs_peer_padded_tokens"] = o["padded_tokens_per_triple"] / p["padded_tokens_per_triple"]
    result["notes"] += NOTES
    if args.steps < 5:
        result["notes"].append(f"only {args.steps} timed steps: a smoke run, indicative only")
    if on_gpu:
        result["notes"].append("GPU: both sides bf16 autocast; cpus_per_worker = CPUs / GPUs for ours.")
    result["diagnosis"] = diagnose(result)


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
                       f"{fmt(r.get('startup_s'), '.1f')} s, tail (checkpoint, model logging, shutdown) "
                       f"{fmt(r.get('tail_s'), '.1f')} s")
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
        print(f"{name:<14} {fmt(r.get('triples_per_s')):>10} {fmt(r.get('median_step_triples_per_s')):>11} "
              f"{r.get('timed_steps', '-'):>5} {str(threads):>8} {fmt(cores):>6} "
              f"{fmt(r.get('cpu_s_per_triple'), '.3f'):>10} "
              f"{fmt(r.get('end_to_end_wall_s'), '.1f'):>10} {fmt(other, '.1%'):>10}")
    sp, sc = result["speedup"], result["scaling"]
    print()
    print(f"speedup ours_1w / peer: {fmt(sp['ours_1w_vs_peer'], '.3f')}x   "
          f"2 workers / 1 worker: {fmt(sc['ours_2w_vs_1w'], '.3f')}x")
    pad = result.get("padding")
    if pad:
        print(f"padding fraction (epoch of {pad['examples']} triples, {pad['micro_batches']} micro-batches): plain "
              f"{pad['padding_fraction_before']:.4f}, grouped by length (window {pad['window']}) "
              f"{pad['padding_fraction_after']:.4f}")
    for name, c in result["checks"].items():
        print(f"check {name}: value {fmt(c['value'], '.3f')} target >= {c['target']} pass {c['pass']}")
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
