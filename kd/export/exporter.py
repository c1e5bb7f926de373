"""`export_onnx`: a loaded kd student → a self-describing folder of its ONNX graph (fp32 or int8), tokenizer and
manifest (kd/export/manifest.py), which kd.models.loader.load_ranker serves with onnxruntime.

The graph: traced (graphs.export_graph), fused by onnxruntime's transformer optimizer (kd/export/fusion.py), and for
int8 quantized from the fused graph (graphs.quantize_int8); the manifest records each step's choices and the
session settings the loader uses (onnx_ranker.SESSION).

The folder is written beside `out` under a temporary name and moved into place only once it is whole, so an
interrupted export never leaves a half folder that loads. Before the move, the graph is run on the sample pairs
and compared with the PyTorch model: an fp32 graph more than `FP32_TOLERANCE` away is an error (a broken trace),
the int8 difference is recorded in the manifest.
"""
from __future__ import annotations

import datetime as dt
import shutil
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from kd.export.fusion import fuse_graph
from kd.export.graphs import GRAPH_FILE, SAMPLE_TEXTS, export_graph, quantize_int8
from kd.export.manifest import sha256, write_manifest
from kd.export.support import ExportError, check_out_dir, check_request, export_problem
from kd.models.base import Ranker

FP32_TOLERANCE = 1e-3


def _versions() -> dict[str, str | None]:
    out = {}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _sample_outputs(model: Ranker) -> np.ndarray:
    """The model's outputs on the sample pairs, through its public scoring path (`predict`)."""
    queries = [SAMPLE_TEXTS[0], SAMPLE_TEXTS[1][:40]]
    passages = [SAMPLE_TEXTS[1], SAMPLE_TEXTS[0]]
    return model.predict(queries, passages, batch_size=2).numpy()


def _source_facts(model: Ranker, source: Mapping[str, Any] | None) -> dict[str, Any]:
    from kd.eval_models import num_layers

    return {**dict(source or {}), "architecture": model.architecture, "parameters": int(model.num_parameters()),
            "num_layers": num_layers(model)}


def export_onnx(model: Ranker, out: str | Path, *, quantize: str | None = None, per_channel: bool = True,
                overwrite: bool = False, source: Mapping[str, Any] | None = None,
                exporter: str = "torchscript") -> Path:
    """Export `model` (bert_cat, tinybert_cat, bert_dot, colbert) to `out`; returns the folder.

    `quantize`: None (fp32) or "int8" (kd/export/graphs.py: quantize_int8). `source`: what the model was loaded from
    (the --model argument, its ModelRef), kept in the manifest. Raises ExportError for an architecture that cannot
    be exported or an occupied `out` (without `overwrite`) before any work.
    """
    check_request("onnx", quantize)
    problem = export_problem(model.architecture)
    if problem:
        raise ExportError(problem)
    out = check_out_dir(out, overwrite)
    from kd.export.onnx_ranker import SESSION, load_onnx_ranker

    model = model.to("cpu").eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        graph, optimization, quantization = _write_graph(model, tmp, quantize, per_channel, exporter)
        file = tmp / GRAPH_FILE
        model.tokenizer.save_pretrained(tmp)
        manifest = {
            "architecture": model.architecture, "options": model.options,
            "graphs": {"model": {"file": GRAPH_FILE, "sha256": sha256(file), "bytes": file.stat().st_size,
                                 "inputs": graph["inputs"], "outputs": graph["outputs"]}},
            "opset": graph["opset"], "exporter": exporter, "optimization": optimization,
            "quantization": quantization, "session": dict(SESSION),
            "source": _source_facts(model, source), "versions": _versions(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if model.architecture == "bert_dot":
            manifest["embedding_dim"] = int(model.embedding_dim)
        write_manifest(tmp, manifest)
        manifest["check"] = _check(model, load_onnx_ranker(tmp), quantize)
        write_manifest(tmp, manifest)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_graph(model: Ranker, folder: Path, quantize: str | None, per_channel: bool, exporter: str):
    """folder/model.onnx: traced, fused, and quantized for int8; returns (graph facts, fusion facts, quantization)."""
    traced, fused = folder / "model.traced.onnx", folder / ("model.fused.onnx" if quantize else GRAPH_FILE)
    graph = export_graph(model, traced, exporter)
    optimization = fuse_graph(traced, fused, model.encoder.config)
    traced.unlink()
    quantization = None
    if quantize == "int8":
        quantization = quantize_int8(fused, folder / GRAPH_FILE, per_channel)
        fused.unlink()
    return graph, optimization, quantization


def _check(model: Ranker, exported: Ranker, quantize: str | None) -> dict[str, Any]:
    """Scores of the sample pairs, PyTorch vs the written graph; an fp32 graph off by > FP32_TOLERANCE is an error."""
    with torch.inference_mode():
        ref, got = _sample_outputs(model), _sample_outputs(exported)
    diff = float(np.abs(ref - got).max())
    if quantize is None and not diff <= FP32_TOLERANCE:
        raise RuntimeError(f"the exported fp32 graph scores the sample pairs {diff:.2g} away from PyTorch "
                           f"(tolerance {FP32_TOLERANCE}); the trace is wrong for this model — please report it")
    return {"sample_pairs": len(ref), "max_abs_diff_vs_pytorch": diff}
