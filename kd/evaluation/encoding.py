"""Text → embedding: fixed length-sorted batches, bf16 autocast where the hardware has it, and the one in-process
corpus encoder.

Determinism: corpus embeddings are computed batch by batch from a plan that depends only on the texts (sorted by
character length, ties by position), and are written as pieces keyed by each document's position in the corpus
(kd/evaluation/shards.py), so any number of workers that run the same plan produce the same embeddings.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd.evaluation.checks import EvaluationError
from kd.models import BertDot, Ranker
from kd.models.loader import load_spec, pick_device
from kd.precision import resolve_precision
from kd.progress import Progress
from kd.evaluation.shards import PieceWriter


def is_single_vector(model: Ranker) -> bool:
    """Dense retrieval (one vector per text, inner product) works with BERT_DOT-style models."""
    return isinstance(model, BertDot)


def require_single_vector(model: Ranker) -> None:
    if not is_single_vector(model):
        raise EvaluationError(f"{model.architecture!r} has no single-vector encoder: dense retrieval needs a bert_dot "
                              "model (score ColBERT, cross-encoders, PreTTR and TK with the rerank task)")


def plan_batches(texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Fixed encoding batches: positions sorted by (character length, position), cut every `batch_size`.

    The plan depends only on the texts, so every backend (in-process, 1 or n Ray actors) runs the same forward
    passes and produces bit-identical embeddings on the same hardware.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast where `kd.precision.resolve_precision` chooses it (`auto`: hardware with native bf16), else a
    no-op; fp32 results either way.

    CPUs with AVX512-BF16/AMX run MiniLM about 2x faster in bf16 (embeddings within cosine 0.9999 of fp32); CPUs
    without them emulate bf16, about 8x slower than fp32 on AVX2."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=resolve_precision(precision, device).bf16)


@torch.inference_mode()
def encode_batch(model: BertDot, texts: Sequence[str], kind: str = "docs", *, precision: str = "auto") -> np.ndarray:
    """One forward pass: texts → float32 [n, d] (tokenised once, padded to this batch's longest text)."""
    if kind not in ("docs", "queries"):
        raise ValueError(f"kind must be 'docs' or 'queries', got {kind!r}")
    device = model.device
    with autocast(device, precision):
        emb = model.encode_docs(list(texts)) if kind == "docs" else model.encode_queries(list(texts))
    return emb.float().cpu().numpy()


def encode_texts(
    model: BertDot,
    texts: Sequence[str],
    *,
    kind: str = "docs",
    batch_size: int = 64,
    precision: str = "auto",
    show_progress: bool = False,
    desc: str | None = None,
) -> np.ndarray:
    """Encode texts in the fixed length-sorted batches of `plan_batches`; rows in input order, float32."""
    require_single_vector(model)
    if len(texts) == 0:
        raise ValueError(f"no texts to encode ({kind})")
    out = np.empty((len(texts), model.embedding_dim), dtype=np.float32)
    for _, idx, emb in encode_plan(model, texts, plan_batches(texts, batch_size), kind, precision=precision,
                                   show_progress=show_progress, desc=desc):
        out[idx] = emb
    return out


def encode_plan(model: BertDot, texts: Sequence[str], plan: Sequence[Sequence[int]], kind: str = "docs", *,
                precision: str = "auto", show_progress: bool = False,
                desc: str | None = None) -> Iterator[tuple[int, Sequence[int], np.ndarray]]:
    """(batch number, positions, float32 embeddings) per planned batch, the model in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    progress = Progress(desc or f"encoding {kind}", len(texts), unit="texts", enabled=show_progress)
    try:
        for b, idx in enumerate(plan):
            yield b, idx, encode_batch(model, [texts[i] for i in idx], kind, precision=precision)
            progress.update(len(idx))
    finally:
        model.train(was_training)
        progress.close()


# A corpus encoder encodes (document-encoder spec, loaded model or None, docids, texts) and writes the embeddings as
# pieces into an empty shard folder (kd/evaluation/shards.py; rows = positions in docids). The default,
# LocalCorpusEncoder, runs in this process; kd.runtime.evaluation.CorpusEncoder runs a Ray Data actor pool for large
# corpora (each actor writes its own pieces) and this one for small ones.
CorpusEncoder = Callable[[dict, "BertDot | None", list, list, Path], None]


class LocalCorpusEncoder:
    """In-process corpus encoding with `compute.batch_size` / `compute.precision`: the given document model, or the
    one the document-encoder spec names, loaded here (registry URIs through `resolve_uri`). Writes a piece every
    `compute.shard_size` documents, so it holds one shard's embeddings at a time."""

    def __init__(self, cfg, resolve_uri: Callable[[str], Path] | None = None, device: torch.device | None = None):
        self.cfg = cfg
        self.resolve_uri = resolve_uri
        self.device = device

    def __call__(self, spec: Mapping[str, Any], model: BertDot | None, docids: Sequence[str],
                 texts: Sequence[str], folder: Path) -> None:
        c = self.cfg.compute
        if model is None:
            model = load_spec(spec, self.resolve_uri, self.device if self.device is not None else pick_device(c.device))
        require_single_vector(model)
        writer = PieceWriter(folder, c.shard_size)
        for b, idx, emb in encode_plan(model, texts, plan_batches(texts, c.batch_size), "docs", precision=c.precision,
                                       show_progress=self.cfg.show_progress, desc=f"encoding corpus ({spec['name']})"):
            writer.add(b, idx, emb)
        writer.close()
