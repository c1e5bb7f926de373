"""The scoring pipeline's actor: one teacher ensemble per actor, built once, joining and scoring one window per call.

Why: the ensemble is the expensive part to build (models on the device, a BM25 member tokenises its whole corpus —
≈ 0.3 ms per passage), so an actor builds it in its constructor and serves every pending shard of the job's single
pipeline. Each call gets a window number, reads that window's ids from the plan (kd/runtime/scoring_plan.py), joins
them with text through kd.data.join.join_triples itself (the same texts the driver-side join gave before) and
scores the 2n pairs with every member. Its output is ONE row per window — first row, row count, the raw scores as
float32 bytes, and the actor's load count — so no Ray Data block split can cut a window apart. `loads` counts the
ensemble builds in this process (the summary's model_loads_per_actor), `actor` tells the processes apart.
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch

_LOADS = 0  # teacher ensembles built in this process
_ACTOR = random.SystemRandom().getrandbits(62)  # tells processes apart across nodes (pids may repeat)


class WindowScorer:
    """Ray Data callable class (map_batches with an ActorPoolStrategy); see the module docstring."""

    def __init__(self, teachers: list[dict], batch_size: int, use_gpu: bool, texts, use_title: bool, out: str,
                 pending: list[int], windows_per_shard: int):
        global _LOADS
        import ray

        from kd.teachers import TeacherEnsemble, load_member

        self.queries, self.passages = ray.get(texts) if isinstance(texts, ray.ObjectRef) else texts
        self.names = [t["name"] for t in teachers]
        self.ensemble = TeacherEnsemble([load_member(t) for t in teachers], names=self.names)
        _LOADS += 1
        self.device = torch.device("cuda") if use_gpu and torch.cuda.is_available() else torch.device("cpu")
        self.ensemble.to(self.device)
        self.batch_size, self.use_title, self.out = batch_size, use_title, out
        self.pending, self.windows_per_shard = pending, windows_per_shard
        # the join logs its counts at the end of every window: the driver's validation pass already reported them
        logging.getLogger("kd.data.join").setLevel(logging.ERROR)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self._window(int(k)) for k in batch["id"]]
        return {k: np.array([r[k] for r in rows], dtype=object if k == "scores" else np.int64) for k in rows[0]}

    def _window(self, k: int) -> dict:
        from kd.data.join import join_triples
        from kd.runtime.scoring_plan import read_window

        shard, w = self.pending[k // self.windows_per_shard], k % self.windows_per_shard
        table = read_window(self.out, shard, w)
        if table is None:  # past the last (shorter) shard's windows
            return {"row0": -1, "n": 0, "scores": b"", "loads": _LOADS, "actor": _ACTOR}
        ids = zip(*(table.column(c).to_pylist() for c in ("qid", "pos_pid", "neg_pid")))
        joined = list(join_triples(ids, self.queries, self.passages, strict=True, use_title=self.use_title))
        n = len(joined)
        queries = [r.query for r in joined]
        passages = [r.pos for r in joined] + [r.neg for r in joined]
        # bf16 on GPU, fp32 on CPU; `predict` sorts the 2n pairs by length so padding stays small
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            members = self.ensemble.predict_members(queries + queries, passages, batch_size=self.batch_size)
        scores = np.ascontiguousarray(members.numpy().astype(np.float32))  # [M, 2n]: each member's pos then neg
        return {"row0": int(table.column("row")[0].as_py()), "n": n, "scores": scores.tobytes(),
                "loads": _LOADS, "actor": _ACTOR}


def decode(row0: int, n: int, blob: bytes, names: list[str]) -> dict[str, np.ndarray]:
    """One window's output row → row numbers and every member's <name>_pos / <name>_neg."""
    scores = np.frombuffer(blob, dtype=np.float32).reshape(len(names), 2 * n)
    out = {"row": np.arange(row0, row0 + n, dtype=np.int64)}
    for i, name in enumerate(names):
        out[f"{name}_pos"], out[f"{name}_neg"] = scores[i, :n], scores[i, n:]
    return out

