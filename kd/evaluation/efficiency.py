"""The `efficiency` task: queries/s and latency p50/p95 of query encoding and re-ranking per batch size, after
warm-up, with the machine's load while it was measured (`OtherLoad`: timings under load are flagged)."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kd.eval_models import model_info
from kd.evaluation.encoding import autocast
from kd.evaluation.inputs import EfficiencyInputs
from kd.evaluation.results import TaskResult
from kd.models import Ranker
from kd.models.loader import pick_device

if TYPE_CHECKING:  # pragma: no cover
    from kd.evaluation.runner import TaskRunner

logger = logging.getLogger(__package__)  # "kd.evaluation", as the job log has always named it


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[Any], Any], inputs: Sequence[Any], *, warmup: int, repeats: int,
               min_seconds: float = 0.0, device: torch.device | None = None) -> np.ndarray:
    """Latencies (seconds) of `fn(x)` over inputs[0], inputs[1], ... (cycled): `warmup` untimed calls, then at
    least `repeats` timed calls (and at least `min_seconds` of them)."""
    if not inputs:
        raise ValueError("no inputs to time")
    device = device or torch.device("cpu")
    i = 0
    with torch.inference_mode():
        for _ in range(warmup):
            fn(inputs[i % len(inputs)])
            i += 1
        _sync(device)
        lat = []
        start = time.perf_counter()
        while len(lat) < repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            fn(inputs[i % len(inputs)])
            _sync(device)
            lat.append(time.perf_counter() - t0)
            i += 1
    return np.asarray(lat)


def latency_stats(latencies: np.ndarray, items_per_call: int) -> dict[str, float]:
    total = float(latencies.sum())
    return {
        "items_per_s": items_per_call * len(latencies) / total,
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p95_ms": float(np.percentile(latencies, 95) * 1e3),
        "calls": len(latencies),
    }


def measure_efficiency(model: Ranker, queries: Sequence[str], pairs: Sequence[tuple[str, str]], *,
                       batch_sizes: Sequence[int] = (1, 4, 16, 64), warmup: int = 3, repeats: int = 20,
                       min_seconds: float = 0.0, rerank_depth: int = 100,
                       parts: Sequence[str] = ("query_encode", "rerank"), precision: str = "auto") -> dict[str, float]:
    """Flat metrics, e.g. eff_query_encode_bs1_qps / _p50_ms / _p95_ms and eff_rerank_bs16_pairs_per_s / _qps
    (a re-ranked query = `rerank_depth` pairs) / _p50_ms / _p95_ms. Latency = one call of one batch.

    Query encoding is measured for dual encoders only (a cross-encoder or a teacher ensemble has no query-side cost
    of its own); re-ranking an ensemble costs every member's scoring (BM25 and the encoders) plus the combination.
    Batches are consecutive slices of the inputs (cycled), the same for every model.
    """
    device = model.device
    out: dict[str, float] = {}
    model.eval()

    def batches(items: Sequence[Any], b: int) -> list[list[Any]]:
        n = max(len(items), b)
        cyc = [items[i % len(items)] for i in range(n + b)]
        return [cyc[s : s + b] for s in range(0, n, b)]

    for b in batch_sizes:
        if "query_encode" in parts and model.dual_encoder:
            if not queries:
                raise ValueError("efficiency: no queries to encode")

            def enc(batch):
                with autocast(device, precision):
                    return model.encode_queries(batch)

            st = latency_stats(time_calls(enc, batches(list(queries), b), warmup=warmup, repeats=repeats,
                                          min_seconds=min_seconds, device=device), b)
            out[f"eff_query_encode_bs{b}_qps"] = st["items_per_s"]
            out[f"eff_query_encode_bs{b}_p50_ms"] = st["p50_ms"]
            out[f"eff_query_encode_bs{b}_p95_ms"] = st["p95_ms"]
        if "rerank" in parts:
            if not pairs:
                raise ValueError("efficiency: no (query, passage) pairs to re-rank")

            def score(batch):
                with autocast(device, precision):
                    return model.score([q for q, _ in batch], [p for _, p in batch])

            st = latency_stats(time_calls(score, batches(list(pairs), b), warmup=warmup, repeats=repeats,
                                          min_seconds=min_seconds, device=device), b)
            out[f"eff_rerank_bs{b}_pairs_per_s"] = st["items_per_s"]
            out[f"eff_rerank_bs{b}_qps"] = st["items_per_s"] / rerank_depth
            out[f"eff_rerank_bs{b}_p50_ms"] = st["p50_ms"]
            out[f"eff_rerank_bs{b}_p95_ms"] = st["p95_ms"]
    return out


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes while the block ran (Linux /proc; None elsewhere).
    Timings taken while it is above ~0.1 are not reliable."""

    share: float | None = None

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        try:
            with open("/proc/stat") as f:
                vals = [int(x) for x in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                mine = sum(int(x) for x in f.read().rsplit(")", 1)[1].split()[11:15])
        except (OSError, ValueError):
            return None
        return sum(vals[:8]), vals[3] + vals[4], mine

    def __enter__(self) -> "OtherLoad":
        self._start = self._read()
        return self

    def __exit__(self, *exc) -> None:
        end = self._read()
        if self._start is None or end is None:
            return
        total = end[0] - self._start[0]
        busy = total - (end[1] - self._start[1])
        if total > 0:
            self.share = max(0.0, (busy - (end[2] - self._start[2])) / total)


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on, including how loaded the machine was."""
    info: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count()}
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not on every OS
        pass
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def efficiency_task(runner: "TaskRunner", task, spec, model: Ranker, inputs: EfficiencyInputs) -> TaskResult:
    device = pick_device(task.device)
    moved = model.device != device
    model.to(device)
    load = OtherLoad()
    try:
        with load:
            metrics = measure_efficiency(model, inputs.queries, inputs.pairs, batch_sizes=task.batch_sizes,
                                         warmup=task.warmup, repeats=task.repeats, min_seconds=task.min_seconds,
                                         rerank_depth=task.rerank_depth, parts=task.parts,
                                         precision=runner.cfg.compute.precision)
    finally:
        if moved:
            model.to(runner.device)
    info = {**machine_info(device), "batch_sizes": list(task.batch_sizes), "warmup": task.warmup,
            "repeats": task.repeats, "rerank_depth": task.rerank_depth, **model_info(model),
            "other_processes_cpu_share": load.share,
            "contended": bool(load.share is not None and load.share > 0.1), **runner.precision_info(device)}
    if info["contended"]:
        logger.warning("efficiency of %s measured while other processes used %.0f%% of the CPU: the timings are "
                       "not reliable", spec.name, 100 * load.share)
    return runner.write(TaskResult(spec.name, "efficiency", task.name, metrics, info), None)
